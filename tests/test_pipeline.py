"""The hand-written denoising loop: equals WanPipeline, deterministic, resumable from its state."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import WanPipeline
from helpers import assert_resumes_at_every_step, wan_pipeline_frames

from activities.pipeline import (
    DenoiseState,
    GenerationParams,
    LoadedModel,
    PoisonedStateError,
    check_params,
    decode,
    decode_float,
    denoise_step,
    generate,
    load_pipeline,
    prepare,
)
from videogen.catalog import SPEC_FILE, TINY_SPEC, spec_for_path

ROOT = Path(__file__).resolve().parents[1]

SMALL = GenerationParams(
    prompt="a red fox running through snow",
    negative_prompt="blurry, static",
    seed=1234,
    width=64,
    height=64,
    num_frames=9,
    num_inference_steps=4,
    guidance_scale=5.0,
)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_pipeline(TINY_SPEC, "cpu")


def run_to_end(model: LoadedModel, state: DenoiseState) -> DenoiseState:
    while not state.done:
        denoise_step(model, state)
    return state


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_loop_equals_wan_pipeline_bit_for_bit(model: LoadedModel, guidance_scale: float) -> None:
    params = dataclasses.replace(SMALL, num_inference_steps=3, guidance_scale=guidance_scale)
    expected = wan_pipeline_frames(model, params)

    state = run_to_end(model, prepare(model, params))
    ours = decode_float(model, state)

    assert (state.negative_prompt_embeds is None) == (guidance_scale <= 1.0)
    assert ours.shape == expected.shape == (9, 64, 64, 3)
    assert ours.dtype == expected.dtype
    assert np.array_equal(ours, expected)


def test_output_is_uint8_frames(model: LoadedModel) -> None:
    frames = generate(model, SMALL)
    assert frames.dtype == np.uint8
    assert frames.shape == (SMALL.num_frames, SMALL.height, SMALL.width, 3)
    assert frames.std() > 0  # an image, not a constant


def test_same_seed_same_frames_other_seed_other_frames(model: LoadedModel) -> None:
    first = generate(model, SMALL)
    again = generate(model, SMALL)
    other = generate(model, dataclasses.replace(SMALL, seed=SMALL.seed + 1))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_the_built_in_model_loads_the_same_weights_every_time(model: LoadedModel) -> None:
    again = load_pipeline(TINY_SPEC, "cpu")
    assert again.weights_hash == model.weights_hash
    assert TINY_SPEC.path is not None and again.spec.path == TINY_SPEC.path


def test_load_from_directory_keeps_weights_and_output(model: LoadedModel, tmp_path: Path) -> None:
    # Saved again as a diffusers directory, with its spec (the prompt length changes the output).
    model.pipe.save_pretrained(tmp_path)
    shutil.copy(Path(TINY_SPEC.path or "") / SPEC_FILE, tmp_path)
    loaded = load_pipeline(spec_for_path(str(tmp_path)), "cpu")
    assert loaded.spec.max_sequence_length == TINY_SPEC.max_sequence_length
    assert loaded.pipe.transformer.dtype == torch.float32  # float32 on the CPU
    assert loaded.weights_hash == model.weights_hash
    params = dataclasses.replace(SMALL, num_inference_steps=2)
    assert np.array_equal(generate(loaded, params), generate(model, params))


@pytest.mark.slow
def test_the_built_in_model_s_weights_are_the_same_in_another_process(model: LoadedModel) -> None:
    code = (
        "from activities.pipeline import load_pipeline; from videogen.catalog import TINY_SPEC;"
        "print(load_pipeline(TINY_SPEC, 'cpu').weights_hash)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == model.weights_hash


def test_loading_leaves_the_global_rng_alone() -> None:
    before = torch.get_rng_state()
    load_pipeline(TINY_SPEC, "cpu")
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"width": 72}, "width"),
        ({"height": 0}, "height"),
        ({"num_frames": 8}, "num_frames"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": TINY_SPEC.max_steps + 1}, "num_inference_steps"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"seed": -1}, "seed"),
    ],
)
def test_check_params_names_the_bad_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        check_params(TINY_SPEC, dataclasses.replace(SMALL, **change))


def test_check_params_accepts_a_good_request() -> None:
    check_params(TINY_SPEC, SMALL)
    check_params(TINY_SPEC, dataclasses.replace(SMALL, num_frames=1, guidance_scale=0.0))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_interrupted_and_resumed_equals_uninterrupted(model: LoadedModel, k: int) -> None:
    uninterrupted = decode_float(model, run_to_end(model, prepare(model, SMALL)))

    state = prepare(model, SMALL)
    for _ in range(k):
        denoise_step(model, state)
    snapshot = copy.deepcopy(state)
    assert torch.equal(snapshot.generator.get_state(), state.generator.get_state())
    del state
    # Another run in between must not leak into the snapshot through shared objects.
    generate(model, dataclasses.replace(SMALL, seed=7, num_inference_steps=2))

    assert snapshot.next_step == k
    resumed = decode_float(model, run_to_end(model, snapshot))
    assert np.array_equal(resumed, uninterrupted)


def test_resuming_from_latents_alone_is_wrong(model: LoadedModel) -> None:
    # Control for the test above: the scheduler's multistep history is part of the state.
    uninterrupted = decode_float(model, run_to_end(model, prepare(model, SMALL)))
    state = prepare(model, SMALL)
    for _ in range(2):
        denoise_step(model, state)
    naive = prepare(model, SMALL)
    naive.latents = state.latents.clone()
    naive.next_step = state.next_step
    assert not np.array_equal(decode_float(model, run_to_end(model, naive)), uninterrupted)


def test_nan_latents_raise_poisoned_state_and_keep_the_state(model: LoadedModel) -> None:
    state = prepare(model, SMALL)
    denoise_step(model, state)
    state.latents[0, 0, 0, 0, 0] = float("nan")
    scheduler_step = state.scheduler.step_index
    with pytest.raises(PoisonedStateError) as err:
        denoise_step(model, state)
    assert err.value.step == 1
    assert state.next_step == 1
    assert state.scheduler.step_index == scheduler_step


def test_on_step_reports_progress_and_can_abort(model: LoadedModel) -> None:
    seen: list[tuple[int, int]] = []
    generate(model, SMALL, on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    class Abort(Exception):
        pass

    def abort_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Abort

    with pytest.raises(Abort):
        generate(model, SMALL, on_step=abort_after_two)


def test_steps_and_decode_refuse_out_of_order(model: LoadedModel) -> None:
    state = prepare(model, dataclasses.replace(SMALL, num_inference_steps=1))
    with pytest.raises(ValueError, match="decode after all steps"):
        decode(model, state)
    denoise_step(model, state)
    with pytest.raises(ValueError, match="steps are done"):
        denoise_step(model, state)


# --- a flow shift of the job's own (published per size, e.g. Wan2.1 14B's 5.0 at 720P) -------

SHIFTED_SPEC = dataclasses.replace(TINY_SPEC, flow_shift_by_size=(("64x64", 5.0),))


@pytest.fixture(scope="module")
def shifted() -> LoadedModel:
    return load_pipeline(SHIFTED_SPEC, "cpu")


def test_the_spec_gives_a_job_its_size_s_flow_shift() -> None:
    assert SHIFTED_SPEC.flow_shift(64, 64) == 5.0
    assert SHIFTED_SPEC.flow_shift(128, 128) is None and TINY_SPEC.flow_shift(64, 64) is None


def test_a_job_s_flow_shift_equals_wan_pipeline_with_that_shift(shifted: LoadedModel) -> None:
    params = dataclasses.replace(SMALL, flow_shift=5.0)
    shared = shifted.pipe.scheduler
    assert shared.config.flow_shift == 3.0  # the built-in model's own
    components = {**shifted.pipe.components}
    components["scheduler"] = type(shared).from_config(shared.config, flow_shift=5.0)
    reference = SimpleNamespace(pipe=WanPipeline(**components), spec=shifted.spec)
    expected = wan_pipeline_frames(reference, params)

    state = run_to_end(shifted, prepare(shifted, params))
    assert np.array_equal(decode_float(shifted, state), expected)
    assert state.scheduler.config.flow_shift == 5.0
    assert shared.config.flow_shift == 3.0, "the shared scheduler must not change"
    assert not np.array_equal(
        generate(shifted, params), generate(shifted, dataclasses.replace(params, flow_shift=None))
    )


def test_a_job_with_its_own_flow_shift_resumes_exactly(shifted: LoadedModel) -> None:
    assert_resumes_at_every_step(shifted, dataclasses.replace(SMALL, flow_shift=5.0))


def test_a_resumed_job_keeps_its_flow_shift_for_its_next_checkpoint(shifted: LoadedModel) -> None:
    # Resuming computes the same bits from the shared scheduler too (the saved sigmas overwrite
    # what set_timesteps made), but its config would then name 3.0, and the next checkpoint of
    # the resumed run would be refused as another scheduler's.
    from activities import checkpoint

    params = dataclasses.replace(SMALL, flow_shift=5.0)
    state = prepare(shifted, params)
    denoise_step(shifted, state)
    snap = checkpoint.snapshot(state, job_id="video_shift", attempt=1, device="cpu")
    data = checkpoint.encode(snap, shifted)
    resumed = checkpoint.restore(shifted, checkpoint.decode(data), params)
    assert resumed.scheduler.config.flow_shift == 5.0
    denoise_step(shifted, resumed)
    again = checkpoint.snapshot(resumed, job_id="video_shift", attempt=2, device="cpu")
    ckpt = checkpoint.decode(checkpoint.encode(again, shifted))
    checkpoint.check_compatible(
        ckpt, shifted, params, job_id="video_shift", num_threads=torch.get_num_threads()
    )


def test_a_tiled_decode_equals_wan_pipeline_with_tiling(model: LoadedModel) -> None:
    # Wider than one 256-pixel tile, so the decode really tiles.
    params = dataclasses.replace(SMALL, width=320, height=64, num_frames=5, num_inference_steps=2)
    tiled = dataclasses.replace(params, vae_tiling=True)
    model.pipe.vae.enable_tiling()
    try:
        expected = wan_pipeline_frames(model, params)
    finally:
        model.pipe.vae.disable_tiling()
    state = run_to_end(model, prepare(model, tiled))
    assert np.array_equal(decode_float(model, state), expected)
    whole = decode_float(model, dataclasses.replace(state, params=params))
    assert not np.array_equal(whole, expected), "tiles change the bits"
    assert np.array_equal(whole, wan_pipeline_frames(model, params)), "tiling is set per decode"


def test_a_model_tiles_its_decode_from_a_size_on(tmp_path: Path) -> None:
    spec = dataclasses.replace(TINY_SPEC, vae_tiling_min_pixels=320 * 64)
    assert spec.vae_tiling(320, 64) and spec.vae_tiling(64, 320) and not spec.vae_tiling(64, 64)
    assert not TINY_SPEC.vae_tiling(1280, 720), "off unless the model's videogen.json sets it"
    stated = json.loads((Path(TINY_SPEC.path or "") / SPEC_FILE).read_text())
    stated["serving"]["vae_tiling_min_pixels"] = 921600
    (tmp_path / SPEC_FILE).write_text(json.dumps(stated))
    assert spec_for_path(str(tmp_path)).vae_tiling(1280, 720)
