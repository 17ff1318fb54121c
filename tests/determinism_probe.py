"""Run in a fresh process by tests/test_determinism.py: encode or generate, print the hashes.

    python tests/determinism_probe.py encode DIR          # every DIR/*.npy -> sha256 of its MP4
    python tests/determinism_probe.py generate JOBS.json  # each job -> sha256 of its frames

`generate` prints "loaded" once its imports are done and waits for a line on stdin before it
reads JOBS.json, so a caller can start its CPU load (or write the file) in between.

A generate job is a request body as tests/helpers.py takes it ({"size": "WxH", "seed": n,
"seconds": 1, "num_inference_steps": n}) plus, optionally,
"checkpoint_at": k and "checkpoint": path (write the state after step k there, then go on), or
"resume": path (restore that checkpoint and finish from it, as a retried GPU attempt does).
The last line of output is JSON: {file name or job index: sha256}.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from helpers import generation_params  # this file's folder is on sys.path

FPS = 8


def encode(directory: Path) -> dict[str, str]:
    from activities import media

    return {
        path.name: hashlib.sha256(
            media.encode_mp4(media.frames_from_bytes(path.read_bytes()), FPS)
        ).hexdigest()
        for path in sorted(directory.glob("*.npy"))
    }


def run_job(model: Any, job: dict[str, Any]) -> str:
    import torch

    from activities import checkpoint, media, pipeline

    params = generation_params(job)
    if "resume" in job:
        ckpt = checkpoint.decode(Path(job["resume"]).read_bytes())
        warnings = checkpoint.check_compatible(
            ckpt, model, params, job_id="probe", num_threads=torch.get_num_threads()
        )
        assert not warnings, warnings
        state = checkpoint.restore(model, ckpt, params)
    else:
        state = pipeline.prepare(model, params)
    while not state.done:
        pipeline.denoise_step(model, state)
        if state.next_step == job.get("checkpoint_at"):
            snap = checkpoint.snapshot(state, job_id="probe", attempt=1, device=model.device)
            Path(job["checkpoint"]).write_bytes(checkpoint.encode(snap, model))
    return media.frames_sha256(pipeline.decode(model, state))


def generate(jobs_file: Path) -> dict[str, str]:
    from activities import pipeline
    from videogen import catalog

    model = pipeline.load_pipeline(catalog.TINY_SPEC, "cpu")
    # Imports are done: the caller may now start its CPU load, then says "go" on stdin.
    print("loaded", flush=True)
    sys.stdin.readline()
    jobs = json.loads(jobs_file.read_text())
    return {str(i): run_job(model, job) for i, job in enumerate(jobs)}


if __name__ == "__main__":
    mode, arg = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(encode(arg) if mode == "encode" else generate(arg)))
