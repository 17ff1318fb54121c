"""Two-expert models (Wan2.2 T2V-A14B's layout): the GPU worker's loop switches from
`transformer` to `transformer_2` below boundary_ratio x 1000 with the second guidance scale,
equals WanPipeline bit for bit, and resumes from a checkpoint on either side of the boundary.

The directory is the built-in model with a second transformer (the first one's weights,
perturbed from a seed), so it runs in seconds on the CPU; the A14B-wide directory is
`make test-big` (tests/test_fake_wan.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from helpers import (
    assert_resumes_at_every_step,
    direct_request,
    gpu_worker_settings,
    wait_for,
    wait_step,
    wan_pipeline_frames,
)
from temporalio.client import Client

from activities import checkpoint, pipeline
from activities.pipeline import Expert, GenerationParams, LoadedModel
from api import jobs
from videogen import catalog
from videogen.settings import ApiKey
from videogen.stack import Stack

BOUNDARY_RATIO = 0.75
NAME = "videogen-tiny-experts"
PARAMS = GenerationParams(
    prompt="a red square moving right",
    negative_prompt="",
    seed=21,
    width=64,
    height=64,
    num_frames=9,
    num_inference_steps=6,
    guidance_scale=5.0,
    guidance_scale_2=2.0,
)


def _two_expert_dir(out: Path, boundary_ratio: float | None = BOUNDARY_RATIO) -> Path:
    assert catalog.TINY_SPEC.path is not None
    shutil.copytree(catalog.TINY_SPEC.path, out)
    second = WanTransformer3DModel.from_pretrained(out / "transformer")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in second.parameters():
            p.add_(0.05 * p.std().nan_to_num() * torch.randn(p.shape, generator=gen))
    second.save_pretrained(out / "transformer_2")
    index = json.loads((out / "model_index.json").read_text())
    index["transformer_2"] = ["diffusers", "WanTransformer3DModel"]
    index["boundary_ratio"] = boundary_ratio
    (out / "model_index.json").write_text(json.dumps(index))
    spec = json.loads((out / catalog.SPEC_FILE).read_text())
    spec["name"] = NAME
    spec["serving"]["guidance_scale_2"] = PARAMS.guidance_scale_2
    (out / catalog.SPEC_FILE).write_text(json.dumps(spec))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = _two_expert_dir(tmp_path_factory.mktemp("experts") / "model")
    return pipeline.load_pipeline(catalog.spec_for_path(str(path)), "cpu")


def _experts(model: LoadedModel, params: GenerationParams) -> list[Expert]:
    state = pipeline.prepare(model, params)
    return [model.expert(t) for t in state.timesteps]


def test_both_experts_run_and_switch_once_at_the_boundary(model: LoadedModel) -> None:
    experts = _experts(model, PARAMS)
    assert model.boundary_timestep == BOUNDARY_RATIO * 1000
    switch = experts.index(Expert.LOW_NOISE)
    assert 0 < switch < len(experts)
    assert experts == [Expert.HIGH_NOISE] * switch + [Expert.LOW_NOISE] * (len(experts) - switch)


@pytest.mark.parametrize("guidance_scale_2", [2.0, None], ids=["own", "defaulted"])
def test_loop_equals_wan_pipeline_with_two_experts(
    model: LoadedModel, guidance_scale_2: float | None
) -> None:
    params = dataclasses.replace(PARAMS, guidance_scale_2=guidance_scale_2)
    expected = wan_pipeline_frames(model, params, guidance_scale_2=guidance_scale_2)
    state = pipeline.prepare(model, params)
    while not state.done:
        pipeline.denoise_step(model, state)
    assert np.array_equal(pipeline.decode_float(model, state), expected)


def test_the_second_expert_and_its_guidance_change_the_video(model: LoadedModel) -> None:
    both = pipeline.generate(model, PARAMS)
    other_guidance = pipeline.generate(model, dataclasses.replace(PARAMS, guidance_scale_2=5.0))
    one = pipeline.generate(
        pipeline.load_pipeline(catalog.TINY_SPEC, "cpu"),
        dataclasses.replace(PARAMS, guidance_scale_2=None),
    )
    assert not np.array_equal(both, other_guidance)
    assert not np.array_equal(both, one)


def test_resume_on_either_side_of_the_boundary_equals_an_uninterrupted_run(
    model: LoadedModel,
) -> None:
    experts = _experts(model, PARAMS)

    def names_the_next_expert(k: int, ckpt: checkpoint.Checkpoint) -> None:
        assert ckpt.manifest["expert"] == (experts[k].value if k < len(experts) else None)

    assert_resumes_at_every_step(model, PARAMS, names_the_next_expert)


def test_a_checkpoint_of_the_one_transformer_model_does_not_match_the_two_expert_one(
    model: LoadedModel,
) -> None:
    # The weights hash covers transformer_2, so no resume crosses models.
    one = pipeline.load_pipeline(catalog.TINY_SPEC, "cpu")
    assert one.weights_hash != model.weights_hash


def test_the_spec_gives_jobs_the_second_guidance(model: LoadedModel) -> None:
    assert model.spec.guidance_scale_2 == PARAMS.guidance_scale_2
    assert catalog.TINY_SPEC.guidance_scale_2 is None


def test_a_second_transformer_without_a_boundary_is_refused(tmp_path: Path) -> None:
    path = _two_expert_dir(tmp_path / "model", boundary_ratio=None)
    with pytest.raises(ValueError, match="transformer_2 and boundary_ratio"):
        pipeline.load_pipeline(catalog.spec_for_path(str(path)), "cpu")


def test_guidance_scale_2_on_a_one_transformer_model_is_refused() -> None:
    one = pipeline.load_pipeline(catalog.TINY_SPEC, "cpu")
    with pytest.raises(ValueError, match="guidance_scale_2: videogen-tiny has one"):
        pipeline.prepare(one, PARAMS)
    bad = dataclasses.replace(PARAMS, guidance_scale_2=float("nan"))
    with pytest.raises(ValueError, match="guidance_scale_2: must be a finite number"):
        pipeline.check_params(catalog.TINY_SPEC, bad)


async def test_a_job_stopped_after_the_switch_resumes_on_another_worker_exactly(
    stack_client: Client,
    stack: Stack,
    api: httpx.Client,
    model: LoadedModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole stack with a two-expert model: a GPU worker stopped after the low-noise
    expert took over hands the job over; a fresh worker resumes it from the checkpoint and the
    frames equal an uninterrupted run's."""
    from activities import media
    from worker_gpu import main as gpu_main

    assert model.spec.path is not None
    settings = gpu_worker_settings(stack, monkeypatch, "experts", model=model.spec.path)
    req = direct_request(
        stack,
        model=NAME,
        gpu_task_queue=settings.gpu_task_queue(NAME),
        num_inference_steps=40,
        seed=PARAMS.seed,
        prompt=PARAMS.prompt,
    )
    params = pipeline.GenerationParams.from_request(req, model.spec)
    assert params.guidance_scale_2 == PARAMS.guidance_scale_2
    switch = _experts(model, params).index(Expert.LOW_NOISE)
    await jobs.start(stack_client, req, ApiKey("k", "dev", "paid"))
    stop = asyncio.Event()
    worker = asyncio.ensure_future(gpu_main.run(settings, stop))
    await asyncio.to_thread(wait_step, api, req.job_id, switch + 2)
    stop.set()
    assert await asyncio.wait_for(worker, timeout=60) == 0

    stop = asyncio.Event()
    fresh = asyncio.ensure_future(gpu_main.run(settings, stop))
    try:
        v = await asyncio.to_thread(wait_for, api, req.job_id)
    finally:
        stop.set()
        assert await asyncio.wait_for(fresh, timeout=60) == 0
    assert v["status"] == "completed" and v["attempt"] == 2, v
    assert v["resumed_from_step"] > switch, v
    assert v["frames_sha256"] == media.frames_sha256(pipeline.generate(model, params))
