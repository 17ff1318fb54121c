"""The simulator's two figures. matplotlib is imported inside the functions (Agg backend), so
the simulator and its tests run without it (it comes with the `bench` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = ("#c0392b", "#2874a6", "#229954", "#7d3c98")
# p95 latencies above this (an overloaded fleet) are drawn at the top edge with their value,
# so that they do not flatten every other line.
LATENCY_CAP_MIN = 45.0


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def waste_vs_interval(sweep: dict[str, Any], path: Path) -> Path:
    """GPU hours lost a day (preemptions + checkpoint overhead) and p95 latency against the
    checkpoint interval, one line per cost model, Young–Daly marked.

    `sweep`: {"intervals": [...], "models": {label: {"waste": [...], "total": [...],
    "p95_min": [...], "p95_preempted_min": [...], "yd": (interval, total, p95_min)}},
    "off": (waste, p95_min, p95_preempted_min), "per_step": (total, p95_min,
    p95_preempted_min), "yd_blocking": (interval, total, p95_min), "title": str}.
    """
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    xs = sweep["intervals"]
    for colour, (label, m) in zip(COLOURS, sweep["models"].items(), strict=False):
        ax.plot(xs, m["total"], "o-", color=colour, label=f"{label}: lost + overhead")
        ax.plot(xs, m["waste"], ":", color=colour, alpha=0.8)
        yd_x, yd_total, yd_p95 = m["yd"]
        ax.plot([yd_x], [yd_total], "*", color=colour, markersize=15, markeredgecolor="k")
        _capped(bx, xs, m["p95_min"], "o-", colour, label)
        _capped(bx, xs, m["p95_preempted_min"], "s:", colour, None, markersize=4, alpha=0.8)
        bx.plot([yd_x], [yd_p95], "*", color=colour, markersize=15, markeredgecolor="k")
    off_waste, off_p95, off_p95p = sweep["off"]
    step_total, step_p95, step_p95p = sweep["per_step"]
    ydb_x, ydb_total, _ = sweep["yd_blocking"]
    ax.axhline(off_waste, color="grey", ls="--", label="no checkpoint")
    ax.axhline(step_total, color="k", ls="-.", label="per-step async")
    ax.plot(
        [ydb_x],
        [ydb_total],
        "P",
        color=COLOURS[2],
        markersize=11,
        markeredgecolor="k",
        label="async, Young–Daly on the blocking part",
    )
    bx.axhline(off_p95, color="grey", ls="--", label="no checkpoint")
    bx.axhline(off_p95p, color="grey", ls=":")
    bx.axhline(step_p95, color="k", ls="-.", label="per-step async")
    bx.axhline(step_p95p, color="k", ls=":")
    bx.plot([], [], "s:", color="grey", markersize=4, label="dotted: preempted jobs only")
    ax.plot([], [], ":", color="grey", label="dotted: lost work only")
    ax.plot([], [], "*", color="w", markeredgecolor="k", markersize=12, label="Young–Daly interval")
    for axis in (ax, bx):
        axis.set_xscale("log")
        axis.set_xticks(xs)
        axis.set_xticklabels([f"{x:g}" for x in xs])
        axis.minorticks_off()
        axis.set_xlabel("checkpoint interval (s)")
        axis.grid(True, which="major", alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("GPU hours a day")
    ax.set_title("GPU time lost to preemptions and checkpoints", fontsize=10)
    bx.set_ylabel("p95 latency, arrival to done (min)")
    bx.set_title("p95 latency: all jobs (solid), preempted jobs (dotted)", fontsize=10)
    bx.set_ylim(top=LATENCY_CAP_MIN * 1.08)
    for axis in (ax, bx):
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return _save(fig, sweep["title"], path)


def _capped(
    axis: Any,
    xs: list[float],
    ys: list[float],
    style: str,
    colour: str,
    label: str | None,
    **kw: Any,
) -> None:
    """Plot ys, clipping values above LATENCY_CAP_MIN to the cap and writing them out."""
    clipped = [min(y, LATENCY_CAP_MIN) for y in ys]
    axis.plot(xs, clipped, style, color=colour, label=label, **kw)
    for x, y in zip(xs, ys, strict=True):
        if y > LATENCY_CAP_MIN and label is not None:  # one note per point is enough
            axis.annotate(
                f"all jobs: {y:.0f} min (overloaded fleet)",
                (x, LATENCY_CAP_MIN),
                fontsize=7,
                color=colour,
                xytext=(6, -12),
                textcoords="offset points",
            )


def cost_vs_spot_share(sweep: dict[str, Any], path: Path) -> Path:
    """Cost per video, dollars lost a day and p95 latency against the spot share, one line
    per policy.

    `sweep`: {"shares": [...], "policies": {label: {"cost": [...], "lost_usd": [...],
    "p95_min": [...]}}, "title": str}.
    """
    plt = _pyplot()
    fig, (ax, cx, bx) = plt.subplots(1, 3, figsize=(14, 4.2), dpi=100)
    xs = [100 * s for s in sweep["shares"]]
    styles = ("o-", "s--", "^-", "d:")
    for colour, style, (label, p) in zip(COLOURS, styles, sweep["policies"].items(), strict=False):
        ax.plot(xs, p["cost"], style, color=colour, label=label)
        # Log scale: $0 (no preemptions, no checkpoints) is drawn at $1.
        cx.plot(xs, [max(1.0, v) for v in p["lost_usd"]], style, color=colour, label=label)
        bx.plot(xs, p["p95_min"], style, color=colour, label=label)
    ax.set_ylabel("GPU cost per video ($)")
    ax.set_title("cost per video (busy GPU time)", fontsize=10)
    cx.set_ylabel("$ a day")
    cx.set_yscale("log")
    cx.set_ylim(bottom=0.8)
    cx.set_title("lost work + restores + checkpoint overhead", fontsize=10)
    bx.set_ylabel("p95 latency, arrival to done (min)")
    bx.set_title("p95 latency", fontsize=10)
    for axis in (ax, cx, bx):
        axis.set_xlabel("spot share of the fleet (%)")
        axis.grid(True, alpha=0.3)
    cx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return _save(fig, sweep["title"], path)


def _save(fig: Any, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
