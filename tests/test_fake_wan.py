"""videogen.fake_wan and videogen.wan_variants: published Wan directory layouts with random
weights, the catalog's defaults for a directory without videogen.json, and `videogen model
fake-wan`."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from diffusers import WanPipeline
from helpers import wan_pipeline_frames

from activities import pipeline
from videogen import catalog, cli, fake_wan
from videogen.wan_variants import UMT5_XXL, VARIANTS, WanVariant, identify

# Tokens the text encoder reads in the runs here: the encoder's cost grows with them.
TEST_TOKENS = 16


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _weights(path: Path) -> list[Path]:
    return sorted(path.rglob("*.safetensors"))


@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every variant at its published depth, configs only (no weights: well under a second)."""
    root = tmp_path_factory.mktemp("wan-configs")
    return {name: fake_wan.build(name, root / name, weights=False).path for name in VARIANTS}


def _generate(path: Path, width: int, height: int) -> tuple[WanPipeline, np.ndarray, list[str]]:
    """Two steps, 5 frames; the names of the transformers each step ran, in order."""
    pipe = WanPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    ran: list[str] = []
    for name in ("transformer", "transformer_2"):
        module = getattr(pipe, name)
        if module is not None:
            module.register_forward_pre_hook(lambda *_, n=name: ran.append(n))
    frames = pipe(
        "a red ball bouncing",
        negative_prompt="",
        width=width,
        height=height,
        num_frames=5,
        num_inference_steps=2,
        max_sequence_length=TEST_TOKENS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    return pipe, frames, ran


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_writes_the_table_s_configs(config_dirs: dict[str, Path], name: str) -> None:
    v: WanVariant = VARIANTS[name]
    out = config_dirs[name]
    assert _weights(out) == []
    assert _json(out / "model_index.json") == v.model_index(diffusers.__version__)
    transformer = _json(out / "transformer" / "config.json")
    assert {k: transformer[k] for k in v.transformer} == v.transformer
    vae = _json(out / "vae" / "config.json")
    assert {k: vae[k] for k in v.vae} == v.vae and vae["z_dim"] == v.vae_z_dim
    scheduler = _json(out / "scheduler" / "scheduler_config.json")
    assert scheduler["_class_name"] == "UniPCMultistepScheduler"
    assert {k: scheduler[k] for k in v.scheduler} == v.scheduler
    text = _json(out / "text_encoder" / "config.json")
    # transformers 5 stores the published tie_word_embeddings=false as
    # scale_decoder_outputs=false and forces tie_word_embeddings to true.
    published = {k: val for k, val in UMT5_XXL.items() if k != "tie_word_embeddings"}
    assert {k: text[k] for k in published} == published
    assert text["scale_decoder_outputs"] is False and text["dtype"] == v.dtypes["text_encoder"]
    assert _json(out / "tokenizer" / "tokenizer_config.json")["tokenizer_class"] == "T5Tokenizer"
    stated = _json(out / catalog.SPEC_FILE)
    assert stated["serving"] == v.serving.as_json() and stated["wan"]["variant"] == name


def test_published_parameter_counts_match_the_published_file_sizes() -> None:
    # The dtypes in videogen.wan_variants come from these counts (file size / count = bytes
    # per parameter): 4 bytes for every transformer, as the published repositories store.
    counts = {name: fake_wan.parameter_counts(name) for name in VARIANTS}
    assert counts["wan2.1-t2v-1.3b"] == {
        "transformer": 1_418_996_800,
        "vae": 126_892_531,
        "text_encoder": 5_680_910_336,
    }
    assert counts["wan2.1-t2v-14b"]["transformer"] == 14_288_491_584
    assert counts["wan2.2-t2v-a14b"]["transformer_2"] == 14_288_491_584
    assert counts["wan2.2-ti2v-5b"]["transformer"] == 4_999_787_712
    assert counts["wan2.2-ti2v-5b"]["vae"] == 704_688_668
    # layers cuts depth only: one 1.3B block is 1536 wide, as published.
    one = fake_wan.parameter_counts("wan2.1-t2v-1.3b", layers=1)
    two = fake_wan.parameter_counts("wan2.1-t2v-1.3b", layers=2)
    per_block = two["transformer"] - one["transformer"]
    assert one["transformer"] + 29 * per_block == 1_418_996_800


def test_a14b_has_two_experts_and_a_boundary_and_ti2v_expands_timesteps(
    config_dirs: dict[str, Path],
) -> None:
    a14b = config_dirs["wan2.2-t2v-a14b"]
    index = _json(a14b / "model_index.json")
    assert index["boundary_ratio"] == 0.875 and index["expand_timesteps"] is False
    assert index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    first = _json(a14b / "transformer" / "config.json")
    assert _json(a14b / "transformer_2" / "config.json") == first
    ti2v = _json(config_dirs["wan2.2-ti2v-5b"] / "model_index.json")
    assert ti2v["expand_timesteps"] is True and ti2v["transformer_2"] == [None, None]
    wan21 = _json(config_dirs["wan2.1-t2v-1.3b"] / "model_index.json")
    assert "boundary_ratio" not in wan21 and "transformer_2" not in wan21  # as published


def test_the_1_3b_directory_has_published_shapes_and_sharded_weights(small_13b: Path) -> None:
    for component, index_name in (
        ("transformer", "diffusion_pytorch_model.safetensors.index.json"),
        ("vae", "diffusion_pytorch_model.safetensors.index.json"),
        ("text_encoder", "model.safetensors.index.json"),
    ):
        index = _json(small_13b / component / index_name)
        shards = set(index["weight_map"].values())
        assert len(shards) > 1 and all((small_13b / component / s).is_file() for s in shards)
    pipe, frames, ran = _generate(small_13b, 32, 32)
    t = pipe.transformer
    assert len(t.blocks) == 2 and t.blocks[0].attn1.to_q.weight.shape == (1536, 1536)
    assert t.blocks[0].ffn.net[0].proj.weight.shape == (8960, 1536)
    assert pipe.text_encoder.shared.weight.shape == (fake_wan.SMALL_VOCAB_SIZE, 4096)
    assert pipe.text_encoder.encoder.block[0].layer[1].DenseReluDense.wi_0.weight.shape == (
        10240,
        4096,
    )
    assert {m.dtype for m in (t, pipe.text_encoder, pipe.vae)} == {torch.float32}
    assert type(pipe.tokenizer) is type(fake_wan.build_tokenizer())
    # Two steps, each a conditional and an unconditional pass of the one transformer.
    assert ran == ["transformer"] * 4
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()


def test_a_cut_depth_directory_without_videogen_json_is_still_recognised(
    small_13b: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(small_13b, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    (bare / catalog.SPEC_FILE).unlink()
    assert identify(bare) is VARIANTS["wan2.1-t2v-1.3b"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_catalog_gives_a_bare_directory_its_variant_s_defaults(
    config_dirs: dict[str, Path], name: str, tmp_path: Path
) -> None:
    bare = tmp_path / "Some-Dir"
    shutil.copytree(config_dirs[name], bare)
    (bare / catalog.SPEC_FILE).unlink()
    spec = catalog.spec_for_path(bare)
    s = VARIANTS[name].serving
    assert spec.name == "Some-Dir" and spec.path == str(bare)
    assert (spec.fps, spec.sizes, spec.default_size) == (s.fps, s.sizes, s.default_size)
    assert (spec.seconds, spec.default_seconds) == (s.seconds, s.default_seconds)
    assert (spec.default_steps, spec.guidance_scale) == (s.default_steps, s.guidance_scale)
    # The A14B's low-noise expert has its own guidance (3.0); one-transformer variants none.
    assert spec.guidance_scale_2 == s.guidance_scale_2
    assert (spec.guidance_scale_2 is None) == (name != "wan2.2-t2v-a14b")
    # Published shifts per size reach the jobs drawn at those sizes (14B: 5.0 at 720P).
    assert spec.flow_shift_by_size == tuple(s.flow_shift_by_size.items())
    if name == "wan2.1-t2v-14b":
        assert (spec.flow_shift(1280, 720), spec.flow_shift(832, 480)) == (5.0, 3.0)
    assert spec.num_frames(spec.default_seconds) in (81, 121)  # the published clip lengths


def test_an_unknown_architecture_keeps_the_wan21_fallback(
    config_dirs: dict[str, Path], tmp_path: Path
) -> None:
    bare = tmp_path / "other"
    shutil.copytree(config_dirs["wan2.1-t2v-1.3b"], bare)
    (bare / catalog.SPEC_FILE).unlink()
    config_path = bare / "transformer" / "config.json"
    config = _json(config_path)
    config["ffn_dim"] = 4096
    config_path.write_text(json.dumps(config))
    assert identify(bare) is None
    spec = catalog.spec_for_path(bare)
    assert spec.sizes == catalog.WAN_SIZES and spec.default_steps == 50
    assert spec.guidance_scale == 5.0


def test_the_catalog_still_imports_without_torch() -> None:
    code = "import sys, videogen.catalog; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_bad_arguments_name_what_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"allowed: wan2\.1-t2v-1\.3b, wan2\.1-t2v-14b"):
        fake_wan.build("wan3-t2v", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("")
    with pytest.raises(ValueError, match="not an empty directory"):
        fake_wan.build("wan2.1-t2v-1.3b", tmp_path / "full", weights=False)
    with pytest.raises(ValueError, match="vocab_size"):
        fake_wan.build("wan2.1-t2v-1.3b", tmp_path / "y", vocab_size=8, weights=False)


def test_the_cli_rejects_a_bad_variant_naming_the_allowed_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["model", "fake-wan", "--variant", "wan3-t2v", "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "wan3-t2v" in err and all(name in err for name in VARIANTS)


def test_the_cli_writes_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "a14b"
    argv = ["model", "fake-wan", "--variant", "wan2.2-t2v-a14b", "--layers", "2"]
    args = cli.build_parser().parse_args([*argv, "--out", str(out), "--configs-only"])
    assert args.func(args) == 0
    assert "transformer_2 " in capsys.readouterr().out
    assert _json(out / "transformer_2" / "config.json")["num_layers"] == 2
    assert _json(out / "text_encoder" / "config.json")["num_layers"] == 2


_LOOP_PARAMS = pipeline.GenerationParams(
    prompt="a red ball bouncing",
    negative_prompt="",
    seed=0,
    width=32,
    height=32,
    num_frames=5,
    num_inference_steps=2,
    guidance_scale=5.0,  # WanPipeline's default, and its guidance_scale_2 defaults to it
)


def _worker_loop_equals_wan_pipeline(out: Path) -> pipeline.LoadedModel:
    """Load `out` as the GPU worker does and check its loop gives WanPipeline's frames on the
    worker's own components (load_pipeline casts a bfloat16 text encoder to float32 on the
    CPU, so a pipeline loaded with the files' dtypes is not the reference)."""
    spec = dataclasses.replace(catalog.spec_for_path(out), max_sequence_length=TEST_TOKENS)
    model = pipeline.load_pipeline(spec, "cpu")
    p = _LOOP_PARAMS
    state = pipeline.prepare(model, p)
    while not state.done:
        pipeline.denoise_step(model, state)
    expected = wan_pipeline_frames(model, p)
    assert np.array_equal(pipeline.decode_float(model, state), expected)
    return model


@pytest.mark.slow
@pytest.mark.big
def test_a14b_switches_experts_at_the_boundary(tmp_path: Path) -> None:
    # One 5120-wide block per expert: 5.6 GB on disk and about as much memory loaded.
    out = tmp_path / "model"
    fake_wan.build("wan2.2-t2v-a14b", out, layers=1, vocab_size=fake_wan.SMALL_VOCAB_SIZE)
    pipe, frames, ran = _generate(out, 32, 32)
    assert pipe.text_encoder.dtype == torch.bfloat16 and pipe.transformer.dtype == torch.float32
    # Flow shift 3: the first of 2 steps is above t = 875 (high-noise expert), the second below.
    assert ran == ["transformer", "transformer", "transformer_2", "transformer_2"]
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()
    del pipe
    model = _worker_loop_equals_wan_pipeline(out)
    assert model.spec.guidance_scale_2 == 3.0 and model.boundary_timestep == 875.0
    state = pipeline.prepare(model, _LOOP_PARAMS)
    assert [model.expert(t).value for t in state.timesteps] == ["transformer", "transformer_2"]


@pytest.mark.slow
@pytest.mark.big
def test_ti2v_5b_runs_with_expanded_timesteps(tmp_path: Path) -> None:
    # 48-channel VAE (2.8 GB in float32) and one 3072-wide block: 4.2 GB on disk.
    out = tmp_path / "model"
    fake_wan.build("wan2.2-ti2v-5b", out, layers=1, vocab_size=fake_wan.SMALL_VOCAB_SIZE)
    pipe, frames, ran = _generate(out, 32, 32)
    assert pipe.config.expand_timesteps and pipe.vae.config.z_dim == 48
    assert ran == ["transformer"] * 4
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()
    del pipe
    model = _worker_loop_equals_wan_pipeline(out)
    assert model.size_multiple == 32  # the 16x VAE times the 1x2x2 patch
