"""What checkpointing costs the denoising loop: prints ms per step without checkpoints, with a
checkpoint every step written in the background (the activity's way), and written synchronously.

    .venv/bin/python benchmarks/checkpoint_overhead.py [--size 256x256] [--frames 17]
        [--steps 30] [--storage-url file:///tmp/x]

Every-step checkpoints are the worst case; a real policy writes far less often. Figures depend
on the machine: compare runs on the same one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

from activities import checkpoint, pipeline
from activities.checkpoint import CheckpointWriter
from videogen import catalog, logs
from videogen.storage import open_store


def _loop(model: pipeline.LoadedModel, params: pipeline.GenerationParams,
          after_step: Callable[[pipeline.DenoiseState], None]) -> float:
    state = pipeline.prepare(model, params)
    started = time.perf_counter()
    while not state.done:
        pipeline.denoise_step(model, state)
        after_step(state)
    return (time.perf_counter() - started) / state.total_steps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--storage-url", default="")
    args = ap.parse_args(argv)
    logs.configure("WARNING")
    width, height = (int(v) for v in args.size.split("x"))
    model = pipeline.load_pipeline(catalog.TINY_SPEC, pipeline.pick_device())
    params = pipeline.GenerationParams(prompt="a lighthouse in a storm", negative_prompt="",
                                       seed=1, width=width, height=height,
                                       num_frames=args.frames, num_inference_steps=args.steps,
                                       guidance_scale=5.0)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(args.storage_url or f"file://{tmp}")

        def snap(state: pipeline.DenoiseState) -> checkpoint.Snapshot:
            return checkpoint.snapshot(state, job_id="video_bench", attempt=1,
                                       device=model.device)

        results: dict[str, list[float]] = {"none": [], "background": [], "synchronous": []}
        sizes: list[int] = []
        for _ in range(args.repeats):
            results["none"].append(_loop(model, params, lambda s: None))

            writer = CheckpointWriter(store, model, job_id="video_bench", attempt=1)
            results["background"].append(_loop(
                model, params, lambda s, w=writer: None if w.busy else w.submit(snap(s))))
            writer.drain()
            writer.close()
            sizes.append(writer.stats.bytes // max(writer.stats.written, 1))

            sync = CheckpointWriter(store, model, job_id="video_bench", attempt=1)
            results["synchronous"].append(_loop(model, params, lambda s, w=sync: w.write(snap(s))))
            sync.close()

    base = statistics.median(results["none"])
    print(f"tiny model, {args.size}, {args.frames} frames, {args.steps} steps, "
          f"device {model.device}, checkpoint ~{statistics.median(sizes) / 1e6:.2f} MB, "
          f"store {store.describe()}")
    for name, values in results.items():
        ms = statistics.median(values) * 1000
        print(f"  checkpoint every step, {name:>11}: {ms:7.2f} ms/step "
              f"({(statistics.median(values) / base - 1) * 100:+5.1f} %)")


if __name__ == "__main__":
    main()
