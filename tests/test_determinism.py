"""Same request, same bytes: frames and MP4s compared across fresh processes, under CPU load.

In-process checks cannot see what differs between processes (heap contents, allocation
addresses, library initialisation), and an idle machine hides what depends on scheduling. So
every check here runs its work in several fresh Python processes, some of them while other
processes keep both cores busy, and compares all of them with this process's result:

* encoding: real clips of the built-in model at every size it serves;
* generation: the frames of every size from fresh worker-like processes, and a resume from a
  checkpoint that another process wrote, under load.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers import reference_frames

from activities import media
from videogen import catalog

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE = str(Path(__file__).with_name("determinism_probe.py"))
SIZES = catalog.TINY_SPEC.sizes
# Clips whose MP4s are compared: every size, and several 64x64 ones (the size where x264's
# output once varied with the content).
CLIPS = [(size, 21) for size in SIZES] + [("64x64", seed) for seed in (12, 13, 14)]
STEPS = 4


@contextmanager
def cpu_load(processes: int = 2) -> Iterator[None]:
    """Busy-loop processes, one per core: the work under test competes for every core."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def probe(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, PROBE, *args],
        cwd=REPO_ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def loaded(proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
    """Wait until a `generate` probe has its model, ready to be told to go."""
    assert proc.stdout is not None and proc.stdout.readline().strip() == "loaded"
    return proc


def go(proc: subprocess.Popen[str]) -> dict[str, str]:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.close()
    return result(proc)


def result(proc: subprocess.Popen[str]) -> dict[str, str]:
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait(timeout=240)
    assert proc.returncode == 0, f"probe exited with {proc.returncode}"
    return json.loads(out.strip().splitlines()[-1])


def body(size: str, seed: int) -> dict[str, object]:
    return {"size": size, "seed": seed, "seconds": 1, "num_inference_steps": STEPS}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """Real clips of the built-in model saved as .npy, at the size asked for (as the encoder
    gets them, scaled up from the model's 64x64), and this process's MP4 of each."""
    directory = tmp_path_factory.mktemp("clips")
    mp4s = {}
    for size, seed in CLIPS:
        width, height = catalog.TINY_SPEC.parse_size(size)
        frames = media.scale_frames(reference_frames(body(size, seed)), width, height)
        name = f"{size}-{seed}.npy"
        (directory / name).write_bytes(media.frames_to_bytes(frames))
        mp4s[name] = media.encode_mp4(frames, catalog.TINY_SPEC.fps)
    return directory, mp4s


def test_repeated_encodes_in_one_process_are_identical(
    clips: tuple[Path, dict[str, bytes]],
) -> None:
    directory, mp4s = clips
    for name, expected in mp4s.items():
        frames = media.frames_from_bytes((directory / name).read_bytes())
        for _ in range(3):
            assert media.encode_mp4(frames, catalog.TINY_SPEC.fps) == expected, name


def test_encodes_in_fresh_processes_under_load_are_identical(
    clips: tuple[Path, dict[str, bytes]],
) -> None:
    directory, mp4s = clips
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in mp4s.items()}
    idle = [result(probe("encode", str(directory))) for _ in range(3)]
    with cpu_load():
        running = [probe("encode", str(directory)) for _ in range(3)]  # concurrently, too
        busy = [result(p) for p in running]
    for i, got in enumerate(idle + busy):
        assert got == expected, f"process {i} ({'idle' if i < 3 else 'under load'})"


def test_frames_identical_in_fresh_processes_under_load_with_and_without_resume(
    tmp_path: Path,
) -> None:
    """Every size from a fresh idle process, which also writes checkpoints midway; then every
    size again, and two resumed from those checkpoints, in another fresh process under load.
    All give this process's frames, bit for bit."""
    resumed = ("64x64", "256x256")
    jobs = [body(s, 21) for s in SIZES]
    ckpt = {s: str(tmp_path / f"{s}.safetensors") for s in resumed}
    first = [
        {**j, "checkpoint_at": 2, "checkpoint": ckpt[j["size"]]} if j["size"] in ckpt else j
        for j in jobs
    ]
    second = jobs + [{**body(s, 21), "resume": ckpt[s]} for s in resumed]
    (tmp_path / "first.json").write_text(json.dumps(first))
    (tmp_path / "second.json").write_text(json.dumps(second))

    # Both import torch at once; the second starts its work once the first has finished.
    first_proc, second_proc = (
        probe("generate", str(tmp_path / "first.json")),
        probe("generate", str(tmp_path / "second.json")),
    )
    idle = go(loaded(first_proc))
    loaded(second_proc)
    with cpu_load():
        busy = go(second_proc)

    for i, job in enumerate(second):
        expected = media.frames_sha256(reference_frames(body(job["size"], 21)))
        how = "resumed under load" if "resume" in job else "under load"
        assert idle.get(str(i), expected) == expected, f"{job['size']}: a fresh process differs"
        assert busy[str(i)] == expected, f"{job['size']}, {how}: a fresh process differs"


def test_frames_sha256_is_the_raw_rgb_bytes() -> None:
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    assert media.frames_sha256(frames) == hashlib.sha256(frames.tobytes()).hexdigest()
    # A strided view hashes as its contents, not its memory.
    assert (
        media.frames_sha256(frames[:, ::2])
        == hashlib.sha256(np.ascontiguousarray(frames[:, ::2]).tobytes()).hexdigest()
    )
    with pytest.raises(ValueError, match="uint8"):
        media.frames_sha256(frames.astype(np.int16))
