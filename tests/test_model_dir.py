"""A directory the GPU worker cannot serve fails at load (at worker start), before any weights
are read, with a message naming the missing file or the mismatched field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from activities import model_dir, pipeline
from activities.model_dir import ModelDirError
from videogen import catalog

ROOT = Path(__file__).resolve().parents[1]


def _copy(tmp_path: Path) -> Path:
    assert catalog.TINY_SPEC.path is not None
    out = tmp_path / "model"
    shutil.copytree(catalog.TINY_SPEC.path, out)
    return out


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _check(path: Path) -> None:
    model_dir.check(catalog.spec_for_path(str(path)))


def test_the_built_in_model_and_a_copy_of_it_pass(tmp_path: Path) -> None:
    model_dir.check(catalog.TINY_SPEC)
    _check(_copy(tmp_path))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "model_index.json").unlink(), r"model_index\.json: missing"),
        (lambda d: (d / "vae" / "config.json").unlink(), r"vae/config\.json: missing"),
        (
            lambda d: (d / "transformer" / "diffusion_pytorch_model.safetensors").unlink(),
            r"transformer: no weights",
        ),
        (
            lambda d: _edit(d / "model_index.json", lambda i: i.update(_class_name="FluxPipeline")),
            "_class_name is 'FluxPipeline'; only WanPipeline",
        ),
        (
            lambda d: _edit(d / "model_index.json", lambda i: i.pop("text_encoder")),
            "no 'text_encoder' component",
        ),
        (
            lambda d: _edit(d / "transformer" / "config.json", lambda c: c.update(in_channels=8)),
            r"transformer/config\.json: in_channels is 8, but vae/config\.json's z_dim is 16",
        ),
        (
            lambda d: _edit(d / "transformer" / "config.json", lambda c: c.update(text_dim=32)),
            "text_dim is 32, but text_encoder/config.json's d_model is 64",
        ),
        (
            lambda d: (d / "scheduler" / "scheduler_config.json").write_text("{not json"),
            r"scheduler_config\.json: unreadable",
        ),
    ],
    ids=[
        "no-index",
        "no-vae-config",
        "no-weights",
        "not-wan",
        "no-text-encoder",
        "channels",
        "text-width",
        "bad-json",
    ],
)
def test_a_broken_directory_is_refused_naming_what_is_wrong(
    tmp_path: Path, breakage: Callable[[Path], None], message: str
) -> None:
    path = _copy(tmp_path)
    breakage(path)
    with pytest.raises(ModelDirError, match=message):
        _check(path)


def test_mismatched_experts_are_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    shutil.copytree(path / "transformer", path / "transformer_2")
    _edit(path / "model_index.json", lambda i: i.update(transformer_2=["diffusers", "X"]))
    _edit(path / "transformer_2" / "config.json", lambda c: c.update(patch_size=[1, 2, 2]))
    with pytest.raises(ModelDirError, match=r"transformer_2/config\.json: patch_size is"):
        _check(path)


def test_a_second_guidance_for_one_transformer_is_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    _edit(path / catalog.SPEC_FILE, lambda s: s["serving"].update(guidance_scale_2=3.0))
    with pytest.raises(ModelDirError, match="guidance_scale_2 is set but the model has one"):
        _check(path)


def test_a_size_the_model_cannot_draw_is_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    _edit(path / catalog.SPEC_FILE, lambda s: s["serving"].update(render_size="40x40"))
    with pytest.raises(ModelDirError, match="size '40x40' is not a multiple of 16"):
        _check(path)


def test_load_pipeline_refuses_before_reading_weights(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    _edit(path / "vae" / "config.json", lambda c: c.update(z_dim=48))
    with pytest.raises(ModelDirError, match="z_dim is 48"):
        pipeline.load_pipeline(catalog.spec_for_path(str(path)), "cpu")


@pytest.mark.slow
def test_the_gpu_worker_exits_at_start_with_the_message(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    (path / "tokenizer" / "tokenizer_config.json").unlink()
    env = {**os.environ, "VIDEOGEN_MODEL": str(path), "TEMPORAL_ADDRESS": "127.0.0.1:9"}
    out = subprocess.run(
        [sys.executable, "-m", "videogen.cli", "worker", "gpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "tokenizer/tokenizer_config.json: missing" in out.stdout + out.stderr
