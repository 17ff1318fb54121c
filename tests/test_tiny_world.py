"""The built-in model's synthetic world and its judge (videogen.tiny): rendering is a pure,
in-range function of the clip; the training and held-out split is disjoint in combinations and
phrasings; and the judge reads colour, shape and motion back from rendered clips, clean and
degraded (noise and blur, as a small diffusion model's output will be). No services; a few
seconds."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from videogen.tiny.judge import judge
from videogen.tiny.world import (
    ALL_COMBOS,
    COLOUR_WORDS,
    HELD_OUT_COMBOS,
    HELD_OUT_TEMPLATES,
    PALETTE,
    TRAIN_COMBOS,
    TRAIN_TEMPLATES,
    Background,
    ClipSpec,
    Colour,
    Motion,
    Shape,
    Split,
    held_out_clips,
    prompt_for,
    render,
    training_clips,
)

SIZE = {"width": 64, "height": 64, "num_frames": 17}


def _box_blur(frames: np.ndarray) -> np.ndarray:
    padded = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    return np.mean([padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


def _degrade(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A box blur, then Gaussian noise of σ = 20: blurred noise would be easier."""
    noisy = _box_blur(frames) + rng.normal(0, 20, frames.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _accuracy(
    clips: list[ClipSpec], degrade: Callable[[np.ndarray], np.ndarray]
) -> dict[str, float]:
    hits = dict.fromkeys(("colour", "shape", "motion"), 0)
    for clip in clips:
        verdict = judge(degrade(render(clip, **SIZE)))
        for attr in hits:
            hits[attr] += getattr(verdict, attr) == getattr(clip, attr)
    return {attr: n / len(clips) for attr, n in hits.items()}


def test_render_is_deterministic_and_in_range() -> None:
    clip = held_out_clips(1, seed=3)[0]
    frames = render(clip, **SIZE)
    assert frames.dtype == np.uint8 and frames.shape == (17, 64, 64, 3)
    assert np.array_equal(frames, render(clip, **SIZE))
    other = ClipSpec(clip.colour, clip.shape, clip.motion, clip.background, clip.seed + 1)
    assert not np.array_equal(frames, render(other, **SIZE))
    wide = render(clip, width=256, height=144, num_frames=9)
    assert wide.shape == (9, 144, 256, 3)


@pytest.mark.parametrize("background", list(Background))
def test_every_colour_shape_and_motion_renders(background: Background) -> None:
    for i, (colour, shape, motion) in enumerate(ALL_COMBOS):
        if i % len(Background) != list(Background).index(background):
            continue  # each combination once, spread over the backgrounds
        frames = render(ClipSpec(colour, shape, motion, background, seed=i), **SIZE)
        # The object moves, and its interior is the palette colour within the clip's jitter.
        assert not np.array_equal(frames[0], frames[-1])
        near = np.abs(frames.astype(int) - PALETTE[colour]).max(axis=-1) <= 12
        assert near.sum(axis=(1, 2)).min() >= 10
        # The object keeps clear of the frame's edge: the border is backdrop in every frame.
        border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], 1)
        assert (border == border[:1]).all()


def test_split_is_disjoint_and_deterministic() -> None:
    assert set(TRAIN_COMBOS).isdisjoint(HELD_OUT_COMBOS)
    assert set(TRAIN_COMBOS) | set(HELD_OUT_COMBOS) == set(ALL_COMBOS)
    assert set(TRAIN_TEMPLATES).isdisjoint(HELD_OUT_TEMPLATES)
    # Every attribute pair of a held-out combination is still seen in training.
    for combo in HELD_OUT_COMBOS:
        for a, b in itertools.combinations(range(3), 2):
            assert any(t[a] == combo[a] and t[b] == combo[b] for t in TRAIN_COMBOS), combo
    train, held = training_clips(len(TRAIN_COMBOS), seed=1), held_out_clips(300, seed=1)
    assert {c.combo for c in train} == set(TRAIN_COMBOS)  # one pass covers every combination
    assert {c.combo for c in held} == set(HELD_OUT_COMBOS)
    assert {c.split for c in train} == {Split.TRAIN} and {c.split for c in held} == {Split.HELD_OUT}
    assert training_clips(50, seed=1) == training_clips(50, seed=1)
    assert training_clips(50, seed=1) != training_clips(50, seed=2)
    # The end-to-end test's and the demo's prompts are training combinations.
    assert (Colour.RED, Shape.SQUARE, Motion.RIGHT) in TRAIN_COMBOS
    assert (Colour.RED, Shape.BALL, Motion.BOUNCING) in TRAIN_COMBOS


def test_prompts_are_varied_and_split() -> None:
    rng = np.random.default_rng(0)
    train = [prompt_for(c, rng) for c in training_clips(600, seed=2)]
    held = [prompt_for(c, rng) for c in held_out_clips(600, seed=2)]
    print(
        f"\ndistinct prompts: {len(set(train))} of 600 training, {len(set(held))} of 600 held out"
    )
    print("e.g.", *train[:3], *held[:3], sep="\n  ")
    assert len(set(train)) > 450 and len(set(held)) > 300
    assert set(train).isdisjoint(held)
    for clip, text in zip(training_clips(100, seed=2), train, strict=False):
        assert any(word in text for word in COLOUR_WORDS[clip.colour]), text
        assert " a o" not in text and not text.startswith("a o"), text  # "an orange"
    fixed = held_out_clips(1, seed=2)[0]
    one = prompt_for(fixed, np.random.default_rng(fixed.seed))
    assert one == prompt_for(fixed, np.random.default_rng(fixed.seed))


def test_judge_reads_clean_held_out_clips() -> None:
    acc = _accuracy(held_out_clips(200, seed=5), lambda f: f)
    print(f"\njudge, 200 clean held-out clips at 64x64x17: {acc}")
    assert acc["colour"] >= 0.98 and acc["motion"] >= 0.95 and acc["shape"] >= 0.85


def test_judge_reads_noisy_blurred_clips() -> None:
    rng = np.random.default_rng(0)
    acc = _accuracy(held_out_clips(100, seed=6), lambda f: _degrade(f, rng))
    print(f"\njudge, 100 held-out clips blurred + noise σ=20: {acc}")
    assert acc["colour"] >= 0.98 and acc["motion"] >= 0.95 and acc["shape"] >= 0.8


def test_judge_without_a_moving_object() -> None:
    rng = np.random.default_rng(1)
    for empty in (
        np.full((17, 64, 64, 3), 128, dtype=np.uint8),
        _degrade(np.full((17, 64, 64, 3), 30, dtype=np.uint8), rng),
        rng.integers(0, 256, (17, 64, 64, 3)).astype(np.uint8),
    ):
        verdict = judge(empty)
        assert (verdict.colour, verdict.shape, verdict.motion) == (None, None, None)
        assert verdict.confidence == 0 and verdict.track == (None,) * 17
    # An object that never moves, on a plain backdrop: seen, named, and not moving.
    clip = ClipSpec(Colour.BLUE, Shape.SQUARE, Motion.LEFT, Background.GREY, seed=5)
    still = np.repeat(render(clip, **SIZE)[8:9], 17, axis=0)
    verdict = judge(still)
    assert (verdict.colour, verdict.shape, verdict.motion) == (Colour.BLUE, Shape.SQUARE, None)
    with pytest.raises(ValueError):
        judge(np.zeros((17, 16, 16, 3), dtype=np.uint8))
