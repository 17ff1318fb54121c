"""Where a model's parts live (activities/placement.py): moves of an offloaded text encoder and
of two experts, checked with recording fakes (a CPU-only machine has nowhere else to move them),
the same frames on the real model whatever the placement, and the worker settings."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import generation_params

from activities import pipeline
from activities.placement import HOST, Placed, Placement
from videogen import catalog
from videogen.settings import Settings, TextEncoderPlacement

GPU = "cuda"


class Part:
    """Records every move, as `module.to(device)` would make it."""

    def __init__(self, name: str, moves: list[tuple[str, str]]) -> None:
        self.name = name
        self.moves = moves

    def to(self, device: str) -> Part:
        self.moves.append((self.name, device))
        return self


def placed(plan: Placement, experts: int = 1) -> tuple[Placed, list[tuple[str, str]]]:
    moves: list[tuple[str, str]] = []
    names = ["transformer", "vae", "text_encoder"] + (["transformer_2"] if experts == 2 else [])
    parts: dict[str, Part | None] = {n: Part(n, moves) for n in names}
    return Placed(parts, GPU, plan), moves


def test_by_default_everything_stays_on_the_device() -> None:
    p, moves = placed(Placement(), experts=2)
    assert sorted(moves) == sorted(
        [("transformer", GPU), ("vae", GPU), ("text_encoder", GPU), ("transformer_2", GPU)]
    )
    moves.clear()
    with p.text_encoder_in_use() as device:
        assert device.type == GPU
    assert not p.activate_expert("transformer_2") and moves == []


def test_an_offloaded_text_encoder_moves_in_to_encode_and_back_out() -> None:
    p, moves = placed(Placement(TextEncoderPlacement.OFFLOAD))
    assert ("text_encoder", HOST) in moves and p.where["text_encoder"] == HOST
    moves.clear()
    with p.text_encoder_in_use() as device:
        assert device.type == GPU and moves == [("text_encoder", GPU)]
    assert moves == [("text_encoder", GPU), ("text_encoder", HOST)]
    moves.clear()
    with pytest.raises(RuntimeError), p.text_encoder_in_use():
        raise RuntimeError("encoding failed")
    assert moves[-1] == ("text_encoder", HOST), "a failed encode still frees the device"


def test_a_cpu_text_encoder_encodes_on_the_host_without_moving() -> None:
    p, moves = placed(Placement(TextEncoderPlacement.CPU))
    assert p.where["text_encoder"] == HOST
    moves.clear()
    with p.text_encoder_in_use() as device:
        assert device.type == HOST
    assert moves == []


def test_offloaded_experts_swap_with_the_inactive_one_leaving_first() -> None:
    p, moves = placed(Placement(offload_experts=True), experts=2)
    assert p.where == {
        "transformer": GPU,
        "vae": GPU,
        "text_encoder": GPU,
        "transformer_2": HOST,
    }
    moves.clear()
    assert not p.activate_expert("transformer"), "already there: nothing moves"
    assert p.activate_expert("transformer_2")
    assert moves == [("transformer", HOST), ("transformer_2", GPU)]
    assert not p.activate_expert("transformer_2")
    assert p.activate_expert("transformer")  # the next job starts with the high-noise expert
    assert moves[2:] == [("transformer_2", HOST), ("transformer", GPU)]


def test_frames_do_not_depend_on_the_placement() -> None:
    params = generation_params({"negative_prompt": "blurry", "seed": 5})
    frames = []
    for plan in (Placement(), Placement(TextEncoderPlacement.OFFLOAD, offload_experts=True)):
        model = pipeline.load_pipeline(catalog.TINY_SPEC, "cpu", plan)
        assert model.placed.plan == plan
        frames.append(pipeline.generate(model, params))
    np.testing.assert_array_equal(frames[0], frames[1])


def test_placement_settings_name_the_allowed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().text_encoder is TextEncoderPlacement.DEVICE
    assert not Settings().offload_experts
    monkeypatch.setenv("VIDEOGEN_TEXT_ENCODER", "offload")
    monkeypatch.setenv("VIDEOGEN_OFFLOAD_EXPERTS", "true")
    s = Settings()
    assert s.text_encoder is TextEncoderPlacement.OFFLOAD and s.offload_experts
    monkeypatch.setenv("VIDEOGEN_TEXT_ENCODER", "gpu")
    with pytest.raises(ValueError, match="'device', 'offload' or 'cpu'"):
        Settings()


def test_a_new_plan_rehomes_the_parts() -> None:
    p, moves = placed(Placement(), experts=2)
    moves.clear()
    p.rehome(Placement(TextEncoderPlacement.OFFLOAD, offload_experts=True))
    assert sorted(moves) == [("text_encoder", HOST), ("transformer_2", HOST)]
    p.rehome(Placement())
    assert p.where == dict.fromkeys(["transformer", "vae", "text_encoder", "transformer_2"], GPU)
