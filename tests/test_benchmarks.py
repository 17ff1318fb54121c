"""The benchmarks still run: the checkpoint loop on a tiny job, the harness's command line, and
the results writer on made-up figures. Figures are printed, never asserted; no stack is started
here (`make bench` does that)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import main as bench_main
from benchmarks.results import Benchmark, percentile, to_markdown, write

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_benchmark_runs_at_tiny_size(small_13b: Path, tmp_path: Path) -> None:
    # On the CPU, on the shared 1.3B-wide directory (the same cut --tiny would build): the
    # script, its children and its kill-and-resume, not figures.
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--tiny", "--dir", str(small_13b)]
    run = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())
    resumed = figures["kill_and_resume"]
    # The kill lands a moment after the child reports step 2: it may have written step 3.
    assert resumed["killed_after_step"] == 2 and resumed["resumed_from_step"] >= 2
    assert resumed["equal_to_uninterrupted"] is True
    assert len(figures["step_s"]) == figures["job"]["steps"] == 4
    assert figures["checkpoint"]["bytes"] > 0 and figures["peak_gpu_bytes"] is None
    assert figures["text_encoder_offload"]["equal_to_resident"] is True
    lines = [line.split() for line in run.stdout.splitlines()]
    assert ["resumed", "frames", "equal", "True"] in lines
    assert lines[-1] == ["frames", "equal", "True"]  # the table ends with the offloaded run


@pytest.mark.slow
def test_checkpoint_overhead_benchmark_runs() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "checkpoint_overhead.py"),
            "--size",
            "64x64",
            "--frames",
            "9",
            "--steps",
            "4",
            "--every",
            "2",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "ms/step" in out.stdout
    for mode in (
        "never",
        "every 2 steps, background",
        "every step, background",
        "every step, synchronous",
    ):
        assert mode in out.stdout


def test_harness_help_lists_every_benchmark() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    for name in (
        "--quick",
        "--only",
        "--out",
        "pickup",
        "admission",
        "overhead",
        "checkpoint",
        "recovery",
        "cancel",
        "adherence",
    ):
        assert name in out.stdout


def test_harness_refuses_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main(["--only", "pickup,nope"])
    assert exc.value.code == 2 and "nope" in capsys.readouterr().err


def test_results_are_written_as_json_and_a_markdown_table_per_benchmark(tmp_path: Path) -> None:
    meta = {
        "date": "2026-01-02 03:04 UTC",
        "cpu": "Test CPU",
        "cores": 2,
        "torch_threads": 2,
        "load_average_at_start": [0.1, 0.2, 0.3],
        "python": "3.12",
        "torch": "2.x",
        "temporalio": "1.x",
        "temporal_cli": "1.x",
        "os": "Linux",
        "git_commit": "abc",
        "argv": "--quick",
        "total_seconds": 12.5,
    }
    pickup = Benchmark(
        "pickup", "Pickup latency", "How | it was measured.", config={"stack": "embedded"}
    )
    pickup.add_distribution("POST → started", [0.05, 0.06, 0.07, 0.2], config="idle worker")
    failed = Benchmark("recovery", "Recovery", "Kill it.", error="RuntimeError: boom")
    js, md = write(tmp_path, meta, [pickup, failed])

    data = json.loads(js.read_text())
    assert data["meta"]["cpu"] == "Test CPU"
    [b, f] = data["benchmarks"]
    assert [x["name"] for x in b["figures"]] == [
        "POST → started p50",
        "POST → started p95",
        "POST → started p99",
    ]
    assert b["figures"][0]["runs"] == 4 and b["figures"][0]["unit"] == "ms"
    assert abs(b["figures"][0]["value"] - 65.0) < 1e-9
    assert f["error"] == "RuntimeError: boom" and f["figures"] == []

    text = md.read_text()
    assert text == to_markdown(meta, [pickup, failed])
    assert "2026-01-02 03:04 UTC" in text and "Test CPU, 2 cores" in text
    assert "| figure | value | runs | config |" in text
    assert "| POST → started p50 | 65.0 ms | 4 | idle worker |" in text
    assert "How \\| it" not in text  # the method is prose, not a table cell
    assert "**Did not finish:** RuntimeError: boom" in text


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
