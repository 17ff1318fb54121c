"""Prompt adherence of the built-in model, measured (`make eval-tiny`, and `make bench`'s
`adherence` section).

Held-out prompts (combinations of colour, shape and motion, and phrasings, that training never
saw) go through the service's own generation code (`activities.pipeline`: the model loaded
from its directory, the resumable denoising loop, the decode) at the model's default steps and
guidance; the judge (`videogen.tiny.judge`) reads colour, shape and motion back from the
frames. Writes `adherence.json` (accuracy per attribute, and every prompt's verdict) and
`contact_sheet.png` (8 prompts, one row of frames each).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from activities import pipeline
from videogen import catalog
from videogen.tiny import world
from videogen.tiny.judge import judge

DEFAULT_OUT = Path("benchmarks/results/tiny")
ATTRIBUTES = ("colour", "shape", "motion")
# Targets the built-in model is held to (colour and motion; shape is reported).
TARGETS = {"colour": 0.9, "motion": 0.8}


@dataclass(frozen=True)
class Case:
    clip: world.ClipSpec
    prompt: str
    seed: int


def cases(n: int, seed: int = 1) -> list[Case]:
    """`n` held-out prompts, each with its own generation seed."""
    rng = np.random.default_rng([seed, 7])
    return [
        Case(clip, world.prompt_for(clip, rng), 1000 + i)
        for i, clip in enumerate(world.held_out_clips(n, seed))
    ]


def generate(model: pipeline.LoadedModel, prompt: str, seed: int) -> np.ndarray:
    """The frames a default job of this prompt renders (before any encode-time upscale)."""
    spec = model.spec
    width, height = spec.generated_dims(spec.default_size)
    params = pipeline.GenerationParams(
        prompt=prompt,
        negative_prompt="",
        width=width,
        height=height,
        num_frames=spec.num_frames(spec.default_seconds),
        num_inference_steps=spec.default_steps,
        guidance_scale=spec.guidance_scale,
        seed=seed,
    )
    return pipeline.generate(model, params)


def evaluate(n: int, out: Path, sheet_rows: int = 8) -> dict[str, object]:
    spec = catalog.TINY_SPEC
    model = pipeline.load_pipeline(spec, "cpu")
    started = time.monotonic()
    rows: list[tuple[str, np.ndarray]] = []
    results: list[dict[str, object]] = []
    hits = dict.fromkeys(ATTRIBUTES, 0)
    for case in cases(n):
        frames = generate(model, case.prompt, case.seed)
        verdict = judge(frames)
        row = {"prompt": case.prompt, "seed": case.seed}
        for attr in ATTRIBUTES:
            want, got = getattr(case.clip, attr), getattr(verdict, attr)
            hits[attr] += want == got
            row[attr] = {"want": str(want), "got": None if got is None else str(got)}
        results.append(row)
        if len(rows) < sheet_rows:
            rows.append((case.prompt, frames))
    accuracy = {attr: hits[attr] / n for attr in ATTRIBUTES}
    # What each asked-for value was read as: where the model (or its VAE) goes wrong.
    confusion: dict[str, dict[str, dict[str, int]]] = {attr: {} for attr in ATTRIBUTES}
    for row in results:
        for attr in ATTRIBUTES:
            cell = row[attr]
            assert isinstance(cell, dict)
            counts = confusion[attr].setdefault(str(cell["want"]), {})
            got = str(cell["got"])
            counts[got] = counts.get(got, 0) + 1
    report = {
        "model": spec.name,
        "prompts": n,
        "size": "x".join(map(str, spec.generated_dims(spec.default_size))),
        "num_frames": spec.num_frames(spec.default_seconds),
        "steps": spec.default_steps,
        "guidance_scale": spec.guidance_scale,
        "accuracy": accuracy,
        "targets": TARGETS,
        "confusion": confusion,
        "seconds_per_video": round((time.monotonic() - started) / n, 3),
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "adherence.json").write_text(json.dumps(report, indent=2) + "\n")
    contact_sheet(rows).save(out / "contact_sheet.png")
    return report


def contact_sheet(rows: list[tuple[str, np.ndarray]], scale: int = 2) -> Image.Image:
    """One row per prompt: its text, then every frame, each `scale` times enlarged."""
    _, h, w, _ = rows[0][1].shape
    frames = max(len(f) for _, f in rows)
    label_h = 14
    sheet = Image.new("RGB", (frames * w * scale, len(rows) * (h * scale + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (prompt, video) in enumerate(rows):
        top = r * (h * scale + label_h)
        draw.text((2, top + 1), prompt, fill="black")
        for i, frame in enumerate(video):
            tile = Image.fromarray(frame).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            sheet.paste(tile, (i * w * scale, top + label_h))
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report = evaluate(args.prompts, args.out)
    acc = report["accuracy"]
    assert isinstance(acc, dict)
    for attr in ATTRIBUTES:
        target = TARGETS.get(attr)
        goal = f" (target {target:.0%})" if target else ""
        print(f"{attr}: {acc[attr]:.0%}{goal}")
    print(f"wrote {args.out / 'adherence.json'} and {args.out / 'contact_sheet.png'}")


if __name__ == "__main__":
    main()
