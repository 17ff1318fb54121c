"""The checkpoint format and writer: resume equals an uninterrupted run bit for bit, corrupt or
incompatible checkpoints are refused, the writer keeps two and survives a failing store; on
both object-store backends (FileStore and S3 over HTTP to moto)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import s3server
import torch

from activities import checkpoint, pipeline
from activities.checkpoint import (
    CheckpointCorrupt,
    CheckpointIncompatible,
    CheckpointPolicy,
    CheckpointWriter,
)
from videogen import catalog, metrics
from videogen import contracts as c
from videogen.storage import FileStore, ObjectStore, S3Store, StorageError

JOB = "video_ckpt"


@pytest.fixture(scope="module")
def model() -> pipeline.LoadedModel:
    return pipeline.load_pipeline(catalog.TINY_SPEC, "cpu")


def _params(**kw: object) -> pipeline.GenerationParams:
    p = pipeline.GenerationParams(
        prompt="a red kite",
        negative_prompt="blurry",
        seed=11,
        width=64,
        height=64,
        num_frames=9,
        num_inference_steps=8,
        guidance_scale=5.0,
    )
    return dataclasses.replace(p, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.stack)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore(tmp_path / "store")
    server: s3server.S3Server = request.getfixturevalue("moto_s3")
    return S3Store(server.create_bucket(), "vg", client=server.client())


def _run_to(
    model: pipeline.LoadedModel, params: pipeline.GenerationParams, step: int
) -> pipeline.DenoiseState:
    state = pipeline.prepare(model, params)
    while state.next_step < step:
        pipeline.denoise_step(model, state)
    return state


def _file(model: pipeline.LoadedModel, state: pipeline.DenoiseState) -> bytes:
    snap = checkpoint.snapshot(state, job_id=JOB, attempt=1, device="cpu")
    return checkpoint.encode(snap, model)


def _finish(model: pipeline.LoadedModel, state: pipeline.DenoiseState) -> torch.Tensor:
    while not state.done:
        pipeline.denoise_step(model, state)
    return torch.from_numpy(pipeline.decode(model, state))


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_resume_at_every_step_equals_an_uninterrupted_run(
    model: pipeline.LoadedModel, guidance: float
) -> None:
    params = _params(guidance_scale=guidance)
    reference = torch.from_numpy(pipeline.generate(model, params))
    for k in range(params.num_inference_steps + 1):
        data = _file(model, _run_to(model, params, k))
        ckpt = checkpoint.decode(data, hashlib.sha256(data).hexdigest())
        assert ckpt.next_step == k
        checkpoint.check_compatible(
            ckpt, model, params, job_id=JOB, num_threads=torch.get_num_threads()
        )
        resumed = checkpoint.restore(model, ckpt, params)
        assert torch.equal(_finish(model, resumed), reference), f"resume at step {k} differs"


def test_restored_tensors_live_in_aligned_memory_of_their_own(model: pipeline.LoadedModel) -> None:
    """safetensors hands out views into bytes objects at process-dependent offsets; the state a
    resume computes from has torch's own 64-byte aligned memory, like an uninterrupted run's."""
    params = _params()
    state = checkpoint.restore(
        model, checkpoint.decode(_file(model, _run_to(model, params, 3))), params
    )
    tensors = {
        "latents": state.latents,
        "prompt_embeds": state.prompt_embeds,
        "negative_prompt_embeds": state.negative_prompt_embeds,
    }
    tensors.update(
        {
            f"scheduler.{k}": v
            for k, v in vars(state.scheduler).items()
            if isinstance(v, torch.Tensor)
        }
    )
    tensors.update(
        {
            f"scheduler.model_outputs[{i}]": v
            for i, v in enumerate(state.scheduler.model_outputs)
            if isinstance(v, torch.Tensor)
        }
    )
    assert len(tensors) > 4
    for name, t in tensors.items():
        assert t is not None and t.data_ptr() % 64 == 0, f"{name} at {t.data_ptr() % 64} mod 64"


def test_naive_resume_from_latents_only_is_wrong(model: pipeline.LoadedModel) -> None:
    """Guards the test above: restoring just the latents (fresh scheduler) changes the video,
    so equality there really depends on the scheduler state being restored."""
    params = _params()
    reference = torch.from_numpy(pipeline.generate(model, params))
    state = _run_to(model, params, 4)
    fresh = pipeline.prepare(model, params)
    fresh.latents, fresh.next_step = state.latents, state.next_step
    assert not torch.equal(_finish(model, fresh), reference)


def test_manifest_records_what_a_resume_must_match(model: pipeline.LoadedModel) -> None:
    data = _file(model, _run_to(model, _params(), 3))
    m = checkpoint.decode(data).manifest
    assert m["format_version"] == checkpoint.FORMAT_VERSION
    assert m["job_id"] == JOB and m["next_step"] == 3 and m["total_steps"] == 8
    assert m["model"] == {"name": "videogen-tiny", "weights_hash": model.weights_hash}
    assert m["num_threads"] == torch.get_num_threads()
    assert m["cpu_kernels"] == checkpoint.cpu_kernels()
    assert m["cpu_kernels"]["aten"] == torch.backends.cpu.get_cpu_capability()
    assert m["device_name"].startswith("cpu (")
    assert m["scheduler"]["class"] == "UniPCMultistepScheduler"
    assert {"torch", "diffusers", "transformers", "safetensors"} <= set(m["versions"])
    assert m["params"]["prompt"] == "a red kite" and m["params"]["seed"] == 11
    assert len(m["checksum"]) == 64


def test_corruption_anywhere_is_detected(model: pipeline.LoadedModel) -> None:
    data = _file(model, _run_to(model, _params(), 2))
    good_sha = hashlib.sha256(data).hexdigest()
    # A flipped bit in the tensor data, with and without the heartbeat's sha256.
    flipped = bytearray(data)
    flipped[-5] ^= 0x01
    with pytest.raises(CheckpointCorrupt, match="sha256"):
        checkpoint.decode(bytes(flipped), good_sha)
    with pytest.raises(CheckpointCorrupt, match="checksum"):
        checkpoint.decode(bytes(flipped))
    # Truncated (a torn write elsewhere than an atomic store) and garbage.
    with pytest.raises(CheckpointCorrupt):
        checkpoint.decode(data[: len(data) // 2])
    with pytest.raises(CheckpointCorrupt):
        checkpoint.decode(b"not a checkpoint")


def test_incompatible_checkpoints_are_refused(model: pipeline.LoadedModel) -> None:
    params = _params()
    ckpt = checkpoint.decode(_file(model, _run_to(model, params, 2)))
    threads = torch.get_num_threads()
    with pytest.raises(CheckpointIncompatible, match="job"):
        checkpoint.check_compatible(ckpt, model, params, job_id="video_other", num_threads=threads)
    with pytest.raises(CheckpointIncompatible, match="parameters"):
        checkpoint.check_compatible(ckpt, model, _params(seed=12), job_id=JOB, num_threads=threads)
    with pytest.raises(CheckpointIncompatible, match="threads"):
        checkpoint.check_compatible(ckpt, model, params, job_id=JOB, num_threads=threads + 1)
    # Written where torch's CPU kernels are the AVX-512 ones: the rest would compute other bits.
    avx512 = {**ckpt.manifest["cpu_kernels"], "aten": "AVX512", "flags": ["avx512f"]}
    elsewhere = checkpoint.Checkpoint({**ckpt.manifest, "cpu_kernels": avx512}, ckpt.tensors)
    with pytest.raises(CheckpointIncompatible, match="kernels differ"):
        checkpoint.check_compatible(elsewhere, model, params, job_id=JOB, num_threads=threads)
    other = dataclasses.replace(model, weights_hash="0" * 64)
    with pytest.raises(CheckpointIncompatible, match="weights"):
        checkpoint.check_compatible(ckpt, other, params, job_id=JOB, num_threads=threads)
    newer = checkpoint.Checkpoint({**ckpt.manifest, "versions": {"torch": "0.0.1"}}, ckpt.tensors)
    warnings = checkpoint.check_compatible(newer, model, params, job_id=JOB, num_threads=threads)
    assert warnings and "torch" in warnings[0]


def test_keys_are_per_attempt_and_step_under_a_hashed_prefix() -> None:
    key = c.checkpoint_key("video_abc", 3, 45)
    shard = hashlib.sha256(b"video_abc").hexdigest()[:2]
    assert key == f"checkpoints/{shard}/video_abc/attempt-3/step-000045.safetensors"
    assert key.startswith(c.checkpoints_prefix("video_abc"))
    assert c.parse_checkpoint_key(key) == (3, 45)
    assert c.parse_checkpoint_key(c.frames_key("video_abc", 3)) is None
    # Ids spread over many shards.
    shards = {c.checkpoints_prefix(f"video_{i}").split("/")[1] for i in range(200)}
    assert len(shards) > 100


def test_policy() -> None:
    steps = CheckpointPolicy(mode="steps", every_steps=5)
    assert not steps.due(steps_since=4, seconds_since=100, cost_s=1)
    assert steps.due(steps_since=5, seconds_since=0, cost_s=1)
    secs = CheckpointPolicy(mode="seconds", every_s=30)
    assert not secs.due(steps_since=50, seconds_since=29, cost_s=1)
    assert secs.due(steps_since=1, seconds_since=30, cost_s=1)
    assert not secs.due(steps_since=0, seconds_since=60, cost_s=1)  # nothing new to save
    adaptive = CheckpointPolicy(mode="adaptive", mtbf_s=3600)
    # Young-Daly: sqrt(2 * 2 s * 3600 s) = 120 s.
    assert adaptive.interval_s(2.0) == pytest.approx(120.0)
    assert adaptive.due(steps_since=1, seconds_since=0.1, cost_s=None)  # measure C first
    assert not adaptive.due(steps_since=9, seconds_since=119, cost_s=2.0)
    assert adaptive.due(steps_since=9, seconds_since=121, cost_s=2.0)
    off = CheckpointPolicy(mode="off")
    assert not off.due(steps_since=1000, seconds_since=1e6, cost_s=0.1)
    with pytest.raises(ValueError, match="adaptive, steps, seconds, off"):
        CheckpointPolicy(mode="sometimes")


def test_writer_keeps_the_newest_two_and_resume_falls_back(
    model: pipeline.LoadedModel, store: ObjectStore
) -> None:
    params = _params()
    reference = torch.from_numpy(pipeline.generate(model, params))
    writer = CheckpointWriter(store, model, job_id=JOB, attempt=1)
    state = pipeline.prepare(model, params)
    refs = []
    for _ in range(3):
        pipeline.denoise_step(model, state)
        pipeline.denoise_step(model, state)
        assert writer.submit(checkpoint.snapshot(state, job_id=JOB, attempt=1, device="cpu"))
        writer.drain()
        refs.append(writer.newest)
    writer.close()
    assert [r.step for r in refs] == [2, 4, 6]
    assert writer.previous == refs[1]
    # The oldest is deleted once two newer ones are confirmed.
    assert store.list(c.checkpoints_prefix(JOB)) == [refs[1].key, refs[2].key]
    assert (
        refs[2].uri.endswith(refs[2].key)
        and refs[2].sha256 == hashlib.sha256(store.get(refs[2].key)).hexdigest()
    )

    def resume(
        newest: checkpoint.CheckpointRef | None, previous: checkpoint.CheckpointRef | None
    ) -> checkpoint.ResumePoint | None:
        found, _ = checkpoint.find_resume_point(
            store,
            model,
            params,
            job_id=JOB,
            num_threads=torch.get_num_threads(),
            newest=newest,
            previous=previous,
        )
        return found

    found = resume(refs[2], refs[1])
    assert found is not None and found.source == "heartbeat" and found.state.next_step == 6
    assert torch.equal(_finish(model, found.state), reference)

    # Newest corrupt: the previous one, and the video is still the same.
    good = store.get(refs[2].key)
    store.put(refs[2].key, good[:-10] + b"x" * 10)
    found = resume(refs[2], refs[1])
    assert found is not None and found.source == "previous" and found.state.next_step == 4
    assert any("sha256" in s for s in found.skipped)
    assert torch.equal(_finish(model, found.state), reference)

    # No heartbeat at all (the attempt died before its first one reached the server): listing.
    store.put(refs[2].key, good)
    found = resume(None, None)
    assert found is not None and found.source == "listing" and found.state.next_step == 6

    # Nothing usable: start over, with the reasons.
    store.delete_prefix(c.checkpoints_prefix(JOB))
    found, skipped = checkpoint.find_resume_point(
        store,
        model,
        params,
        job_id=JOB,
        num_threads=torch.get_num_threads(),
        newest=refs[2],
        previous=refs[1],
    )
    assert found is None and len(skipped) == 2 and all("missing" in s for s in skipped)


class _DownStore(FileStore):
    """A store whose writes fail (an S3 outage) until `up` is set."""

    up = False
    puts = 0

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self.puts += 1
        if not self.up:
            raise StorageError("503 Slow Down")
        super().put(key, data, if_absent=if_absent)


def test_writer_retries_with_backoff_then_goes_on_without(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    store = _DownStore(tmp_path)
    sleeps: list[float] = []
    writer = CheckpointWriter(
        store, model, job_id=JOB, attempt=1, retries=3, backoff_s=0.5, sleep=sleeps.append
    )
    state = _run_to(model, _params(), 2)
    before = metrics.CHECKPOINT_FAILURES._value.get()
    assert writer.write(checkpoint.snapshot(state, job_id=JOB, attempt=1, device="cpu")) is None
    assert store.puts == 3 and sleeps == [0.5, 1.0]
    assert writer.newest is None and writer.stats.failed == 1
    assert "Slow Down" in (writer.stats.last_error or "")
    assert metrics.CHECKPOINT_FAILURES._value.get() == before + 1
    # The store comes back: the next checkpoint is written.
    store.up = True
    ref = writer.write(checkpoint.snapshot(state, job_id=JOB, attempt=1, device="cpu"))
    assert ref is not None and writer.newest == ref


def test_a_failed_background_upload_is_counted_once_however_often_drained(
    model: pipeline.LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CheckpointWriter(FileStore(tmp_path), model, job_id=JOB, attempt=1)

    def broken(*_: object) -> bytes:  # fails before the write's own retries
        raise RuntimeError("cannot serialise")

    monkeypatch.setattr(checkpoint, "encode", broken)
    state = _run_to(model, _params(), 2)
    before = metrics.CHECKPOINT_FAILURES._value.get()
    assert writer.submit(checkpoint.snapshot(state, job_id=JOB, attempt=1, device="cpu"))
    for _ in range(3):
        writer.drain()
    writer.close()
    assert writer.stats.failed == 1
    assert metrics.CHECKPOINT_FAILURES._value.get() == before + 1
