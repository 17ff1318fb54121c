"""The product requirements' assumptions, their own arithmetic, and the runs `python -m sim` makes.

"The document" below is the product requirements: their figures, by section (§), are restated
in sim/README.md ("The requirements' figures").

Three groups of runs:

- the reproduction: the document's §2/§4 figures under its own assumptions (a saturated fleet
  of 730 spot instances, 10 % of them preempted an hour, none with a notice, constant job
  lengths), each row next to the document's value with a relative error and a tolerance;
- the policy comparison on the default fleet (`default_fleet`): no checkpoints, fixed intervals,
  Young–Daly from the checkpoint cost, per-step asynchronous checkpoints;
- two sweeps for the plots: waste and p95 latency against the checkpoint interval, and cost per
  video against the spot share.

Every run is a `Run` (a name, a `Fleet`, a policy, a seed), so the CLI can farm them out to
processes and the results stay reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from sim.model import CheckpointCost, Fleet, Result, simulate
from videogen.checkpoint_policy import CheckpointPolicy

# --------------------------------------------------------------------------------------------
# The product requirements' numbers (restated in sim/README.md, "The requirements' figures")

DOC_SPOT_INSTANCES = 730  # §2: "730 spot instances" (70 % of 1,042)
DOC_RATE_PER_HOUR = 0.10  # §2/§4: "10% hourly interruption rate"
DOC_CKPT_S = 5.0  # §4: "5s save"; §1: "5-15 seconds"
DOC_PARAGRAPH = {  # §2, "Staff+ Signal"
    "preemptions_per_hour": 73.0,
    "loss_min": 2.5,
    "usd_per_preemption": 0.15,
    "usd_per_day": 262.0,
    "usd_per_preemption_30s": 0.03,
    "usd_per_day_30s": 53.0,
}
DOC_TABLE = {  # §4, "Problem 2": no checkpoint / 30 s / 2 min
    "gpu_h_per_day": (182.0, 6.0, 36.0),
    "usd_per_day": (637.0, 21.0, 126.0),
    "extra_wait_min": (4.0, 1.0, 2.5),
    "overhead": (0.0, 0.08, 0.04),
}
DOC_VIDEOS_PER_DAY = 100_000
DOC_GPUS = 1042
DOC_ON_DEMAND_USD_PER_VIDEO = 0.97  # §7 stage 2

# The measured-C assumption for a Wan2.1 480p job (a ~42 MB checkpoint, measured earlier on the
# development machine's CPU: docs/checkpoints.md, "What resumable denoising needs"). Not
# measured on a GPU here: snapshot to host ~0.03 s, checksum + safetensors encoding + sha256
# ~0.15 s (scaled from 25 MB in 0.09 s on this machine's CPU), upload at ~100 MB/s plus a request
# ~0.47 s: C = 0.65 s written, 0.03 s of it blocking the loop; reading it back ~0.6 s.
MEASURED_CKPT_MB = 42.0
MEASURED_WRITE_S = 0.65
MEASURED_BLOCKING_S = 0.03
MEASURED_RESTORE_S = 0.6

ASYNC = CheckpointCost(
    write_s=MEASURED_WRITE_S,
    blocking_s=MEASURED_BLOCKING_S,
    restore_s=MEASURED_RESTORE_S,
    size_mb=MEASURED_CKPT_MB,
)
SYNC_MEASURED = CheckpointCost(
    write_s=MEASURED_WRITE_S, restore_s=MEASURED_RESTORE_S, size_mb=MEASURED_CKPT_MB
)
SYNC_DOC = CheckpointCost(
    write_s=DOC_CKPT_S, restore_s=MEASURED_RESTORE_S, size_mb=MEASURED_CKPT_MB
)
COST_MODELS = {
    "sync C=5 s (document)": SYNC_DOC,
    "sync C=0.65 s": SYNC_MEASURED,
    "async C=0.65 s (worker)": ASYNC,
}

OFF = CheckpointPolicy(mode="off")
PER_STEP = CheckpointPolicy(mode="steps", every_steps=1)


def every(seconds: float) -> CheckpointPolicy:
    return CheckpointPolicy(mode="seconds", every_s=seconds)


def young_daly(fleet: Fleet) -> CheckpointPolicy:
    """The worker's adaptive policy with this fleet's MTBF: interval sqrt(2 · C · MTBF)."""
    return CheckpointPolicy(mode="adaptive", mtbf_s=fleet.mtbf_s)


def young_daly_on_blocking(fleet: Fleet) -> CheckpointPolicy:
    """A fixed interval: the worker policy's Young–Daly interval for the blocking part only."""
    interval = young_daly(fleet).interval_s(fleet.ckpt.blocking)
    assert interval is not None
    return every(round(interval))


def default_fleet(days: float = 1.0) -> Fleet:
    """The comparison's fleet: the document's scale with this project's failure handling.

    100K videos a day (Poisson), 1,042 GPUs 70/30 spot/on-demand, 10 %/h per spot instance,
    no notices (the document's table assumes none), 30-s heartbeat timeout (this project's
    lease), 3-min replacement (launch + model load). Jobs: 50 steps, lognormal GPU time with a
    mean of 12.5 min (CV 0.25): the one length at which the document's 1,042 GPUs, its busy
    730 spot instances and its 182 GPU h/day table row hold together (83 % utilisation).
    Prices: on-demand $3.50/h (the table's $637/182 h), spot 70 % less ($1.05/h: the "~50 %
    savings" of a 70/30 split).
    """
    return Fleet(
        days=days,
        videos_per_day=DOC_VIDEOS_PER_DAY,
        job_mean_s=750.0,
        job_cv=0.25,
        steps_per_job=50,
        gpus=DOC_GPUS,
        spot_share=0.7,
        interruptions_per_hour=DOC_RATE_PER_HOUR,
        notice_share=0.0,
        notice_s=120.0,
        notice_poll_s=5.0,
        heartbeat_timeout_s=30.0,
        requeue_s=0.1,
        replace_s=180.0,
        ckpt=ASYNC,
        spot_price=1.05,
        ondemand_price=3.50,
    )


def doc_fleet(job_s: float, days: float, ckpt: CheckpointCost) -> Fleet:
    """The document's world: 730 spot instances that are always busy, no notices.

    A preempted job waits 90 s before it runs again (detection, pickup and cold start: what
    the table's extra-wait row implies, 4 − 2.5 min), and the fleet stays at 730 instances.
    """
    return Fleet(
        days=days,
        saturated=True,
        job_mean_s=job_s,
        job_cv=0.0,
        steps_per_job=50,
        gpus=DOC_SPOT_INSTANCES,
        spot_share=1.0,
        interruptions_per_hour=DOC_RATE_PER_HOUR,
        notice_share=0.0,
        heartbeat_timeout_s=90.0,
        replace_s=0.0,
        ckpt=ckpt,
        spot_price=3.5,
        ondemand_price=3.5,
        waste_price=3.5,
    )


@dataclass(frozen=True)
class Run:
    name: str
    fleet: Fleet
    policy: CheckpointPolicy
    seed: int = 1


def execute(run: Run) -> tuple[str, Result]:
    """One run (a module-level function, so that worker processes can be handed it)."""
    return run.name, simulate(run.fleet, run.policy, seed=run.seed)


# --------------------------------------------------------------------------------------------
# The document's own arithmetic


def doc_arithmetic() -> dict[str, float]:
    """What the document's numbers imply, worked out (the inconsistencies are in these)."""
    per_hour = DOC_SPOT_INSTANCES * DOC_RATE_PER_HOUR
    per_day = per_hour * 24
    p = DOC_PARAGRAPH
    table_h = DOC_TABLE["gpu_h_per_day"]
    implied_loss_s = [h * 3600 / per_day for h in table_h]
    job_s = 300.0  # §3: 5 min a video
    price = p["usd_per_preemption"] / (p["loss_min"] / 60)  # $/GPU h behind "$0.15 each"
    return {
        "preemptions_per_hour": per_hour,
        "preemptions_per_day": per_day,
        "paragraph_gpu_h_per_day": per_day * p["loss_min"] / 60,
        "paragraph_usd_per_day": per_day * p["usd_per_preemption"],
        "price_per_h_paragraph": price,
        "price_per_h_table": DOC_TABLE["usd_per_day"][0] / table_h[0],
        "table_gpu_h_per_day_as_minutes_per_hour": per_hour * p["loss_min"],
        "table_implied_loss_s_none": implied_loss_s[0],
        "table_implied_loss_s_30s": implied_loss_s[1],
        "table_implied_loss_s_2min": implied_loss_s[2],
        "rows_gap_s_per_preemption": implied_loss_s[2] - implied_loss_s[1],
        "usd_30s_as_loss_s": p["usd_per_preemption_30s"] / price * 3600,
        "paragraph_usd_per_day_30s_avg": per_day * 15 / 3600 * price,
        "overhead_30s_sync": DOC_CKPT_S / 30.0,
        "overhead_60s_sync": DOC_CKPT_S / 60.0,
        "overhead_120s_sync": DOC_CKPT_S / 120.0,
        "overhead_gpu_h_per_day_at_8pct": 0.08 * DOC_SPOT_INSTANCES * 24,
        "p_preempt_per_5min_job": 1 - math.exp(-DOC_RATE_PER_HOUR * job_s / 3600),
        "gpus_for_100k_at_5min": DOC_VIDEOS_PER_DAY * job_s / 86_400,
        "gpu_min_per_video_for_1042": DOC_GPUS * 1440 / DOC_VIDEOS_PER_DAY,
        "young_daly_s_doc": math.sqrt(2 * DOC_CKPT_S * 3600 / DOC_RATE_PER_HOUR),
        "young_daly_s_measured": math.sqrt(2 * MEASURED_WRITE_S * 3600 / DOC_RATE_PER_HOUR),
        "on_demand_usd_per_video_5min": job_s / 3600 * 3.5,
        "on_demand_usd_per_video_1042": DOC_GPUS * 24 * 3.5 / DOC_VIDEOS_PER_DAY,
        "wait_restart_min_none": DOC_TABLE["extra_wait_min"][0] - 2.5,
        "wait_restart_min_30s": DOC_TABLE["extra_wait_min"][1] - 0.25,
        "wait_restart_min_2min": DOC_TABLE["extra_wait_min"][2] - 1.0,
    }


# --------------------------------------------------------------------------------------------
# Runs


def reproduction_runs(days: float) -> list[Run]:
    """The document's world at 5-min jobs (§2, §3) and at 12.5-min jobs (what 182 h implies).

    Waste rows count work only (C = 0: "you lose at most 30 seconds of work"); the overhead
    rows use the document's 5-s synchronous save.
    """
    free = CheckpointCost()
    runs = []
    for job_s, tag in ((300.0, "5min"), (750.0, "12.5min")):
        runs += [
            Run(f"doc/{tag}/off", doc_fleet(job_s, days, free), OFF),
            Run(f"doc/{tag}/30s", doc_fleet(job_s, days, free), every(30)),
            Run(f"doc/{tag}/120s", doc_fleet(job_s, days, free), every(120)),
        ]
    for interval in (30, 60, 120):
        runs.append(
            Run(f"doc/12.5min/{interval}s/C5", doc_fleet(750.0, days, SYNC_DOC), every(interval))
        )
    return runs


def comparison_runs(days: float) -> list[Run]:
    base = default_fleet(days)
    yd = young_daly(base)
    runs = [Run("cmp/off", base, OFF)]
    for label, cost in COST_MODELS.items():
        f = replace(base, ckpt=cost)
        for interval in (30, 120):
            runs.append(Run(f"cmp/{label}/{interval}s", f, every(interval)))
        runs.append(Run(f"cmp/{label}/young-daly", f, yd))
    # The worker's adaptive policy takes C to be the whole write (what its writer measures),
    # though an asynchronous write blocks the loop only for the snapshot: Young–Daly on that.
    runs.append(
        Run("cmp/async C=0.65 s (worker)/young-daly-blocking", base, young_daly_on_blocking(base))
    )
    runs.append(Run("cmp/async C=0.65 s (worker)/per-step", base, PER_STEP))
    noticed = replace(base, notice_share=1.0)
    runs += [
        Run("cmp/notice/off", noticed, OFF),
        Run("cmp/notice/young-daly", noticed, yd),
        Run("cmp/notice/per-step", noticed, PER_STEP),
    ]
    return runs


INTERVALS = (15, 30, 60, 120, 240, 480, 900)
SPOT_SHARES = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0)


def interval_runs(days: float, intervals: tuple[int, ...] = INTERVALS) -> list[Run]:
    base = default_fleet(days)
    runs = [
        Run("sweep/off", base, OFF),
        Run("sweep/per-step", base, PER_STEP),
        Run("sweep/young-daly-blocking", base, young_daly_on_blocking(base)),
    ]
    for label, cost in COST_MODELS.items():
        f = replace(base, ckpt=cost)
        runs += [Run(f"sweep/{label}/{i}s", f, every(i)) for i in intervals]
        runs.append(Run(f"sweep/{label}/young-daly", f, young_daly(base)))
    return runs


SPOT_POLICIES = {
    "no checkpoint": (OFF, ASYNC),
    "every 30 s, sync C=5 s (document)": (every(30), SYNC_DOC),
    "Young–Daly, async (worker)": (None, ASYNC),
    "per step, async": (PER_STEP, ASYNC),
}


def spot_runs(days: float, shares: tuple[float, ...] = SPOT_SHARES) -> list[Run]:
    base = default_fleet(days)
    runs = []
    for label, (policy, cost) in SPOT_POLICIES.items():
        for share in shares:
            f = replace(base, spot_share=share, ckpt=cost)
            runs.append(Run(f"spot/{label}/{share:g}", f, policy or young_daly(base)))
    return runs
