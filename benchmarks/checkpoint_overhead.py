"""What checkpointing costs the denoising loop: ms per step of the same job with a checkpoint
never, every N steps and every step (written in the background, the activity's way), and every
step written synchronously (what each checkpoint would cost if it blocked the loop).

    .venv/bin/python benchmarks/checkpoint_overhead.py [--size 256x256] [--frames 17]
        [--steps 20] [--every 5] [--repeats 5] [--storage-url file:///tmp/x]

The modes run interleaved (one run of each per round, the order rotating between rounds), so a
machine that gets slower or faster during the benchmark (other load, CPU boost) shifts every
mode alike; each mode's figure is the median over the rounds, its ratio to `never` the median
of the per-round ratios.
Figures depend on the machine: compare runs on the same one. `python -m benchmarks` calls
`measure` and writes the figures to the results file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from activities import checkpoint, pipeline
from activities.checkpoint import CheckpointWriter
from videogen import catalog, logs
from videogen.checkpoint_policy import CheckpointPolicy
from videogen.storage import ObjectStore, open_store

# In the order of the table; `every_n` takes its N from the caller.
MODES = ("never", "every_n", "every_step", "every_step_sync")


@dataclass
class Result:
    """Seconds per denoising step of each run of each mode, and what was checkpointed."""

    size: str
    frames: int
    steps: int
    every: int
    device: str
    store: str
    per_step_s: dict[str, list[float]] = field(default_factory=dict)
    checkpoints: dict[str, list[int]] = field(default_factory=dict)
    checkpoint_bytes: int = 0

    def median_ms(self, mode: str) -> float:
        return statistics.median(self.per_step_s[mode]) * 1000

    def ratio(self, mode: str) -> float:
        """Time per step of `mode` over that of `never` in the same round, median over the
        rounds (1.0: no overhead). Pairs within a round cancel slow drifts of the machine."""
        return statistics.median(
            m / n for m, n in zip(self.per_step_s[mode], self.per_step_s["never"], strict=True)
        )


def _loop(
    model: pipeline.LoadedModel,
    params: pipeline.GenerationParams,
    after_step: Callable[[pipeline.DenoiseState, float], None],
) -> float:
    """One denoising run; `after_step(state, now)` after each step. Seconds per step."""
    state = pipeline.prepare(model, params)
    started = time.perf_counter()
    while not state.done:
        pipeline.denoise_step(model, state)
        after_step(state, time.monotonic())
    return (time.perf_counter() - started) / state.total_steps


def run_mode(
    mode: str,
    every: int,
    model: pipeline.LoadedModel,
    params: pipeline.GenerationParams,
    store: ObjectStore,
) -> tuple[float, int, int]:
    """One run of `mode`: (seconds per step, checkpoints written, bytes of one checkpoint)."""
    writer = CheckpointWriter(store, model, job_id="video_bench", attempt=1)

    def snap(state: pipeline.DenoiseState) -> checkpoint.Snapshot:
        return checkpoint.snapshot(state, job_id="video_bench", attempt=1, device=model.device)

    if mode == "never":
        per_step = _loop(model, params, lambda s, now: None)
    elif mode == "every_step_sync":
        per_step = _loop(model, params, lambda s, now: writer.write(snap(s)))
    else:
        # As the activity's loop does (activities/diffusion.py): ask the policy after each step,
        # and skip a due checkpoint while the previous upload is still in flight.
        policy = CheckpointPolicy(mode="steps", every_steps=1 if mode == "every_step" else every)
        last = {"step": 0, "at": time.monotonic()}

        def after(state: pipeline.DenoiseState, now: float) -> None:
            if not writer.busy and policy.due(
                steps_since=state.next_step - last["step"],
                seconds_since=now - last["at"],
                cost_s=writer.stats.cost_s,
            ):
                writer.submit(snap(state))
                last.update(step=state.next_step, at=now)

        per_step = _loop(model, params, after)
        # The upload in flight at the end still belongs to this run's cost, but not to the
        # loop's: the activity drains it while the VAE decodes. Drain outside the timing.
    writer.drain()
    writer.close()
    written = writer.stats.written
    return per_step, written, writer.stats.bytes // max(written, 1)


def measure(
    *,
    size: str = "256x256",
    frames: int = 17,
    steps: int = 20,
    every: int = 5,
    repeats: int = 5,
    storage_url: str = "",
    modes: tuple[str, ...] = MODES,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Run every mode `repeats` times, interleaved, on the tiny model in this process."""
    width, height = (int(v) for v in size.split("x"))
    model = pipeline.load_pipeline(catalog.TINY_SPEC, pipeline.pick_device())
    params = pipeline.GenerationParams(
        prompt="a lighthouse in a storm",
        negative_prompt="",
        seed=1,
        width=width,
        height=height,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=5.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(storage_url or f"file://{tmp}")
        result = Result(
            size=size,
            frames=frames,
            steps=steps,
            every=every,
            device=model.device,
            store=store.describe(),
            per_step_s={m: [] for m in modes},
            checkpoints={m: [] for m in modes},
        )
        # A warm-up run: the first run of a process pays for allocations and lazy init.
        _loop(model, params, lambda s, now: None)
        for r in range(repeats):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            for mode in order:
                per_step, written, size_b = run_mode(mode, every, model, params, store)
                result.per_step_s[mode].append(per_step)
                result.checkpoints[mode].append(written)
                result.checkpoint_bytes = max(result.checkpoint_bytes, size_b)
            if progress:
                progress(
                    f"round {r + 1}/{repeats}: "
                    + ", ".join(f"{m} {result.per_step_s[m][-1] * 1000:.1f} ms/step" for m in modes)
                )
    return result


def describe(mode: str, every: int) -> str:
    return {
        "never": "never",
        "every_n": f"every {every} steps, background",
        "every_step": "every step, background",
        "every_step_sync": "every step, synchronous",
    }[mode]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=5, help="N of the every-N-steps mode")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--storage-url", default="")
    args = ap.parse_args(argv)
    logs.configure("WARNING")
    r = measure(
        size=args.size,
        frames=args.frames,
        steps=args.steps,
        every=args.every,
        repeats=args.repeats,
        storage_url=args.storage_url,
    )
    print(
        f"tiny model, {r.size}, {r.frames} frames, {r.steps} steps, device {r.device}, "
        f"checkpoint ~{r.checkpoint_bytes / 1e6:.2f} MB, store {r.store}, "
        f"{args.repeats} interleaved rounds"
    )
    for mode in r.per_step_s:
        print(
            f"  checkpoint {describe(mode, r.every):>26}: {r.median_ms(mode):7.2f} ms/step "
            f"(x{r.ratio(mode):.3f}, {statistics.median(r.checkpoints[mode]):g} checkpoints)"
        )


if __name__ == "__main__":
    main()
