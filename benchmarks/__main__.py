"""Run the service benchmarks and write results.json and results.md (`make bench`).

    python -m benchmarks [--quick] [--only pickup,recovery] [--out benchmarks/results]

Each benchmark prints its figures as it goes. The results files are rewritten after each one,
so an interrupted run keeps what it measured. Never part of `make test`: the figures are
measurements, not assertions. A benchmark that fails is recorded as such and the others run;
the exit code is then 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks import priority, results, service
from benchmarks.results import Benchmark
from benchmarks.service import Driver, Runs

NAMES = (
    "adherence",
    "checkpoint",
    "pickup",
    "overhead",
    "cancel",
    "admission",
    "recovery",
    "priority",
)
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

DEFAULT_STACK = (
    "embedded stack (SQLite-backed Temporal dev server, API, CPU worker, "
    "1 GPU worker on the CPU), default settings except rate limits"
)
PREEMPTION_STACK = (
    "embedded stack with 2 GPU workers (1 standby), VIDEOGEN_CHECKPOINT_POLICY="
    "steps, _EVERY_STEPS=4, _HEARTBEAT_TIMEOUT_S=3, _PROGRESS_INTERVAL_S=0.1, "
    "_GRACEFUL_SHUTDOWN_S=30"
)

TITLES = {
    "adherence": "Prompt adherence of the built-in model",
    "checkpoint": "Checkpoint overhead",
    "pickup": "Pickup latency (idle GPU worker)",
    "overhead": "Orchestration overhead per job",
    "cancel": "Cancel latency",
    "admission": "Admission throughput",
    "recovery": "Recovery after SIGTERM / SIGKILL of the GPU worker",
    "priority": "Paid queue wait behind free renders, with and without priority preemption",
}

METHODS = {
    "adherence": (
        "Held-out prompts of the built-in model's world (combinations of colour, shape and "
        "motion, and phrasings, never seen in training), each generated in this process "
        "through the service's denoising loop at the model's default length, steps and "
        "guidance, at its native 64x64; the judge (videogen.tiny.judge) reads colour (dominant "
        "non-background colour), shape and motion (centroid track) from the frames. Accuracy: "
        "the fraction of prompts whose attribute the judge reads as asked. Same as "
        "`make eval-tiny`, which also writes the contact sheet."
    ),
    "checkpoint": (
        "The GPU activity's denoising loop in this process (tiny model, same job each time): "
        "ms per step with a checkpoint never, every N steps and every step (snapshot between "
        "steps, serialised and written to a file:// store on a background thread, skipped "
        "while the previous write is in flight, as the activity does), and every step written "
        "synchronously. Modes interleaved, one run of each per round (order rotating); ms per "
        "step: median over rounds; ratio: median of the per-round ratios to `never`."
    ),
    "pickup": (
        "Short jobs one after the other, each POSTed 0.5 s after the previous one completed, "
        "so the GPU worker is idle and polling. From the client's clock just before "
        "POST /v1/videos to the start time of the `generate_video` activity in the workflow "
        "history (the server's clock, same machine). The stack's first job is not counted."
    ),
    "overhead": (
        "The same runs as the pickup latency. End to end: POST sent → the first GET after the "
        "workflow closed says `completed` (the close is awaited with a long poll on the "
        "workflow result, so no polling interval is added). Time in the model: the GPU "
        "activity's own `generation_seconds` (denoising, VAE decode, frames upload). Overhead "
        "= end to end − model: API, Temporal scheduling, progress signals, the MP4 encode and "
        "cleanup on the CPU worker (the encode activity's own time is shown apart)."
    ),
    "cancel": (
        "A long job denoises on the single GPU worker; a short job is queued behind it; then "
        "POST /v1/videos/{id}/cancel for the long one, at a random point 0.5-1.5 s into its "
        "denoising. Times from the cancel request (client clock) to the history's "
        "ActivityTaskCanceled (the worker stopped at a step boundary and reported it) and to "
        "the queued job's ActivityTaskStarted (the GPU worker is free and took the next job). "
        "Cancellation reaches the activity in a heartbeat response; heartbeats go out at most "
        "every VIDEOGEN_HEARTBEAT_THROTTLE_S (1 s)."
    ),
    "admission": (
        "Closed loop: concurrent HTTP clients (one connection each, in the benchmark process "
        "on the same 2 cores) POST /v1/videos back to back for a fixed time after a 1 s "
        "warm-up. The jobs go to a dedicated pool no GPU worker serves, so they stay queued and "
        "no denoising competes for the CPU; each still starts a workflow and its first workflow "
        "task runs on the CPU worker. Once with a tier without limits, once with limits so high "
        "they never bite but are checked (4 visibility counts per POST). For reference, the same "
        "concurrency of bare workflow starts (Temporal client → dev server, no API)."
    ),
    "recovery": (
        "A job runs on one of two GPU workers; once it has denoised 16 steps, the worker "
        "running it gets SIGTERM (graceful: checkpoint at the next step boundary, hand over at "
        "once) or SIGKILL (noticed at the heartbeat timeout, counted from the last heartbeat, "
        "then the retry policy's 1 s backoff). From the signal (client clock) to the log line "
        "the retried attempt on the standby worker writes after its first step (same clock). "
        "The breakdown comes from the workers' log lines. Steps lost: the step the killed "
        "attempt had reached minus the step the retry resumed from; at least: its last "
        "progress signal's step (they come every 0.1 s); estimated: that plus its step rate "
        "times the time from that signal to the kill. `wasted_steps` is what the API reports. "
        "The killed worker is restarted and has loaded its model before the next run; the "
        "signals alternate."
    ),
    "priority": (
        "One GPU worker kept busy by free renders (priority 4, may yield, min_run_s 1 s), two "
        "always queued behind the running one. Paid jobs (priority 2) arrive one at a time, "
        "1-4 s apart, in alternating rounds of two tiers on the same GPU queue: one with "
        "max_wait_s 1 s (preemption), one without. Wait: the paid job's GPU attempt start "
        "minus its workflow start (server times). Yield costs from the GPU worker's log lines: "
        "hand-over, from reading the request to the attempt's end (it finishes and keeps the "
        "step in flight, then writes a checkpoint); resume, from the next attempt's start to "
        "its first step done (restore plus one step). Both are upper bounds of the GPU time "
        "a yield loses."
    ),
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="a smoke run: few runs of each (about 2 minutes)"
    )
    ap.add_argument(
        "--only", default="", help=f"comma-separated benchmarks to run, of: {', '.join(NAMES)}"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="directory of results.json and results.md (default: benchmarks/results)",
    )
    ap.add_argument("--pickup-runs", type=int, help="jobs of the pickup/overhead runs (60)")
    ap.add_argument("--cancel-runs", type=int, help="cancels (10)")
    ap.add_argument("--recovery-runs", type=int, help="runs per signal (5)")
    ap.add_argument("--admission-seconds", type=float, help="seconds per variant (15)")
    ap.add_argument("--admission-clients", type=int, help="concurrent clients (8)")
    ap.add_argument("--checkpoint-rounds", type=int, help="interleaved rounds (7)")
    ap.add_argument("--checkpoint-every", type=int, default=5, help="N of every N steps (5)")
    return ap


def _runs(args: argparse.Namespace) -> tuple[Runs, int]:
    runs = (
        Runs(pickup=10, cancel=3, recovery=1, admission_seconds=5, admission_clients=8, priority=1)
        if args.quick
        else Runs()
    )
    if args.pickup_runs:
        runs.pickup = args.pickup_runs
    if args.cancel_runs:
        runs.cancel = args.cancel_runs
    if args.recovery_runs:
        runs.recovery = args.recovery_runs
    if args.admission_seconds:
        runs.admission_seconds = args.admission_seconds
    if args.admission_clients:
        runs.admission_clients = args.admission_clients
    rounds = args.checkpoint_rounds or (2 if args.quick else 7)
    return runs, rounds


class Runner:
    """Runs benchmarks one by one: header, timing, a failure recorded (not raised), and the
    results files rewritten after each."""

    def __init__(self, out: Path, meta: dict[str, Any], benches: dict[str, Benchmark]) -> None:
        self.out, self.meta, self.benches = out, meta, benches
        self.started = time.monotonic()

    def save(self) -> None:
        self.meta["total_seconds"] = time.monotonic() - self.started
        results.write(self.out, self.meta, list(self.benches.values()))

    def _begin(self, bench: Benchmark) -> float:
        print(f"\n== {bench.title} ==", flush=True)
        return time.monotonic()

    def _end(self, bench: Benchmark, t0: float, err: Exception | None) -> None:
        if err is not None:  # one failed benchmark must not lose the others' figures
            traceback.print_exception(err)
            bench.error = f"{type(err).__name__}: {err}"
        bench.seconds = time.monotonic() - t0
        # The machine may be shared: say how busy it was (other processes than the stack too).
        bench.config["load average (1 min) at the end"] = f"{os.getloadavg()[0]:.2f}"
        self.save()

    def run(self, bench: Benchmark, fn: Callable[[], None]) -> None:
        t0, err = self._begin(bench), None
        try:
            fn()
        except Exception as e:
            err = e
        self._end(bench, t0, err)

    async def run_async(self, bench: Benchmark, fn: Callable[[], Awaitable[None]]) -> None:
        t0, err = self._begin(bench), None
        try:
            await fn()
        except Exception as e:
            err = e
        self._end(bench, t0, err)

    def on_stack(
        self,
        names: list[str],
        gpu_workers: int,
        env: dict[str, str],
        plan: Callable[[Driver], list[tuple[Benchmark, Callable[[], Awaitable[None]]]]],
    ) -> None:
        """Start a stack, run the planned benchmarks on it, stop it."""
        benches = [self.benches[n] for n in names if n in self.benches]
        if not benches:
            return
        for b in benches:
            b.config["stack"] = DEFAULT_STACK if gpu_workers == 1 else PREEMPTION_STACK
        print(
            f"\n(starting a stack with {gpu_workers} GPU worker(s) for "
            f"{', '.join(b.name for b in benches)})",
            flush=True,
        )
        try:
            with service.running_stack(gpu_workers, env) as stack:

                async def on_it() -> None:
                    async with service.driver(stack) as d:
                        for bench, fn in plan(d):
                            await self.run_async(bench, fn)

                asyncio.run(on_it())
        except Exception as err:
            traceback.print_exception(err)
            for b in benches:
                if not b.figures and not b.error:
                    b.error = f"the stack failed: {type(err).__name__}: {err}"
            self.save()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    selected = [n.strip() for n in args.only.split(",") if n.strip()] or list(NAMES)
    unknown = [n for n in selected if n not in NAMES]
    if unknown:
        _parser().error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}"
        )
    from videogen import logs

    logs.configure("WARNING")
    runs, rounds = _runs(args)
    meta = results.machine_info()
    print(
        f"videogen benchmarks, {meta['date']}: {meta['cpu']}, {meta['cores']} cores, "
        f"load {meta['load_average_at_start']}, commit {meta['git_commit']}",
        flush=True,
    )
    benches = {
        name: Benchmark(name, TITLES[name], METHODS[name]) for name in NAMES if name in selected
    }
    runner = Runner(args.out, meta, benches)

    if "adherence" in benches:
        bench = benches["adherence"]
        runner.run(bench, lambda: _adherence(bench, args.out / "tiny", 16 if args.quick else 60))
    if "checkpoint" in benches:
        bench = benches["checkpoint"]
        runner.run(bench, lambda: _checkpoint(bench, rounds, args.checkpoint_every, args.quick))
    runner.on_stack(
        ["pickup", "overhead", "cancel", "admission"],
        1,
        {},
        lambda d: _default_plan(d, benches, runs),
    )
    if "pickup" in benches and "overhead" in benches:  # one series of runs gave both
        benches["overhead"].seconds = benches["pickup"].seconds
        benches["overhead"].config.update(benches["pickup"].config)
    runner.on_stack(
        ["recovery"],
        2,
        service.PREEMPTION,
        lambda d: [
            (benches["recovery"], lambda: service.recovery(d, runs.recovery, benches["recovery"]))
        ],
    )
    runner.on_stack(
        ["priority"],
        1,
        priority.ENV,
        lambda d: [
            (benches["priority"], lambda: priority.priority(d, runs.priority, benches["priority"]))
        ],
    )
    if "priority" in benches:
        benches["priority"].config["stack"] = "embedded stack, 1 GPU worker, " + priority.CONFIG
        runner.save()
    runner.save()
    failed = [b.name for b in benches.values() if b.error]
    print(
        f"\nwrote {args.out / 'results.json'} and {args.out / 'results.md'} in "
        f"{meta['total_seconds']:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def _adherence(bench: Benchmark, out: Path, prompts: int) -> None:
    from videogen.tiny import evaluate

    report = evaluate.evaluate(prompts, out)
    bench.config = {
        "model": f"{report['model']}, {report['size']}, {report['num_frames']} frames",
        "steps": report["steps"],
        "guidance_scale": report["guidance_scale"],
    }
    accuracy = report["accuracy"]
    assert isinstance(accuracy, dict)
    for attr, value in accuracy.items():
        target = evaluate.TARGETS.get(attr)
        note = f"target {target:.0%}" if target else "reported, no target"
        bench.add(f"{attr} read as asked", value * 100, "%", prompts, note)
    bench.add("seconds per video", report["seconds_per_video"], "s", prompts, "2 CPU threads")
    print(f"    contact sheet: {out / 'contact_sheet.png'}", flush=True)


def _checkpoint(bench: Benchmark, rounds: int, every: int, quick: bool) -> None:
    # Imported here: it loads torch and the model code, which `--help` does not need.
    from benchmarks import checkpoint_overhead

    steps = 10 if quick else 20
    r = checkpoint_overhead.measure(
        size="256x256",
        frames=17,
        steps=steps,
        every=every,
        repeats=rounds,
        progress=lambda m: print("    " + m),
    )
    bench.config = {
        "job": f"tiny model, {r.size}, {r.frames} frames (2 s), {r.steps} steps",
        "device": r.device,
        "store": "file:// in a temporary dir",
        "checkpoint size": f"{r.checkpoint_bytes / 1e6:.2f} MB",
    }
    for mode in r.per_step_s:
        desc = checkpoint_overhead.describe(mode, r.every)
        n = len(r.per_step_s[mode])
        written = sorted(r.checkpoints[mode])[n // 2]
        bench.add(
            f"{desc}: ms per step", r.median_ms(mode), "ms", n, f"{written} checkpoints per run"
        )
        if mode != "never":
            bench.add(f"{desc}: ratio to never", r.ratio(mode), "x", n)
    bench.samples = dict(r.per_step_s)


def _default_plan(
    d: Driver, benches: dict[str, Benchmark], runs: Runs
) -> list[tuple[Benchmark, Callable[[], Awaitable[None]]]]:
    """The default stack's benchmarks in order; admission last, as it leaves thousands of
    queued jobs behind (on a pool no worker serves)."""
    plan: list[tuple[Benchmark, Callable[[], Awaitable[None]]]] = []
    pickup, overhead = benches.get("pickup"), benches.get("overhead")
    owner = pickup or overhead
    if owner is not None:
        # One series of short jobs gives both; the first selected of the two records its time.
        plan.append((owner, lambda: service.short_jobs(d, runs.pickup, pickup, overhead)))
    if "cancel" in benches:
        bench = benches["cancel"]
        plan.append((bench, lambda: service.cancel_latency(d, runs.cancel, bench)))
    if "admission" in benches:
        adm = benches["admission"]
        plan.append(
            (adm, lambda: service.admission(d, runs.admission_clients, runs.admission_seconds, adm))
        )
    return plan


if __name__ == "__main__":
    raise SystemExit(main())
