"""Checkpoints of a generation in progress: file format, verification, restore, write policy.

A checkpoint is the complete `DenoiseState` at a step boundary, so a retried attempt on any
worker continues exactly where an earlier one stopped and produces the same bits:

- one safetensors file holding every tensor (latents, prompt embeddings, the scheduler's
  multistep history, the generator's state) and, in its header, a JSON manifest: format version,
  job, attempt, next step, run parameters, model name and weights hash, scheduler class, config
  and scalar state, library versions, device, torch thread count and, for CPU runs, the
  instruction sets that chose the kernels (`cpu_kernels`);
- a `checksum` in the manifest: sha256 over the rest of the manifest and every tensor's name,
  dtype, shape and bytes, so a file is self-verifying even without the sha256 of its bytes that
  the heartbeat carries;
- stored under `checkpoints/<2 hex>/<job>/attempt-<n>/step-<k>.safetensors` (contracts), an
  atomic object write, so a reader sees a whole file or none.

The activity takes a `snapshot()` on the denoising thread (a copy of the state, cheap), and a
`CheckpointWriter` serialises and uploads it on a background thread with retry and backoff.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import json
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from typing import Any

import numpy as np
import safetensors.torch
import structlog
import torch

from activities.pipeline import DenoiseState, GenerationParams, LoadedModel, job_scheduler
from videogen import contracts as c
from videogen import hostcpu, metrics
from videogen.checkpoint_policy import CheckpointPolicy  # noqa: F401 - re-exported
from videogen.storage import NotFound, ObjectStore

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
MANIFEST_KEY = "videogen.manifest"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says why."""


class CheckpointCorrupt(CheckpointError):
    """Unreadable, truncated, or its checksum does not match its contents."""


class CheckpointIncompatible(CheckpointError):
    """Valid, but for another job, model, parameters, format or thread count."""


# --------------------------------------------------------------------------------------------
# References (what the heartbeat carries)


@dataclass(frozen=True)
class CheckpointRef:
    """A confirmed checkpoint: written and readable, so safe to heartbeat."""

    step: int
    key: str
    uri: str
    sha256: str
    attempt: int
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "checkpoint_key": self.key,
            "checkpoint_uri": self.uri,
            "sha256": self.sha256,
            "attempt": self.attempt,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, d: object) -> CheckpointRef | None:
        """None for anything that is not a well-formed reference (old or foreign details)."""
        if not isinstance(d, dict):
            return None
        try:
            return cls(
                step=int(d["step"]),
                key=str(d["checkpoint_key"]),
                uri=str(d.get("checkpoint_uri", "")),
                sha256=str(d["sha256"]),
                attempt=int(d["attempt"]),
                size=int(d.get("size", 0)),
            )
        except (KeyError, TypeError, ValueError):
            return None


# --------------------------------------------------------------------------------------------
# Snapshot and encoding


@dataclass
class Snapshot:
    """A private copy of a `DenoiseState` on the host, safe to serialise on another thread."""

    job_id: str
    attempt: int
    next_step: int
    total_steps: int
    params: GenerationParams
    num_threads: int
    device: str
    tensors: dict[str, torch.Tensor]
    tensor_devices: dict[str, str]
    scheduler_class: str
    scheduler_config: dict[str, Any]
    scheduler_state: dict[str, Any]
    taken_s: float = 0.0
    # The next step's timestep (None when all are done): which expert runs it, in `encode`.
    next_timestep: torch.Tensor | None = None


class _TensorSink:
    """Collects tensors for a snapshot under stable names; records where each one lived."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.devices: dict[str, str] = {}

    def add(self, name: str, t: torch.Tensor) -> str:
        # clone(): the loop may go on changing what it references, and safetensors refuses
        # tensors that share memory (UniPC's timestep_list holds views of `timesteps`).
        self.tensors[name] = t.detach().to("cpu", copy=True).contiguous()
        self.devices[name] = str(t.device)
        return name


def _encode_value(value: Any, name: str, sink: _TensorSink) -> Any:
    """JSON form of one scheduler attribute; tensors go to the sink as references."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        # JSON has no inf/nan; keep the exact bits of every float via its hex form.
        return {"__float__": value.hex()}
    if isinstance(value, torch.Tensor):
        return {"__tensor__": sink.add(name, value)}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": sink.add(name, torch.from_numpy(np.ascontiguousarray(value)))}
    if isinstance(value, np.generic):
        return _encode_value(value.item(), name, sink)
    if isinstance(value, list | tuple):
        items = [_encode_value(v, f"{name}.{i}", sink) for i, v in enumerate(value)]
        return items if isinstance(value, list) else {"__tuple__": items}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode_value(v, f"{name}.{k}", sink) for k, v in value.items()}}
    raise TypeError(
        f"scheduler attribute {name!r} has type {type(value).__name__}, which checkpoints do "
        "not support; extend activities.checkpoint._encode_value for this scheduler"
    )


def _decode_value(
    value: Any, tensors: dict[str, torch.Tensor], devices: dict[str, str], device: str
) -> Any:
    if isinstance(value, list):
        return [_decode_value(v, tensors, devices, device) for v in value]
    if not isinstance(value, dict):
        return value
    if "__float__" in value:
        return float.fromhex(value["__float__"])
    if "__tensor__" in value:
        name = value["__tensor__"]
        # Tensors the scheduler kept on the host stay there; the rest go to this run's device.
        target = "cpu" if devices.get(name, "cpu") == "cpu" else device
        return tensors[name].to(target)
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().copy()
    if "__tuple__" in value:
        return tuple(_decode_value(v, tensors, devices, device) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode_value(v, tensors, devices, device) for k, v in value["__dict__"].items()}
    raise CheckpointCorrupt(f"unknown value encoding in manifest: {sorted(value)}")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def scheduler_config(scheduler: Any) -> dict[str, Any]:
    """The scheduler's config as JSON, without diffusers' private bookkeeping keys
    (`_use_default_values` is built from a set: its order changes from process to process)."""
    return _jsonable({k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")})


def snapshot(state: DenoiseState, *, job_id: str, attempt: int, device: str) -> Snapshot:
    """Copy `state` to the host. Runs on the denoising thread between two steps."""
    started = time.perf_counter()
    sink = _TensorSink()
    sink.add("latents", state.latents)
    sink.add("prompt_embeds", state.prompt_embeds)
    if state.negative_prompt_embeds is not None:
        sink.add("negative_prompt_embeds", state.negative_prompt_embeds)
    # get_state() is a CPU byte tensor for CPU and CUDA generators alike.
    sink.add("generator_state", state.generator.get_state())
    scheduler = state.scheduler
    sched_state = {
        attr: _encode_value(value, f"scheduler.{attr}", sink)
        for attr, value in vars(scheduler).items()
        if attr != "_internal_dict"  # the config: recorded separately, restored by deepcopy
    }
    return Snapshot(
        job_id=job_id,
        attempt=attempt,
        next_step=state.next_step,
        total_steps=state.total_steps,
        params=dataclasses.replace(state.params),
        num_threads=state.num_threads,
        device=device,
        tensors=sink.tensors,
        tensor_devices=sink.devices,
        scheduler_class=type(scheduler).__name__,
        scheduler_config=scheduler_config(scheduler),
        scheduler_state=sched_state,
        taken_s=time.perf_counter() - started,
        next_timestep=None if state.done else state.timesteps[state.next_step].detach().cpu(),
    )


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    # importlib.metadata scans site-packages: ~5 ms, too slow to repeat per checkpoint.
    out = []
    for dist in ("torch", "diffusers", "transformers", "safetensors", "videogen"):
        try:
            out.append((dist, importlib_metadata.version(dist)))
        except importlib_metadata.PackageNotFoundError:
            out.append((dist, "unknown"))
    return tuple(out)


def library_versions() -> dict[str, str]:
    """Versions of what computes the bits, recorded in every manifest."""
    return dict(_versions())


def device_name(device: str) -> str:
    """What kind of chip ran the steps: bit-exact resume needs the same kind."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({hostcpu.model_name()})"


@functools.cache
def cpu_kernels() -> dict[str, object]:
    """What picks torch's CPU kernels here: ATen's dispatch level and the CPU's instruction sets.

    A CPU run's bits depend on these (AVX-512 and AVX2 kernels sum in other orders), and no
    setting pins ATen, oneDNN and MKL alike, so a resume across them is refused instead.
    """
    return {"aten": torch.backends.cpu.get_cpu_capability(), **hostcpu.instruction_sets()}


def _checksum(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    digest.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encode(snap: Snapshot, model: LoadedModel) -> bytes:
    """The checkpoint file's bytes: safetensors with the manifest in its header."""
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "job_id": snap.job_id,
        "attempt": snap.attempt,
        "next_step": snap.next_step,
        "total_steps": snap.total_steps,
        # For operators: a function of the step's timestep, so a resume needs nothing from it.
        "expert": None if snap.next_timestep is None else model.expert(snap.next_timestep).value,
        "params": _params_dict(snap.params),
        "model": {"name": model.spec.name, "weights_hash": model.weights_hash},
        "scheduler": {
            "class": snap.scheduler_class,
            "config": snap.scheduler_config,
            "state": snap.scheduler_state,
        },
        "tensor_devices": snap.tensor_devices,
        "num_threads": snap.num_threads,
        "device": snap.device,
        "device_name": device_name(snap.device),
        "cpu_kernels": cpu_kernels(),
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(),
    }
    manifest["checksum"] = _checksum(manifest, snap.tensors)
    return safetensors.torch.save(snap.tensors, metadata={MANIFEST_KEY: json.dumps(manifest)})


def _params_dict(params: GenerationParams) -> dict[str, Any]:
    d = dataclasses.asdict(params)
    d["guidance_scale"] = float(d["guidance_scale"]).hex()  # exact, comparable
    # Left out when unset: a one-transformer, whole-frame job's parameters read as they did
    # before two-expert models and tiling, so checkpoints and frames written then still match.
    for name in ("guidance_scale_2", "flow_shift"):
        if d[name] is None:
            del d[name]
        else:
            d[name] = float(d[name]).hex()
    if not d["vae_tiling"]:
        del d["vae_tiling"]
    return d


@dataclass
class Checkpoint:
    """A decoded, checksum-verified checkpoint."""

    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def next_step(self) -> int:
        return int(self.manifest["next_step"])


def _read_header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise CheckpointCorrupt(f"{len(data)} bytes is too short for a checkpoint")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CheckpointCorrupt("header runs past the end of the file (truncated?)")
    try:
        header = json.loads(data[8 : 8 + n])
        return json.loads(header["__metadata__"][MANIFEST_KEY])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointCorrupt(f"no readable manifest in the header: {err}") from err


def decode(data: bytes, expected_sha256: str | None = None) -> Checkpoint:
    """Parse and verify a checkpoint file; CheckpointCorrupt if anything does not add up."""
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise CheckpointCorrupt(
                f"sha256 of the file is {actual[:12]}…, the heartbeat said {expected_sha256[:12]}…"
            )
    manifest = _read_header(data)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointIncompatible(
            f"format version {manifest.get('format_version')!r}; this worker reads {FORMAT_VERSION}"
        )
    try:
        loaded = safetensors.torch.load(data)
    except Exception as err:  # safetensors raises its own error types for bad bytes
        raise CheckpointCorrupt(f"tensor data unreadable: {err}") from err
    # safetensors' tensors are views into Python bytes objects, 16-byte aligned at best and at
    # an offset that varies per process. MKL documents that its results may depend on its
    # inputs' alignment, so every restored tensor gets torch's own (64-byte aligned) memory, as
    # an uninterrupted run's tensors have.
    tensors = {name: t.clone() for name, t in loaded.items()}
    if manifest.get("checksum") != _checksum(manifest, tensors):
        raise CheckpointCorrupt("checksum does not match the contents")
    return Checkpoint(manifest=manifest, tensors=tensors)


def check_compatible(
    ckpt: Checkpoint, model: LoadedModel, params: GenerationParams, *, job_id: str, num_threads: int
) -> list[str]:
    """Raise CheckpointIncompatible if resuming could not give this job's video.

    Returns warnings for differences that still resume, but maybe not bit for bit (another
    GPU model or library version): throwing the work away would be worse.
    """
    m = ckpt.manifest
    if m.get("job_id") != job_id:
        raise CheckpointIncompatible(f"checkpoint of job {m.get('job_id')!r}, not {job_id!r}")
    model_info = m.get("model", {})
    if model_info.get("weights_hash") != model.weights_hash:
        raise CheckpointIncompatible(
            f"written with other weights ({model_info.get('name')!r}, hash "
            f"{str(model_info.get('weights_hash'))[:12]}…) than this worker's "
            f"{model.spec.name!r} ({model.weights_hash[:12]}…)"
        )
    if m.get("params") != _params_dict(params):
        raise CheckpointIncompatible("written for other generation parameters")
    sched = m.get("scheduler", {})
    expected = job_scheduler(model, params)
    if sched.get("class") != type(expected).__name__ or sched.get("config") != scheduler_config(
        expected
    ):
        raise CheckpointIncompatible("written with another scheduler or scheduler config")
    if not 0 <= ckpt.next_step <= int(m.get("total_steps", -1)):
        raise CheckpointIncompatible(f"step {ckpt.next_step} out of range")
    # On the CPU the thread count changes the bits of some kernels (docs/checkpoints.md, "What
    # resumable denoising needs"): a resume with another count would silently give another
    # video, so it is not a resume point.
    if model.device == "cpu" and m.get("num_threads") != num_threads:
        raise CheckpointIncompatible(
            f"written with {m.get('num_threads')} torch threads, this worker runs {num_threads}; "
            "give every worker the same VIDEOGEN_TORCH_THREADS"
        )
    if model.device == "cpu" and m.get("cpu_kernels") != cpu_kernels():
        raise CheckpointIncompatible(
            f"written on a CPU whose kernels differ ({m.get('cpu_kernels')}) from this "
            f"worker's ({cpu_kernels()}): the rest would compute other bits; run CPU workers "
            "of one kind per task queue"
        )
    warnings = []
    here = device_name(model.device)
    if m.get("device_name") != here:
        warnings.append(
            f"written on {m.get('device_name')!r}, resuming on {here!r}: "
            "the video may differ in low bits from an uninterrupted run"
        )
    versions = library_versions()
    changed = {
        k: (v, versions.get(k))
        for k, v in m.get("versions", {}).items()
        if versions.get(k) != v and k != "videogen"
    }
    if changed:
        warnings.append(f"library versions differ {changed}: the video may differ in low bits")
    return warnings


def restore(model: LoadedModel, ckpt: Checkpoint, params: GenerationParams) -> DenoiseState:
    """Rebuild the `DenoiseState` a checkpoint was taken from, on this model's device."""
    m = ckpt.manifest
    t = ckpt.tensors
    device = model.device
    devices = m.get("tensor_devices", {})
    # set_timesteps() resets the multistep state, so it comes first and the saved attributes
    # overwrite what it computed (docs/checkpoints.md, "What resumable denoising needs").
    scheduler = job_scheduler(model, params)
    scheduler.set_timesteps(int(m["total_steps"]), device=torch.device(device))
    scheduler.set_begin_index(0)
    for attr, value in m["scheduler"]["state"].items():
        setattr(scheduler, attr, _decode_value(value, t, devices, device))
    generator = torch.Generator(device=device)
    generator.set_state(t["generator_state"])
    negative = t.get("negative_prompt_embeds")
    return DenoiseState(
        params=params,
        prompt_embeds=t["prompt_embeds"].to(device),
        negative_prompt_embeds=None if negative is None else negative.to(device),
        latents=t["latents"].to(device),
        timesteps=scheduler.timesteps,
        scheduler=scheduler,
        generator=generator,
        next_step=int(m["next_step"]),
        total_steps=int(m["total_steps"]),
        num_threads=int(m["num_threads"]),
    )


# --------------------------------------------------------------------------------------------
# Policy: `CheckpointPolicy` lives in videogen.checkpoint_policy (no torch; the fleet simulator
# uses it too) and is re-exported here.


# --------------------------------------------------------------------------------------------
# Writing


@dataclass
class WriterStats:
    written: int = 0
    failed: int = 0
    bytes: int = 0
    # Exponential moving average of a checkpoint's full cost, in seconds (Young–Daly's C).
    cost_s: float | None = None
    last_error: str | None = None
    history: list[CheckpointRef] = field(default_factory=list)


class CheckpointWriter:
    """Uploads snapshots of one attempt, one at a time, on a background thread.

    Keeps the newest two confirmed checkpoints of the job (the previous one is the fallback
    if the newest turns out unreadable) and deletes older ones once a newer one is confirmed.
    A write that keeps failing is given up after `retries` tries with exponential backoff: the
    job goes on without that checkpoint, and the failure is logged and counted.
    """

    def __init__(
        self,
        store: ObjectStore,
        model: LoadedModel,
        *,
        job_id: str,
        attempt: int,
        retries: int = 3,
        backoff_s: float = 0.5,
        initial: list[CheckpointRef] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._model = model
        self._job_id = job_id
        self._attempt = attempt
        self._retries = retries
        self._backoff_s = backoff_s
        self._sleep = sleep
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._inflight: Future[CheckpointRef | None] | None = None
        # Oldest first; may start with the checkpoint(s) this attempt resumed from.
        self._confirmed: list[CheckpointRef] = list(initial or [])
        self.stats = WriterStats()
        self._log = log.bind(job_id=job_id, attempt=attempt)

    @property
    def newest(self) -> CheckpointRef | None:
        with self._lock:
            return self._confirmed[-1] if self._confirmed else None

    @property
    def previous(self) -> CheckpointRef | None:
        with self._lock:
            return self._confirmed[-2] if len(self._confirmed) > 1 else None

    @property
    def busy(self) -> bool:
        f = self._inflight
        return f is not None and not f.done()

    def reset(self, confirmed: list[CheckpointRef]) -> None:
        """Replace the known confirmed checkpoints (the one a resume started from)."""
        with self._lock:
            self._confirmed = list(confirmed)

    def submit(self, snap: Snapshot) -> bool:
        """Start uploading `snap` in the background; False (nothing done) if one is running."""
        if self.busy:
            return False
        # In the caller's context, so log lines of the upload carry the job's workflow id.
        self._inflight = self._pool.submit(contextvars.copy_context().run, self.write, snap)
        return True

    def drain(self) -> None:
        """Wait for the upload in flight, if any. Never raises: a checkpoint that could not be
        made is logged and the job goes on, as with a failed write."""
        f = self._inflight
        if f is None:
            return
        # Taken once: the activity drains on every way out (and again in its `finally`), and
        # one failed upload must be counted and logged once.
        self._inflight = None
        try:
            f.result()
        except Exception as err:
            self.stats.failed += 1
            metrics.CHECKPOINT_FAILURES.inc()
            self._log.error("checkpoint could not be made", error=f"{type(err).__name__}: {err}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def write(self, snap: Snapshot) -> CheckpointRef | None:
        """Serialise and upload `snap` now, with retries; the confirmed ref, or None."""
        started = time.perf_counter()
        data = encode(snap, self._model)
        key = c.checkpoint_key(self._job_id, self._attempt, snap.next_step)
        delay = self._backoff_s
        for attempt in range(1, self._retries + 1):
            try:
                self._store.put(key, data)
                break
            except Exception as err:  # any store failure: retry, then give up on this one
                self.stats.last_error = f"{type(err).__name__}: {err}"
                if attempt == self._retries:
                    self.stats.failed += 1
                    metrics.CHECKPOINT_FAILURES.inc()
                    self._log.warning(
                        "checkpoint write failed; continuing without it",
                        step=snap.next_step,
                        key=key,
                        tries=attempt,
                        error=self.stats.last_error,
                    )
                    return None
                self._sleep(delay)
                delay *= 2
        elapsed = time.perf_counter() - started + snap.taken_s
        ref = CheckpointRef(
            step=snap.next_step,
            key=key,
            uri=f"{self._store.describe()}/{key}",
            sha256=hashlib.sha256(data).hexdigest(),
            attempt=self._attempt,
            size=len(data),
        )
        stats = self.stats
        stats.written += 1
        stats.bytes += len(data)
        stats.cost_s = elapsed if stats.cost_s is None else 0.7 * stats.cost_s + 0.3 * elapsed
        stats.history.append(ref)
        metrics.CHECKPOINT_SECONDS.observe(elapsed)
        metrics.CHECKPOINT_BYTES.observe(len(data))
        with self._lock:
            self._confirmed.append(ref)
            stale, self._confirmed = self._confirmed[:-2], self._confirmed[-2:]
        for old in stale:
            if old.key != ref.key:
                try:
                    self._store.delete(old.key)
                except Exception as err:  # leftovers go with the job's cleanup
                    self._log.warning(
                        "could not delete an old checkpoint", key=old.key, error=str(err)
                    )
        self._log.debug(
            "checkpoint written", step=ref.step, bytes=len(data), seconds=round(elapsed, 4)
        )
        return ref


# --------------------------------------------------------------------------------------------
# Finding a resume point


@dataclass
class ResumePoint:
    state: DenoiseState
    ref: CheckpointRef
    source: str  # "heartbeat", "previous" or "listing"
    warnings: list[str]
    skipped: list[str]  # why newer candidates were not used


def find_resume_point(
    store: ObjectStore,
    model: LoadedModel,
    params: GenerationParams,
    *,
    job_id: str,
    num_threads: int,
    newest: CheckpointRef | None,
    previous: CheckpointRef | None,
) -> tuple[ResumePoint | None, list[str]]:
    """The newest usable checkpoint: the heartbeat's, then its predecessor, then any other.

    Candidates are the heartbeat's two references (the server holds them) and whatever the
    job's prefix lists (checkpoints confirmed after the last heartbeat that reached the server,
    or written by an earlier attempt), newest step first. Every candidate is verified (sha256
    where known, checksum, compatibility) before it is used.
    Returns (None, reasons) if none is usable: the caller starts from step 0. Raises the
    store's error if the store cannot be read (the caller retries later instead).
    """
    candidates: list[tuple[str, CheckpointRef]] = []
    if newest is not None:
        candidates.append(("heartbeat", newest))
    if previous is not None:
        candidates.append(("previous", previous))
    # Store errors other than NotFound propagate: an unreachable store says nothing about the
    # checkpoints, and starting over from step 0 would throw their work away.
    listed = store.list(c.checkpoints_prefix(job_id))
    known = {ref.key for _, ref in candidates}
    extra = []
    for key in listed:
        parsed = c.parse_checkpoint_key(key)
        if parsed is not None and key not in known:
            attempt, step = parsed
            extra.append(
                CheckpointRef(
                    step=step, key=key, uri=f"{store.describe()}/{key}", sha256="", attempt=attempt
                )
            )
    # Newest first: a listed checkpoint newer than the heartbeat's was written after the last
    # heartbeat that reached the server, and is as good (same checks) and loses less work.
    order = {"heartbeat": 0, "previous": 1, "listing": 2}
    candidates += [("listing", r) for r in extra]
    candidates.sort(key=lambda sr: (-sr[1].step, order[sr[0]], -sr[1].attempt))

    skipped: list[str] = []
    for source, ref in candidates:
        try:
            data = store.get(ref.key)
        except NotFound:
            skipped.append(f"{ref.key}: missing")
            continue
        try:
            ckpt = decode(data, ref.sha256 or None)
            warnings = check_compatible(ckpt, model, params, job_id=job_id, num_threads=num_threads)
            state = restore(model, ckpt, params)
        except CheckpointError as err:
            skipped.append(f"{ref.key}: {err}")
            continue
        except Exception as err:  # a well-formed file this code cannot restore
            skipped.append(f"{ref.key}: {type(err).__name__}: {err}")
            continue
        if ref.sha256 == "":
            ref = dataclasses.replace(ref, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        return ResumePoint(
            state=state, ref=ref, source=source, warnings=warnings, skipped=skipped
        ), skipped
    return None, skipped


def newest_listed_step(store: ObjectStore, job_id: str) -> int:
    """The highest step any attempt of the job checkpointed (0 if none): a lower bound of how far
    an earlier attempt got when its heartbeats did not reach the server (Temporal unreachable)."""
    steps = (c.parse_checkpoint_key(k) for k in store.list(c.checkpoints_prefix(job_id)))
    return max((p[1] for p in steps if p is not None), default=0)


# --------------------------------------------------------------------------------------------
# Published frames: found and reused by a retry whose predecessor's completion was lost

FRAMES_MANIFEST_VERSION = 1


@dataclass
class PublishedFrames:
    """Frames an earlier attempt of the job stored, verified: same job, parameters, model."""

    data: bytes
    sha256: str
    key: str
    attempt: int
    wasted_steps: int  # the job's wasted steps as that attempt counted them


def frames_manifest(
    model: LoadedModel,
    params: GenerationParams,
    *,
    job_id: str,
    attempt: int,
    frames_key: str,
    frames_sha256: str,
    wasted_steps: int,
) -> bytes:
    """The JSON written after an attempt's frames (`contracts.frames_manifest_key`)."""
    return json.dumps(
        {
            "version": FRAMES_MANIFEST_VERSION,
            "job_id": job_id,
            "attempt": attempt,
            "frames_key": frames_key,
            "frames_sha256": frames_sha256,
            "params": _params_dict(params),
            "model": model.spec.name,
            "weights_hash": model.weights_hash,
            "wasted_steps": wasted_steps,
        },
        sort_keys=True,
    ).encode()


def find_published_frames(
    store: ObjectStore,
    model: LoadedModel,
    params: GenerationParams,
    *,
    job_id: str,
    before_attempt: int,
) -> tuple[PublishedFrames | None, list[str], bool]:
    """The newest earlier attempt's frames that are complete and this request's, checked by
    their manifest (job, parameters, model and weights) and by the frames' own sha256; the
    reasons others were skipped; and whether any earlier attempt finished this request's
    denoise (its manifest matches, even if its frames are unusable: those steps count as done).
    Raises the store's error if it cannot be read."""
    # Imported here: media pulls in PyAV, which the rest of this module does not need.
    from activities.media import frames_from_bytes, frames_sha256

    attempts = sorted(
        (a for k in store.list(c.frames_prefix(job_id)) if (a := c.parse_frames_manifest_key(k))),
        reverse=True,
    )
    want = {
        "version": FRAMES_MANIFEST_VERSION,
        "job_id": job_id,
        "params": _params_dict(params),
        "model": model.spec.name,
        "weights_hash": model.weights_hash,
    }
    skipped: list[str] = []
    finished = False
    for attempt in (a for a in attempts if a < before_attempt):
        key = c.frames_manifest_key(job_id, attempt)
        try:
            manifest = json.loads(store.get(key))
            mismatch = [k for k, v in want.items() if manifest.get(k) != v]
            if mismatch:
                skipped.append(f"{key}: other {', '.join(mismatch)}")
                continue
            finished = True
            data = store.get(str(manifest["frames_key"]))
            digest = frames_sha256(frames_from_bytes(data))
        except NotFound:
            skipped.append(f"{key}: frames missing")
            continue
        except (ValueError, KeyError, TypeError) as err:  # damaged manifest or frames
            skipped.append(f"{key}: {type(err).__name__}: {err}")
            continue
        if digest != manifest.get("frames_sha256"):
            skipped.append(f"{key}: frames hash to {digest[:12]}…, not the manifest's")
            continue
        wasted = manifest.get("wasted_steps")
        return (
            PublishedFrames(
                data=data,
                sha256=digest,
                key=str(manifest["frames_key"]),
                attempt=attempt,
                wasted_steps=wasted if isinstance(wasted, int) and wasted >= 0 else 0,
            ),
            skipped,
            True,
        )
    return None, skipped, finished
