"""The GPU benchmark: a Wan2.1 1.3B directory built on the spot (random weights at the
published shapes and depth: nothing to download), run through the GPU worker's own code path.

    .venv/bin/python -m benchmarks.gpu [--size 832x480] [--frames 81] [--steps 10]
        [--kill-at 4] [--layers 30] [--dir DIR] [--out FILE.json]
    .venv/bin/python -m benchmarks.gpu --tiny     # the suite's check that it runs (CPU)

It measures, in this order, and prints a table last:
- the build and the worker's load (`pipeline.load_pipeline`, with `configure_torch`'s
  deterministic settings on CUDA);
- an uninterrupted job: seconds per step (median; CUDA-synchronised), peak GPU memory, NVML
  utilisation sampled every 0.2 s, and its frames' sha256;
- one checkpoint: bytes, the snapshot's device-to-host copy, the encode and the write;
- the loop's time per step with a background checkpoint every step against none
  (`benchmarks/checkpoint_overhead.py`'s loop, the activity's way);
- an attempt SIGKILLed in a child process once its checkpoint after step `--kill-at` is
  written, then resumed from the store in a second child as a retry would be
  (`checkpoint.find_resume_point`): its frames' sha256 against the uninterrupted run's;
- the job again with the text encoder in host memory between encodes
  (VIDEOGEN_TEXT_ENCODER=offload): peak GPU memory, prepare's time with and without the
  encoder's moves, and whether the frames changed;
- seconds per step with the deterministic CUDA settings off, for what they cost.

`--tiny` builds 2 blocks and 1 text-encoder layer at 1.3B widths and runs 32x32, 5 frames,
4 steps on whatever device there is: a smoke test, not figures. On a GPU, the figures go to
`benchmarks/results/gpu-<date>.md` by hand, with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from activities import checkpoint, media, pipeline
from activities.placement import Placement
from benchmarks import checkpoint_overhead
from videogen import catalog, fake_wan, logs
from videogen.settings import Settings, TextEncoderPlacement
from videogen.storage import open_store

JOB = "video_gpu_bench"
PROMPT = "a red ball bouncing on a wooden floor"


@dataclass
class Job:
    """What one run generates; the children get it as JSON."""

    size: str
    frames: int
    steps: int
    seed: int = 7

    def params(self, spec: catalog.ModelSpec) -> pipeline.GenerationParams:
        width, height = spec.parse_size(self.size)
        return pipeline.GenerationParams.for_spec(
            spec,
            prompt=PROMPT,
            negative_prompt="",
            seed=self.seed,
            width=width,
            height=height,
            num_frames=self.frames,
            num_inference_steps=self.steps,
            guidance_scale=spec.guidance_scale,
        )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _load(path: Path, device: str) -> pipeline.LoadedModel:
    from worker_gpu.main import configure_torch

    configure_torch(Settings(), device)
    return pipeline.load_pipeline(catalog.spec_for_path(path), device)


class _Utilisation:
    """GPU utilisation samples (NVML through `torch.cuda.utilization`, as the worker reads it)
    while running; none without a GPU or NVML (the `gpu` extra)."""

    def __init__(self, device: str) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._index: int | None = None
        if device.startswith("cuda"):
            try:
                torch.cuda.utilization(torch.cuda.current_device())
                self._index = torch.cuda.current_device()
            except Exception:  # no NVML: report no samples rather than fail the benchmark
                self._index = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(int(torch.cuda.utilization(self._index)))

    def __enter__(self) -> _Utilisation:
        if self._index is not None:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._index is not None:
            self._thread.join()


def _timed_run(
    model: pipeline.LoadedModel, params: pipeline.GenerationParams
) -> tuple[list[float], str]:
    """Seconds of each step, and the frames' sha256."""
    state = pipeline.prepare(model, params)
    times = []
    while not state.done:
        started = time.perf_counter()
        pipeline.denoise_step(model, state)
        _sync(model.device)
        times.append(time.perf_counter() - started)
    return times, media.frames_sha256(pipeline.decode(model, state))


def _one_checkpoint(
    model: pipeline.LoadedModel, params: pipeline.GenerationParams, store_dir: str
) -> dict[str, float]:
    state = pipeline.prepare(model, params)
    pipeline.denoise_step(model, state)
    _sync(model.device)
    started = time.perf_counter()
    snap = checkpoint.snapshot(state, job_id=JOB, attempt=1, device=model.device)
    snapshot_s = time.perf_counter() - started
    started = time.perf_counter()
    data = checkpoint.encode(snap, model)
    encode_s = time.perf_counter() - started
    store = open_store(f"file://{store_dir}")
    started = time.perf_counter()
    store.put("bench/one-checkpoint", data)
    write_s = time.perf_counter() - started
    return {"bytes": len(data), "snapshot_s": snapshot_s, "encode_s": encode_s, "write_s": write_s}


def _overhead(model: pipeline.LoadedModel, params: pipeline.GenerationParams) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"file://{tmp}")
        never = checkpoint_overhead.run_mode("never", 1, model, params, store)[0]
        every = checkpoint_overhead.run_mode("every_step", 1, model, params, store)[0]
    return {"never_s_per_step": never, "every_step_s_per_step": every, "ratio": every / never}


def _child(argv: list[str], env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **(env_extra or {})}
    cmd = [sys.executable, "-m", "benchmarks.gpu", *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)


def _kill_and_resume(path: Path, job: Job, kill_at: int, store_dir: str) -> dict[str, Any]:
    common = ["--dir", str(path), "--job", json.dumps(asdict(job)), "--store", store_dir]
    run = _child(["--child", "run", *common])
    assert run.stdout is not None
    for line in run.stdout:
        if line.strip() == f"checkpointed {kill_at}":
            run.send_signal(signal.SIGKILL)
            break
    run.wait()
    resume = _child(["--child", "resume", *common])
    out, _ = resume.communicate()
    if resume.returncode != 0:
        raise RuntimeError(f"the resuming child failed ({resume.returncode}): {out}")
    return {"killed_after_step": kill_at, **json.loads(out.strip().splitlines()[-1])}


def _child_main(mode: str, path: Path, job: Job, store_dir: str) -> None:
    """A child process: run the job writing a checkpoint after every step (the parent kills
    it), or resume the job from the store's newest checkpoint and print its frames' sha256."""
    device = pipeline.pick_device()
    model = _load(path, device)
    params = job.params(model.spec)
    store = open_store(f"file://{store_dir}")
    if mode == "run":
        writer = checkpoint.CheckpointWriter(store, model, job_id=JOB, attempt=1)
        state = pipeline.prepare(model, params)
        while not state.done:
            pipeline.denoise_step(model, state)
            writer.write(checkpoint.snapshot(state, job_id=JOB, attempt=1, device=device))
            print(f"checkpointed {state.next_step}", flush=True)
        return
    point, skipped = checkpoint.find_resume_point(
        store,
        model,
        params,
        job_id=JOB,
        num_threads=torch.get_num_threads(),
        newest=None,
        previous=None,
    )
    if point is None:
        raise SystemExit(f"no usable checkpoint: {skipped}")
    state = point.state
    resumed_from = state.next_step
    while not state.done:
        pipeline.denoise_step(model, state)
    sha = media.frames_sha256(pipeline.decode(model, state))
    print(json.dumps({"resumed_from_step": resumed_from, "frames_sha256": sha}), flush=True)


def _build(args: argparse.Namespace, work: Path) -> tuple[Path, float]:
    if args.dir is not None and (args.dir / "model_index.json").exists():
        return args.dir, 0.0
    out = args.dir or work / "wan2.1-t2v-1.3b"
    started = time.perf_counter()
    fake_wan.build(
        "wan2.1-t2v-1.3b",
        out,
        layers=args.layers,
        text_layers=args.text_layers,
        vocab_size=args.vocab_size,
    )
    return out, time.perf_counter() - started


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every figure of the benchmark, as JSON-ready values."""
    path, build_s = _build(args, work)
    device = pipeline.pick_device()
    model = _load(path, device)
    job = Job(args.size, args.frames, args.steps)
    params = job.params(model.spec)
    pipeline.check_params(model.spec, params, model.size_multiple)
    _timed_run(model, pipeline.GenerationParams(**{**asdict(params), "num_inference_steps": 1}))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with _Utilisation(device) as util:
        step_s, sha = _timed_run(model, params)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    figures: dict[str, Any] = {
        "device": checkpoint.device_name(device),
        "model": {"path": str(path), "layers": args.layers, "build_s": build_s},
        "job": asdict(job),
        "load_s": model.load_seconds,
        "step_s_median": statistics.median(step_s),
        "step_s": step_s,
        "peak_gpu_bytes": peak,
        "gpu_utilisation_pct": util.samples,
        "frames_sha256": sha,
    }
    with tempfile.TemporaryDirectory(dir=work) as store_dir:
        figures["checkpoint"] = _one_checkpoint(model, params, store_dir)
    figures["checkpoint_overhead"] = _overhead(model, params)
    with tempfile.TemporaryDirectory(dir=work) as store_dir:
        resumed = _kill_and_resume(path, job, args.kill_at, store_dir)
    resumed["equal_to_uninterrupted"] = resumed["frames_sha256"] == sha
    figures["kill_and_resume"] = resumed
    figures["text_encoder_offload"] = _offloaded(model, params, sha)
    if device.startswith("cuda"):
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        free_s, _ = _timed_run(model, params)
        figures["step_s_median_nondeterministic"] = statistics.median(free_s)
    return figures


def _offloaded(
    model: pipeline.LoadedModel, params: pipeline.GenerationParams, sha: str
) -> dict[str, Any]:
    """The job again with the text encoder in host memory between encodes (the worker's
    VIDEOGEN_TEXT_ENCODER=offload): peak memory, prepare's time with the encoder's moves in
    and out against without, and whether the frames changed (they must not)."""
    cuda = model.device.startswith("cuda")

    def prepare_s() -> float:
        started = time.perf_counter()
        pipeline.prepare(model, params)
        _sync(model.device)
        return time.perf_counter() - started

    resident_s = prepare_s()
    model.placed.rehome(Placement(TextEncoderPlacement.OFFLOAD))
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        _, offload_sha = _timed_run(model, params)
        peak = torch.cuda.max_memory_allocated() if cuda else None
        offload_s = prepare_s()
    finally:
        model.placed.rehome(Placement())
    return {
        "peak_gpu_bytes": peak,
        "prepare_s": offload_s,
        "prepare_s_resident": resident_s,
        "equal_to_resident": offload_sha == sha,
    }


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def table(f: dict[str, Any]) -> str:
    job, ck, over, kr = f["job"], f["checkpoint"], f["checkpoint_overhead"], f["kill_and_resume"]
    util, off = f["gpu_utilisation_pct"], f["text_encoder_offload"]
    rows = [
        ("device", f["device"]),
        ("job", f"{job['size']}, {job['frames']} frames, {job['steps']} steps"),
        ("build, load", f"{f['model']['build_s']:.1f} s, {f['load_s']:.1f} s"),
        ("step (median)", f"{f['step_s_median']:.3f} s"),
        ("peak GPU memory", _gib(f["peak_gpu_bytes"])),
        ("GPU utilisation", f"median {statistics.median(util)} %" if util else "n/a"),
        ("checkpoint size", f"{ck['bytes'] / 1e6:.1f} MB"),
        ("snapshot (device to host)", f"{ck['snapshot_s']:.3f} s"),
        ("encode, write", f"{ck['encode_s']:.3f} s, {ck['write_s']:.3f} s"),
        ("checkpoint every step", f"x{over['ratio']:.3f} the time per step of none"),
        ("SIGKILL after step", str(kr["killed_after_step"])),
        ("resumed from step", str(kr["resumed_from_step"])),
        ("resumed frames equal", str(kr["equal_to_uninterrupted"])),
        ("text encoder offloaded: peak", _gib(off["peak_gpu_bytes"])),
        ("  prepare", f"{off['prepare_s']:.3f} s, {off['prepare_s_resident']:.3f} s resident"),
        ("  frames equal", str(off["equal_to_resident"])),
    ]
    if "step_s_median_nondeterministic" in f:
        rows.append(("step, deterministic off", f"{f['step_s_median_nondeterministic']:.3f} s"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="832x480")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--kill-at", type=int, default=4, help="SIGKILL after this step's checkpoint")
    ap.add_argument("--layers", type=int, help="transformer blocks (default: the published 30)")
    ap.add_argument("--text-layers", type=int, help="UMT5 layers (default: the published 24)")
    ap.add_argument("--vocab-size", type=int, help="UMT5 vocabulary (default: the published)")
    ap.add_argument("--dir", type=Path, help="build the directory here, or reuse the one there")
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    ap.add_argument("--tiny", action="store_true", help="a CPU-sized smoke run, not figures")
    ap.add_argument("--child", choices=("run", "resume"), help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tiny:
        args.size, args.frames, args.steps, args.kill_at = "32x32", 5, 4, 2
        args.layers, args.text_layers, args.vocab_size = 2, 1, fake_wan.SMALL_VOCAB_SIZE
    if not 1 <= args.kill_at < args.steps:
        ap.error(f"--kill-at: must be in 1..{args.steps - 1} (a step before the last)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logs.configure("WARNING")
    if args.child is not None:
        _child_main(args.child, args.dir, Job(**json.loads(args.job)), args.store)
        return
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(args, Path(tmp))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(table(figures))


if __name__ == "__main__":
    main()
