"""The model catalog (videogen.registry): versions, aliases, locks, reloads, the API's view."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import tiny_variant

from api.app import create_app
from videogen import catalog, cli, registry
from videogen.settings import DEV_API_KEY, Settings

AUTH = {"Authorization": f"Bearer {DEV_API_KEY}"}


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_variant(tmp_path_factory.mktemp("models") / "tiny-ft")


def _catalog(
    tmp: Path, variant: Path, weights: tuple[int, int] = (90, 10), **extra: object
) -> Path:
    file = tmp / "models.json"
    body = {
        "models": {"tiny": {"source": "builtin"}, "tiny-ft": {"source": str(variant)}},
        "aliases": {"tiny-ab": {"tiny": weights[0], "tiny-ft": weights[1]}},
        **extra,
    }
    file.write_text(json.dumps(body))
    return file


def test_without_a_catalog_the_one_model_keeps_its_queue_and_gets_a_version() -> None:
    reg = registry.load("")
    one = reg.models[catalog.TINY_MODEL]
    assert list(reg.models) == [catalog.TINY_MODEL] and reg.default == catalog.TINY_MODEL
    assert len(one.version) == 64 and one.version == registry.version_of(str(catalog.TINY_DIR))[0]
    assert Settings().warm_queue(one) == "videogen-gpu-videogen-tiny"
    assert one.ref == f"videogen-tiny@{one.version[:12]}"


def test_versions_come_from_the_bytes_and_each_has_its_queue(tmp_path: Path, variant: Path) -> None:
    reg = registry.load(str(_catalog(tmp_path, variant)))
    tiny, ft = reg.models["tiny"], reg.models["tiny-ft"]
    assert tiny.version != ft.version
    assert tiny.spec.sizes == ft.spec.sizes == catalog.TINY_SPEC.sizes  # limits from the dir
    queues = {Settings().warm_queue(m) for m in (tiny, ft)}
    assert queues == {
        f"videogen-gpu-tiny-{tiny.version[:12]}",
        f"videogen-gpu-tiny-ft-{ft.version[:12]}",
    }
    # videogen.json states limits, not weights: editing it keeps the version.
    spec = json.loads((variant / catalog.SPEC_FILE).read_text())
    (variant / catalog.SPEC_FILE).write_text(json.dumps({**spec, "name": "renamed"}))
    assert registry.version_of(str(variant))[0] == ft.version


def test_an_alias_splits_users_by_weight_and_sticks(tmp_path: Path, variant: Path) -> None:
    reg = registry.load(str(_catalog(tmp_path, variant)))
    users = [f"user-{i}" for i in range(400)]
    first = {u: reg.resolve("tiny-ab", u).model.name for u in users}
    share = Counter(first.values())["tiny-ft"] / len(users)
    assert 0.06 <= share <= 0.14, share  # 10 % of 400: binomial sd 1.5 %, this is +-2.7 sd
    assert all(reg.resolve("tiny-ab", u).model.name == first[u] for u in users)
    assert reg.resolve("tiny-ab", users[0]).asked == "tiny-ab"
    # A ramp from 10 % to 30 %: only users moving to the new model move.
    ramped = registry.load(str(_catalog(tmp_path, variant, (70, 30))))
    after = {u: ramped.resolve("tiny-ab", u).model.name for u in users}
    assert all(after[u] == "tiny-ft" for u in users if first[u] == "tiny-ft")
    assert 0.24 <= Counter(after.values())["tiny-ft"] / len(users) <= 0.36


def test_a_request_may_pin_a_version_and_an_unknown_one_lists_what_is_served(
    tmp_path: Path, variant: Path
) -> None:
    reg = registry.load(str(_catalog(tmp_path, variant)))
    ft = reg.models["tiny-ft"]
    assert reg.resolve(ft.ref, "u").model is ft
    assert reg.resolve(None, "u").model.name == "tiny"  # the first model is the default
    with pytest.raises(registry.UnknownModel, match="allowed: tiny, tiny-ft, tiny-ab"):
        reg.resolve("sora-2", "u")
    with pytest.raises(registry.UnknownModel, match=f"served: {ft.ref}"):
        reg.resolve("tiny-ft@0123456789ab", "u")
    with pytest.raises(registry.UnknownModel):
        reg.resolve("tiny-ft@" + ft.version[:4], "u")  # too short to mean one version


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"models": {}}, "at least one model"),
        ({"models": {"a b": {"source": "builtin"}}}, "model name 'a b'"),
        ({"models": {"m": {}}}, "needs a 'source'"),
        ({"models": {"m": {"source": "builtin", "sizes": ["1x1"]}}}, "limits come from"),
        ({"models": {"m": {"source": "/nonexistent"}}}, "videogen model lock"),
        (
            {"models": {"m": {"source": "builtin"}}, "aliases": {"a": {"x": 1}}},
            "'x' is not a model",
        ),
        ({"models": {"m": {"source": "builtin"}}, "aliases": {"m": {"m": 1}}}, "name of a model"),
        ({"models": {"m": {"source": "builtin"}}, "aliases": {"a": {"m": 0}}}, "above 0"),
        ({"models": {"m": {"source": "builtin"}}, "default": "x"}, "default 'x'"),
        ({"models": {"m": {"source": "builtin"}}, "extra": 1}, "unknown keys"),
    ],
)
def test_a_bad_catalog_is_refused_saying_what_to_fix(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry.load(json.dumps(body))


def test_lock_writes_versions_that_hosts_without_the_weights_use(
    tmp_path: Path, variant: Path
) -> None:
    copy = tiny_variant(tmp_path / "copy")
    file = _catalog(tmp_path, copy)
    versions = registry.lock(file)
    locked = json.loads(file.read_text())
    assert locked["models"]["tiny-ft"]["version"] == versions["tiny-ft"]
    # An API host that does not mount the weights routes by the locked version.
    moved = copy.rename(tmp_path / "elsewhere")
    away = registry.load(str(file))
    assert away.models["tiny-ft"].version == versions["tiny-ft"]
    assert away.models["tiny-ft"].queue_key == f"tiny-ft-{versions['tiny-ft'][:12]}"
    # Weights that changed after the lock are refused where they can be read.
    moved.rename(copy)
    data = bytearray((copy / "vae" / "diffusion_pytorch_model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (copy / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="run `videogen model lock` again"):
        registry.load(str(file))


def test_the_api_follows_a_changed_ramp_and_keeps_the_last_good_catalog(
    tmp_path: Path, variant: Path
) -> None:
    file = _catalog(tmp_path, variant, (100, 0))
    live = registry.Live(str(file), check_s=0)
    assert live.registry.resolve("tiny-ab", "u").model.name == "tiny"
    _catalog(tmp_path, variant, (0, 100))
    os.utime(file, ns=(1, 1))  # a new mtime, however fast the rewrite was
    assert live.due()
    live.refresh()
    assert live.registry.resolve("tiny-ab", "u").model.name == "tiny-ft"
    file.write_text("{not json")
    os.utime(file, ns=(2, 2))
    live.refresh()
    assert "not valid JSON" in live.error
    assert live.registry.resolve("tiny-ab", "u").model.name == "tiny-ft"


def test_the_api_lists_models_refuses_unknown_ones_and_follows_a_ramp(
    tmp_path: Path, variant: Path
) -> None:
    settings = Settings(models=str(_catalog(tmp_path, variant)), data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as api:
        listed = api.get("/v1/models", headers=AUTH)
        assert listed.status_code == 200
        data = {m["id"]: m for m in listed.json()["data"]}
        assert list(data) == ["tiny", "tiny-ft", "tiny-ab"]
        ft = settings.registry.models["tiny-ft"]
        assert data["tiny-ft"]["object"] == "model" and data["tiny-ft"]["model_version"] == ft.ref
        assert data["tiny-ab"]["routes_to"] == {"tiny": 90, "tiny-ft": 10}
        assert data["tiny"]["default"] and data["tiny"]["sizes"] == list(catalog.TINY_SPEC.sizes)
        one = api.get("/v1/models/tiny-ft", headers=AUTH)
        assert one.json() == data["tiny-ft"]
        missing = api.get("/v1/models/sora-2", headers=AUTH)
        assert missing.status_code == 404 and "tiny-ab" in missing.json()["error"]["message"]
        assert api.get("/v1/models").status_code == 401
        bad = api.post("/v1/videos", headers=AUTH, json={"prompt": "a cat", "model": "sora-2"})
        assert bad.status_code == 400
        err = bad.json()["error"]
        assert err["param"] == "model" and err["code"] == "unsupported_model"
        assert "allowed: tiny, tiny-ft, tiny-ab" in err["message"]
        # A changed ramp applies without a restart (the file is looked at once a second).
        file = _catalog(tmp_path, variant, (0, 100))
        os.utime(file, ns=(1, 1))
        time.sleep(1.1)
        ramped = api.get("/v1/models/tiny-ab", headers=AUTH).json()
        assert ramped["routes_to"] == {"tiny": 0, "tiny-ft": 100}


def test_a_gpu_worker_loads_the_model_it_is_told_or_the_default(
    tmp_path: Path, variant: Path
) -> None:
    models = str(_catalog(tmp_path, variant, default="tiny-ab"))
    assert Settings(models=models).served_model.name == "tiny"  # the alias's first model
    assert Settings(models=models, worker_model="tiny-ft").served_model.name == "tiny-ft"
    with pytest.raises(ValueError, match="VIDEOGEN_WORKER_MODEL: 'nope' is not in the catalog"):
        Settings(models=models, worker_model="nope").served_model  # noqa: B018


def test_the_cli_locks_a_catalog_and_lists_versions_and_queues(
    tmp_path: Path,
    variant: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The commands' functions: `main` ends the process with os._exit.
    file = _catalog(tmp_path, variant)
    assert cli.cmd_model_lock(argparse.Namespace(catalog=str(file))) == 0
    ft = registry.load(str(file)).models["tiny-ft"]
    assert json.loads(file.read_text())["models"]["tiny-ft"]["version"] == ft.version
    monkeypatch.setenv("VIDEOGEN_MODELS", str(file))
    assert cli.cmd_model_list(argparse.Namespace()) == 0
    out = capsys.readouterr().out
    assert f"{ft.ref}  queue videogen-gpu-{ft.queue_key}  source {variant}" in out
    assert "tiny-ab  alias: tiny 90, tiny-ft 10" in out
    file.write_text('{"models": {"m": {"source": "/nowhere"}}}')
    with pytest.raises(cli.CliError, match="cannot read its source"):
        cli.cmd_model_lock(argparse.Namespace(catalog=str(file)))
