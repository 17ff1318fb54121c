"""Expanded timesteps (Wan2.2 TI2V-5B's `expand_timesteps`): the GPU worker's loop passes one
timestep per latent token, as WanPipeline does, equals it bit for bit, resumes from a
checkpoint exactly, and holds sizes to the model's own multiple.

The directory is the built-in model's text encoder, tokenizer, VAE and scheduler with a small
random transformer of TI2V's 1x2x2 patch, so it runs in seconds on the CPU; the 5B-wide
directory is `make test-big` (tests/test_fake_wan.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from helpers import assert_resumes_at_every_step, wan_pipeline_frames

from activities import pipeline
from activities.pipeline import GenerationParams, LoadedModel
from videogen import catalog

PARAMS = GenerationParams(
    prompt="a blue ball moving up",
    negative_prompt="",
    seed=4,
    width=64,
    height=64,
    num_frames=9,
    num_inference_steps=4,
    guidance_scale=5.0,
)


def _expanded_dir(out: Path, patch: tuple[int, int, int] = (1, 2, 2)) -> Path:
    assert catalog.TINY_SPEC.path is not None
    shutil.copytree(catalog.TINY_SPEC.path, out)
    shutil.rmtree(out / "transformer")
    torch.manual_seed(5)
    WanTransformer3DModel(
        patch_size=patch,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=64,
        freq_dim=32,
        ffn_dim=64,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    ).save_pretrained(out / "transformer")
    index = json.loads((out / "model_index.json").read_text())
    index["expand_timesteps"] = True
    (out / "model_index.json").write_text(json.dumps(index))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = _expanded_dir(tmp_path_factory.mktemp("expanded") / "model")
    return pipeline.load_pipeline(catalog.spec_for_path(str(path)), "cpu")


def test_each_latent_token_gets_the_step_s_timestep(model: LoadedModel) -> None:
    state = pipeline.prepare(model, PARAMS)
    seen: list[torch.Tensor] = []
    model.pipe.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["timestep"]), with_kwargs=True
    )
    pipeline.denoise_step(model, state)
    _, _, frames, h, w = state.latents.shape
    tokens = frames * (h // 2) * (w // 2)
    assert [tuple(t.shape) for t in seen] == [(1, tokens)] * 2  # conditional and unconditional
    assert torch.equal(seen[0], torch.full((1, tokens), float(state.timesteps[0])))


def test_loop_equals_wan_pipeline_with_expanded_timesteps(model: LoadedModel) -> None:
    expected = wan_pipeline_frames(model, PARAMS)
    state = pipeline.prepare(model, PARAMS)
    while not state.done:
        pipeline.denoise_step(model, state)
    assert np.array_equal(pipeline.decode_float(model, state), expected)


def test_resume_at_every_step_equals_an_uninterrupted_run(model: LoadedModel) -> None:
    assert_resumes_at_every_step(model, PARAMS)


def test_sizes_keep_to_the_model_s_multiple(model: LoadedModel) -> None:
    # The built-in VAE's 4x times the 1x2x2 patch is 8, under the floor of 16; TI2V-5B's VAE
    # compresses 16x, so its multiple is 32 (the big test checks that directory).
    assert model.size_multiple == 16
    with pytest.raises(ValueError, match="width: must be a positive multiple of 32 for"):
        pipeline.check_params(model.spec, dataclasses.replace(PARAMS, width=48), 32)
    pipeline.check_params(model.spec, dataclasses.replace(PARAMS, width=96), 32)


def test_expanded_timesteps_with_another_patch_are_refused(tmp_path: Path) -> None:
    path = _expanded_dir(tmp_path / "model", patch=(1, 4, 4))
    with pytest.raises(ValueError, match=r"expand_timesteps needs patch_size \(1, 2, 2\)"):
        pipeline.load_pipeline(catalog.spec_for_path(str(path)), "cpu")
