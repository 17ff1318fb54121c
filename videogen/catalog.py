"""What each model can generate: sizes, lengths, step defaults.

The API validates requests against these specs before a workflow is started, so this module
must stay light (no torch, no diffusers): the API process never loads a model. A model
directory may carry a `videogen.json` that states its own spec (the built-in model's does).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videogen import wan_variants

TINY_MODEL = "videogen-tiny"
# The built-in model: a diffusers directory trained by `make train-tiny` (videogen.tiny.train).
TINY_DIR = Path(__file__).parent / "tiny" / "model"
SPEC_FILE = "videogen.json"
# Limits of every model, whatever its spec: the API's schema, the spec default and the
# pipeline's own check all read these. Seeds are signed 64-bit (JSON clients and Temporal's
# payloads carry them exactly).
MAX_STEPS = 500
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ModelSpec:
    """Limits of one model, as the API and the GPU worker both see them."""

    name: str
    fps: int
    sizes: tuple[str, ...]
    default_size: str
    seconds: tuple[int, ...]
    default_seconds: int
    default_steps: int
    max_steps: int = MAX_STEPS
    guidance_scale: float = 5.0
    # Two-expert models (Wan2.2 A14B): the low-noise expert's guidance; None: guidance_scale.
    guidance_scale_2: float | None = None
    # Published sampler flow shifts by size ('WxH', shift), where the scheduler config's one
    # value does not fit every size (Wan2.1 14B: 5.0 at 720P, 3.0 at 480P).
    flow_shift_by_size: tuple[tuple[str, float], ...] = ()
    # Frames of at least this many pixels (width x height) decode in tiles (diffusers'
    # AutoencoderKLWan.enable_tiling, default tiles): less decode memory, other bits. None: never.
    vae_tiling_min_pixels: int | None = None
    # Local diffusers directory.
    path: str | None = None
    # The size the model draws at, whatever size was asked for: the encoder scales its frames
    # to the requested size. None: the model draws at the requested size.
    render_size: str | None = None
    # Prompt bytes/tokens the text encoder reads (WanPipeline's default is 512).
    max_sequence_length: int = 512

    def num_frames(self, seconds: int) -> int:
        """Frames for a clip of `seconds`: Wan's VAE wants 4k+1 frames, fps is a multiple of 4."""
        return seconds * self.fps + 1

    @staticmethod
    def parse_size(size: str) -> tuple[int, int]:
        """'WxH' -> (width, height)."""
        w, h = size.lower().split("x")
        return int(w), int(h)

    def check_size(self, size: str, field: str = "size") -> None:
        """ValueError, naming `field` (the caller's name for it) and the allowed sizes, if this
        model does not offer `size` ('WxH')."""
        if size not in self.sizes:
            raise ValueError(
                f"{field}: {size!r} is not supported by {self.name}; "
                f"allowed: {', '.join(self.sizes)}"
            )

    def flow_shift(self, width: int, height: int) -> float | None:
        """The published flow shift for a job drawn at width x height; None: the scheduler's."""
        return dict(self.flow_shift_by_size).get(f"{width}x{height}")

    def vae_tiling(self, width: int, height: int) -> bool:
        """Whether a job drawn at width x height decodes in tiles."""
        least = self.vae_tiling_min_pixels
        return least is not None and width * height >= least

    def generated_dims(self, size: str) -> tuple[int, int]:
        """(width, height) the model generates for a request of `size`."""
        return self.parse_size(self.render_size or size)


# Wan2.1 text-to-video in diffusers format, loaded from a local directory on a GPU host.
WAN_SIZES = ("832x480", "480x832", "1280x720", "720x1280")


def spec_for_path(path: str | os.PathLike[str], name: str | None = None) -> ModelSpec:
    """Spec for a local diffusers Wan directory: its `videogen.json` if it has one, else the
    defaults of the published variant its configs match (videogen.wan_variants), else
    Wan2.1 text-to-video's."""
    path = os.fspath(path)
    stated = _stated_spec(path)
    if stated is not None:
        return _from_stated(stated, path, name)
    variant = wan_variants.identify(path)
    if variant is not None:
        # The same `serving` object a videogen.json carries, so both read the same way.
        return _from_stated({"serving": variant.serving.as_json()}, path, name)
    return ModelSpec(
        name=name or os.path.basename(os.path.normpath(path)),
        fps=16,
        sizes=WAN_SIZES,
        default_size="832x480",
        seconds=(1, 2, 3, 4, 5),
        default_seconds=5,
        default_steps=50,
        path=path,
    )


def _stated_spec(path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(path, SPEC_FILE), encoding="utf-8") as f:
            stated = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}/{SPEC_FILE}: unreadable ({err}); fix or remove it") from err
    if not isinstance(stated, dict) or not isinstance(stated.get("serving"), dict):
        raise ValueError(f"{path}/{SPEC_FILE}: needs a 'serving' object (see videogen.catalog)")
    return stated


def _from_stated(stated: dict[str, Any], path: str, name: str | None) -> ModelSpec:
    serving = stated["serving"]
    try:
        return ModelSpec(
            name=name or str(stated.get("name") or os.path.basename(os.path.normpath(path))),
            fps=int(serving["fps"]),
            sizes=tuple(str(s) for s in serving["sizes"]),
            default_size=str(serving["default_size"]),
            seconds=tuple(int(s) for s in serving["seconds"]),
            default_seconds=int(serving["default_seconds"]),
            default_steps=int(serving["default_steps"]),
            guidance_scale=float(serving.get("guidance_scale", 5.0)),
            guidance_scale_2=_optional_float(serving.get("guidance_scale_2")),
            flow_shift_by_size=tuple(
                (str(size), float(shift))
                for size, shift in dict(serving.get("flow_shift_by_size", {})).items()
            ),
            vae_tiling_min_pixels=_optional_int(serving.get("vae_tiling_min_pixels")),
            path=path,
            render_size=serving.get("render_size"),
            max_sequence_length=int(serving.get("max_sequence_length", 512)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}/{SPEC_FILE}: bad 'serving' entry ({err!r})") from err


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _tiny_spec() -> ModelSpec:
    stated = _stated_spec(str(TINY_DIR))
    if stated is None:
        raise RuntimeError(
            f"the built-in model is missing ({TINY_DIR / SPEC_FILE}): restore it with "
            f"`git checkout -- {TINY_DIR.relative_to(TINY_DIR.parents[2])}` or run "
            "`make train-tiny`"
        )
    return _from_stated(stated, str(TINY_DIR), TINY_MODEL)


# The built-in model (a default job: 256x256 as asked, drawn at 64x64, 2 s, 20 steps).
TINY_SPEC = _tiny_spec()


def resolve(model: str | None, model_name: str | None = None) -> ModelSpec:
    """Spec for a `VIDEOGEN_MODEL` value: empty or the tiny name -> tiny, else a local directory."""
    if not model or model == TINY_MODEL:
        return TINY_SPEC
    return spec_for_path(model, model_name)
