"""The built-in model as a product: its committed directory and the spec it states, the
training script (a few steps of every stage, in a fresh directory, loaded back through the
service's own loading path), the encode-time upscale, and the adherence report's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import generation_params

from activities import media, pipeline
from videogen import catalog
from videogen.tiny import evaluate, train


def test_the_built_in_model_is_a_small_committed_diffusers_directory() -> None:
    root = catalog.TINY_DIR
    assert catalog.TINY_SPEC.path == str(root)
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    weights = sum(p.stat().st_size for p in root.rglob("*.safetensors"))
    assert weights <= 10 * 2**20, f"{weights} bytes of weights: over the ~10 MB budget"


def test_the_built_in_model_states_its_spec() -> None:
    spec = catalog.TINY_SPEC
    assert spec.name == catalog.TINY_MODEL and spec.render_size == "64x64"
    assert spec.default_size in spec.sizes and spec.default_seconds in spec.seconds
    assert spec.generated_dims("256x256") == (64, 64)
    assert spec.max_sequence_length < 512
    stated = json.loads((catalog.TINY_DIR / catalog.SPEC_FILE).read_text())
    assert "ball" in stated["description"]


def test_a_directory_without_videogen_json_gets_wan_s_spec(tmp_path: Path) -> None:
    spec = catalog.spec_for_path(tmp_path, "wan")
    assert spec.render_size is None and spec.generated_dims("832x480") == (832, 480)
    assert spec.max_sequence_length == 512 and spec.fps == 16


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "unreadable"), ('{"name": "x"}', "'serving'"), ('{"serving": {}}', "bad")],
)
def test_a_broken_videogen_json_is_a_clear_error(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / catalog.SPEC_FILE).write_text(content)
    with pytest.raises(ValueError, match=message):
        catalog.spec_for_path(tmp_path)


def test_scale_frames_keeps_or_scales_deterministically() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert media.scale_frames(frames, 64, 64) is frames
    big = media.scale_frames(frames, 256, 128)
    assert big.shape == (3, 128, 256, 3) and big.dtype == np.uint8
    assert np.array_equal(big, media.scale_frames(frames, 256, 128))
    with pytest.raises(ValueError, match="width and height"):
        media.scale_frames(frames, 0, 64)


@pytest.mark.slow
def test_training_quick_writes_a_directory_the_service_loads(tmp_path: Path) -> None:
    out = tmp_path / "model"
    train.main(["--quick", "--out", str(out), "--set", "seed=3"])
    spec = catalog.spec_for_path(out, "videogen-tiny")
    assert spec.render_size == "64x64" and spec.fps == 8
    stated = json.loads((out / catalog.SPEC_FILE).read_text())
    assert stated["training"]["seed"] == 3 and stated["training"]["config"]["vae_steps"] == 5
    model = pipeline.load_pipeline(spec, "cpu")
    params = generation_params(
        {"prompt": "a red ball moving left", "seed": 1, "num_inference_steps": 2}
    )
    assert pipeline.generate(model, params).shape == (9, 64, 64, 3)


def test_training_refuses_an_unknown_setting() -> None:
    with pytest.raises(SystemExit):
        train.main(["--quick", "--set", "no_such_field=1"])


def test_evaluation_writes_its_report_and_contact_sheet(tmp_path: Path) -> None:
    report = evaluate.evaluate(2, tmp_path, sheet_rows=2)
    saved = json.loads((tmp_path / "adherence.json").read_text())
    assert saved["prompts"] == 2 and len(saved["results"]) == 2
    assert set(saved["accuracy"]) == {"colour", "shape", "motion"}
    assert report["accuracy"] == saved["accuracy"]
    from PIL import Image

    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.size[0] == 17 * 64 * 2  # every frame of a default clip, twice enlarged
