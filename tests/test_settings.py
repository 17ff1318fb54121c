"""Settings and model catalog: defaults that work, and clear errors for bad configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from videogen import catalog
from videogen.settings import DEV_API_KEY, Settings


def test_defaults_work_for_the_embedded_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VIDEOGEN_API_KEYS", "VIDEOGEN_STORAGE_URL", "VIDEOGEN_MODEL"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.keys[DEV_API_KEY].tier == "paid"
    assert s.resolved_storage_url.startswith("file:///") and s.resolved_storage_url.endswith(
        "/.data/objects"
    )
    assert s.model_spec is catalog.TINY_SPEC
    assert s.gpu_task_queue("videogen-tiny") == "videogen-gpu-videogen-tiny"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("k:u", "key:user:tier"),
        ("k:u:gold", "allowed tiers: internal, paid, free"),
        ("k::paid", "key:user:tier"),
    ],
)
def test_bad_api_keys_say_what_is_wrong(raw: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Settings(api_keys=raw).keys  # noqa: B018


def test_several_keys_and_users() -> None:
    keys = Settings(api_keys="a:alice:free, b:bob:internal,").keys
    assert {k: (v.user, v.tier) for k, v in keys.items()} == {
        "a": ("alice", "free"),
        "b": ("bob", "internal"),
    }


def test_local_model_dir_gets_wan_limits(tmp_path: Path) -> None:
    spec = Settings(model=str(tmp_path / "Wan2.1-T2V-1.3B-Diffusers")).model_spec
    assert spec.name == "Wan2.1-T2V-1.3B-Diffusers" and spec.path
    assert "832x480" in spec.sizes and spec.num_frames(5) == 81


def test_tiny_spec_frames_are_4k_plus_1() -> None:
    for seconds in catalog.TINY_SPEC.seconds:
        assert (catalog.TINY_SPEC.num_frames(seconds) - 1) % 4 == 0
    for size in catalog.TINY_SPEC.sizes:
        w, h = catalog.ModelSpec.parse_size(size)
        assert w % 16 == 0 and h % 16 == 0


def test_tiers_come_from_json_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "VIDEOGEN_TIERS",
        '{"gold": {"priority": 1, "user_concurrent": 5, '
        '"dedicated_pool": true}, "free": {"priority": 5}}',
    )
    s = Settings(api_keys="g:ann:gold,f:bo:free")
    assert s.tiers["gold"].user_concurrent == 5 and s.tiers["free"].user_per_minute == 0
    assert s.pool_for("gold") == "gold" and s.pool_for("free") == ""
    assert s.gpu_task_queue("m", s.pool_for("gold")) == "videogen-gpu-m-pool-gold"
    with pytest.raises(ValueError, match="allowed tiers: gold, free"):
        Settings(api_keys="k:u:paid").keys  # noqa: B018
    monkeypatch.setenv("VIDEOGEN_TIERS", '{"free": {"priority": 9}}')
    with pytest.raises(ValueError, match="less than or equal to 5"):
        Settings()
    monkeypatch.setenv("VIDEOGEN_TIERS", '{"free": {"priorty": 2}}')
    with pytest.raises(ValueError, match="priorty"):
        Settings()


def test_tier_preemption_settings_are_checked_and_reach_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from api.routers.videos import _preemption

    tiers = '{"paid": {"priority": 2, "max_wait_s": 30}, "free": {"priority": 4, "max_yields": 3}}'
    monkeypatch.setenv("VIDEOGEN_TIERS", tiers)
    s = Settings(api_keys="p:ann:paid,f:bo:free")
    assert _preemption(s.tiers["paid"]) == {
        "preempt_after_s": 30.0,
        "max_yields": 0,
        "min_run_s": 30.0,
    }
    assert _preemption(s.tiers["free"]) == {
        "preempt_after_s": 0.0,
        "max_yields": 3,
        "min_run_s": 30.0,
    }
    for bad in ('{"max_wait_s": -1}', '{"max_yields": -1}', '{"min_run_s": -5}'):
        monkeypatch.setenv("VIDEOGEN_TIERS", f'{{"free": {bad}}}')
        field = bad.split('"')[1]
        with pytest.raises(ValueError, match=f"{field}\n.*greater than or equal to 0"):
            Settings()


@pytest.mark.parametrize("user", ["o'brien", "x" * 65])
def test_user_ids_are_plain_and_short(user: str) -> None:
    # They become visibility queries and Temporal fairness keys (at most 64 bytes).
    with pytest.raises(ValueError, match="user ids may hold up to 64"):
        Settings(api_keys=f"k:{user}:paid").keys  # noqa: B018
