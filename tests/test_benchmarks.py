"""The benchmarks still run (tiny sizes); their figures are printed, never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_checkpoint_overhead_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "checkpoint_overhead.py"), "--size", "64x64",
         "--frames", "9", "--steps", "4", "--repeats", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "ms/step" in out.stdout and "background" in out.stdout
