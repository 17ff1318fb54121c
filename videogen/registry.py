"""The models one deployment serves: its catalog, each model's weights version, and aliases.

`VIDEOGEN_MODELS` names a JSON file (or holds inline JSON) of this shape:

    {"default": "videogen-tiny",
     "models": {"videogen-tiny": {"source": "builtin"},
                "wan2.1-1.3b": {"source": "/models/Wan2.1-T2V-1.3B-Diffusers"},
                "wan2.1-1.3b-ft": {"source": "/models/wan-ft-0412", "version": "<sha256>"}},
     "aliases": {"wan-t2v": {"wan2.1-1.3b": 90, "wan2.1-1.3b-ft": 10}}}

A model's limits come from its own directory (`videogen.json`, or the published variant its
configs match: see videogen.catalog). Its version is the sha256 of its files' bytes, computed
wherever the directory can be read. A process that cannot read it (an API host without the
weights) takes the `version` that `videogen model lock` computed and wrote into the catalog;
where both exist they must agree, so a catalog never names weights that are not there. Each
version has its own warm GPU queue (`<prefix>-gpu-<model>-<version[:12]>`).

Without `VIDEOGEN_MODELS` the catalog holds the one model `VIDEOGEN_MODEL` names, on the queue
`<prefix>-gpu-<model>` as before catalogs (its version is recorded where it can be computed).

An alias splits users between models by weight, sticky per user: a user's place in [0, 1) is
a hash of the alias and the user, so raising one weight moves only the users it must.

Light on purpose (hashlib, no torch): the API process reads the catalog too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videogen import catalog
from videogen.catalog import ModelSpec
from videogen.contracts import SHORT_VERSION, model_ref

BUILTIN = "builtin"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VERSION = re.compile(r"[0-9a-f]{64}")
# Files that state limits, not weights: editing them does not make a new version.
_NOT_WEIGHTS = frozenset({catalog.SPEC_FILE})
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class ServedModel:
    """One model of the catalog, at the version its directory holds now."""

    name: str
    spec: ModelSpec
    source: str  # "builtin" or the directory given
    version: str  # sha256 hex of the directory's files (`version_of`); "" if unknown here
    created: int  # Unix time of its newest file (0 if unknown here)
    # Its part of the warm GPU task queue's name: 'model-version' in a catalog, 'model' alone
    # for the one model of VIDEOGEN_MODEL.
    queue_key: str

    @property
    def short_version(self) -> str:
        return self.version[:SHORT_VERSION]

    @property
    def ref(self) -> str:
        """'name@version': what a job records as the model it ran on, and may ask for."""
        return model_ref(self.name, self.version)


@dataclass(frozen=True)
class Alias:
    """A name that routes each user to one of several models, by weight."""

    name: str
    weights: tuple[tuple[str, int], ...]

    def pick(self, user: str) -> str:
        """The model `user` is routed to: the same one every time while the weights stay."""
        digest = hashlib.sha256(f"{self.name}\0{user}".encode()).digest()
        place = int.from_bytes(digest[:8], "big") / 2**64
        total = sum(w for _, w in self.weights)
        upto = 0
        for model, weight in self.weights:
            upto += weight
            if place < upto / total:
                return model
        return self.weights[-1][0]


@dataclass(frozen=True)
class Resolved:
    """What a request's `model` resolved to: the model to run and how it was asked for."""

    model: ServedModel
    asked: str


class UnknownModel(ValueError):
    """A request named a model, alias or version this deployment does not serve."""


@dataclass(frozen=True)
class Registry:
    models: dict[str, ServedModel]
    aliases: dict[str, Alias]
    default: str

    def resolve(self, asked: str | None, user: str) -> Resolved:
        """The model a request for `asked` (a model, an alias, or 'model@version'; None: the
        default) runs on for `user`; UnknownModel, naming what is served, otherwise."""
        asked = asked or self.default
        name, _, version = asked.partition("@")
        if name in self.aliases and not version:
            return Resolved(self.models[self.aliases[name].pick(user)], asked)
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"model: {asked!r} is not served here; allowed: {self.allowed()}")
        if version and not (
            len(version) >= 8 and model.version and model.version.startswith(version.lower())
        ):
            raise UnknownModel(
                f"model: version {version!r} of {name!r} is not served here; "
                f"served: {model.ref} (ask for {name!r} or {model.ref!r})"
            )
        return Resolved(model, asked)

    def allowed(self) -> str:
        return ", ".join([*self.models, *self.aliases])

    def get(self, name: str) -> ServedModel:
        """A model of the catalog by name; UnknownModel naming those served otherwise."""
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"{name!r} is not in the catalog; models: {', '.join(self.models)}")
        return model


def load(models: str, model: str = "", model_name: str = "") -> Registry:
    """The catalog `VIDEOGEN_MODELS` describes; empty: the one model of VIDEOGEN_MODEL (and
    VIDEOGEN_MODEL_NAME). ValueError, saying what to fix, for a bad catalog."""
    if not models.strip():
        spec = catalog.resolve(model, model_name or None)
        source = BUILTIN if spec.path == str(catalog.TINY_DIR) else str(spec.path)
        readable = source == BUILTIN or os.path.isdir(source)
        version, created = version_of(source_dir(source)) if readable else ("", 0)
        one = ServedModel(spec.name, spec, source, version, created, queue_key=spec.name)
        return Registry({spec.name: one}, {}, spec.name)
    where, raw = _read(models)
    try:
        return _parse(raw)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"VIDEOGEN_MODELS ({where}): {err}") from None


def _read(models: str) -> tuple[str, dict[str, Any]]:
    text = models.strip()
    where = "inline JSON" if text.startswith("{") else text
    if where != "inline JSON":
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"VIDEOGEN_MODELS: cannot read {where} ({err})") from None
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise ValueError(f"VIDEOGEN_MODELS ({where}): not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"VIDEOGEN_MODELS ({where}): needs an object with 'models'")
    return where, raw


def _parse(raw: dict[str, Any]) -> Registry:
    unknown = set(raw) - {"default", "models", "aliases"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; allowed: default, models, aliases")
    entries = raw.get("models")
    if not isinstance(entries, dict) or not entries:
        raise ValueError("'models' must be an object of at least one model name -> {source}")
    models = {name: _entry(name, entry) for name, entry in entries.items()}
    targets = raw.get("aliases", {})
    if not isinstance(targets, dict):
        raise ValueError("'aliases' must be an object of alias -> {model: weight}")
    aliases = {name: _alias(name, weights, models) for name, weights in targets.items()}
    default = str(raw.get("default") or next(iter(models)))
    if default not in models and default not in aliases:
        raise ValueError(f"default {default!r} is not a model or alias of the catalog")
    return Registry(models, aliases, default)


def _entry(name: str, entry: Any) -> ServedModel:
    _check_name(name, "model")
    if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
        raise ValueError(f"model {name!r}: needs a 'source' ('builtin' or a local directory)")
    if set(entry) - {"source", "version"}:
        raise ValueError(
            f"model {name!r}: only 'source' and 'version' are set here; its limits come from "
            f"its directory's {catalog.SPEC_FILE}"
        )
    source, stated = entry["source"], str(entry.get("version", ""))
    if stated and not _VERSION.fullmatch(stated):
        raise ValueError(f"model {name!r}: version must be 64 hex digits (videogen model lock)")
    path = source_dir(source)
    spec = catalog.TINY_SPEC if source == BUILTIN else catalog.spec_for_path(path)
    spec = dataclasses.replace(spec, name=name)
    if os.path.isdir(path):
        version, created = version_of(path)
        if stated and stated != version:
            raise ValueError(
                f"model {name!r}: {source} holds version {version[:SHORT_VERSION]}, the catalog "
                f"says {stated[:SHORT_VERSION]}; run `videogen model lock` again"
            )
    elif stated:
        version, created = stated, 0
    else:
        raise ValueError(
            f"model {name!r}: cannot read {source!r} to compute its version; run `videogen model "
            "lock CATALOG` where the weights are, which writes each model's version"
        )
    return ServedModel(
        name, spec, source, version, created, queue_key=f"{name}-{version[:SHORT_VERSION]}"
    )


def source_dir(source: str) -> str:
    """The directory of a catalog `source`."""
    return str(catalog.TINY_DIR) if source == BUILTIN else source


def _alias(name: str, targets: Any, models: dict[str, ServedModel]) -> Alias:
    _check_name(name, "alias")
    if name in models:
        raise ValueError(f"alias {name!r} has the name of a model; pick another")
    if not isinstance(targets, dict) or not targets:
        raise ValueError(f"alias {name!r}: needs an object of model -> weight")
    weights = []
    for model, weight in targets.items():
        if model not in models:
            raise ValueError(
                f"alias {name!r}: {model!r} is not a model; models: {', '.join(models)}"
            )
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise ValueError(f"alias {name!r}: weight of {model!r} must be a whole number >= 0")
        weights.append((model, weight))
    if not any(w for _, w in weights):
        raise ValueError(f"alias {name!r}: at least one weight must be above 0")
    return Alias(name, tuple(weights))


def _check_name(name: str, what: str) -> None:
    # Names go into task queue names and search attributes: plain and short.
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{what} name {name!r}: up to 64 letters, digits and '_.-', starting with a letter "
            "or digit"
        )


_versions: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def version_of(path: str) -> tuple[str, int]:
    """(sha256 hex over every file's relative path and bytes, newest file's mtime) of a model
    directory, `videogen.json` left out. Reads every byte the first time a process sees the
    directory in this state (sizes and mtimes unchanged), then reuses the digest."""
    files = sorted(_files(Path(path)))
    if not files:
        raise ValueError(f"model directory {path!r} holds no files")
    stats = tuple(_stat(Path(path) / rel, rel) for rel in files)
    key = (os.path.realpath(path), stats)
    if key not in _versions:
        digest = hashlib.sha256()
        for rel in files:
            digest.update(f"{rel}\0".encode())
            with open(Path(path) / rel, "rb") as f:
                while chunk := f.read(_READ_CHUNK):
                    digest.update(chunk)
            digest.update(b"\0")
        _versions[key] = digest.hexdigest()
    return _versions[key], max(mtime for _, _, mtime in stats) // 1_000_000_000


def _stat(file: Path, rel: str) -> tuple[str, int, int]:
    st = file.stat()
    return rel, st.st_size, st.st_mtime_ns


def _files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if not name.startswith(".") and rel not in _NOT_WEIGHTS:
                out.append(rel)
    return out


def lock(path: str | os.PathLike[str]) -> dict[str, str]:
    """Compute the version of every model of the catalog file at `path` and write it into its
    entry (`"version"`), so processes that cannot read the weights know it. Run it where the
    weights are, after any change to them. Returns model -> version. ValueError if a source
    cannot be read."""
    file = Path(path)
    where, raw = _read(str(file))
    versions: dict[str, str] = {}
    for name, entry in dict(raw.get("models") or {}).items():
        source = entry.get("source") if isinstance(entry, dict) else None
        if not isinstance(source, str) or not os.path.isdir(source_dir(source)):
            raise ValueError(f"{where}: model {name!r}: cannot read its source {source!r}")
        entry["version"] = versions[name] = version_of(source_dir(source))[0]
    _parse(raw)  # the locked catalog must load
    file.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    return versions


class Live:
    """The catalog as the API serves it: a catalog file is read again when it changes (looked
    at no more than once per `check_s`), so a changed ramp applies without a restart. A file
    that became invalid leaves the last good catalog in force, and says why in `error`."""

    def __init__(self, models: str, model: str = "", model_name: str = "", check_s: float = 1.0):
        self._args = (models, model, model_name)
        text = models.strip()
        self._file = Path(text) if text and not text.startswith("{") else None
        self._check_s = check_s
        self._stamp = self._mtime()
        self._checked = time.monotonic()
        self.registry = load(*self._args)
        self.error = ""

    def due(self) -> bool:
        """Whether `refresh` should look at the file now (cheap: no file access)."""
        return self._file is not None and time.monotonic() - self._checked >= self._check_s

    def refresh(self) -> None:
        """Read the file again if it changed. Blocking (a new model directory is hashed):
        callers on an event loop run it in a thread."""
        self._checked = time.monotonic()
        stamp = self._mtime()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.registry, self.error = load(*self._args), ""
        except ValueError as err:
            self.error = str(err)

    def _mtime(self) -> int:
        try:
            return self._file.stat().st_mtime_ns if self._file is not None else 0
        except OSError:
            return -1
