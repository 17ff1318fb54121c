"""The fleet simulator's accounting (`sim/`), on cases small enough to work out by hand.

Most cases are one 100-s job of 10 steps (10 s each) on a fleet of one spot instance (slot 0)
and one on-demand instance (slot 1), with scripted preemptions: the expected figures are in the
comments. No matplotlib here: `python -m sim` draws the plots.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sim import CheckpointCost, Fleet, plan_attempt, simulate
from sim.scenarios import doc_arithmetic
from videogen.checkpoint_policy import CheckpointPolicy

ROOT = Path(__file__).resolve().parent.parent
EVERY_30S = CheckpointPolicy(mode="seconds", every_s=30.0)
OFF = CheckpointPolicy(mode="off")


def one_job(**kw: object) -> Fleet:
    """One 100-s job (10 steps) at t=0 on a fleet of one spot + one on-demand instance."""
    base: dict[str, object] = dict(
        days=1.0,
        arrivals=((0.0, 100.0),),
        steps_per_job=10,
        gpus=2,
        spot_share=0.5,
        interruptions_per_hour=0.0,
        heartbeat_timeout_s=30.0,
        replace_s=60.0,
        notice_poll_s=0.0,
        requeue_s=0.0,
        spot_price=1.0,
        ondemand_price=3.6,
    )
    base.update(kw)
    return Fleet(**base)  # type: ignore[arg-type]


def test_plan_sync_checkpoints_cost_k_times_c() -> None:
    # Steps end at 10, 20, 30 -> due (30 s) -> 2 s write -> steps end at 42, 52, 62: 32 s since
    # the last one was taken -> due ... -> checkpoints after steps 3, 6, 9; 100 + 3 x 2 = 106 s.
    plan = plan_attempt(EVERY_30S, 0, 10, 10.0, CheckpointCost(write_s=2.0))
    assert plan.ckpt_steps == (3, 6, 9)
    assert plan.ckpt_taken == (30.0, 62.0, 94.0)
    assert plan.duration == pytest.approx(106.0)
    r = simulate(one_job(ckpt=CheckpointCost(write_s=2.0)), EVERY_30S)
    assert r.checkpoints_per_job == 3
    assert r.overhead == pytest.approx(6.0 / 100.0)  # k * C over the job's own GPU time
    assert r.checkpoint_gpu_h_per_day * 3600 == pytest.approx(6.0)
    assert r.mean_latency_s == pytest.approx(106.0)
    assert r.wasted_gpu_h_per_day == 0.0 and r.job_preemptions_per_day == 0


def test_preemption_without_notice_loses_work_since_last_checkpoint() -> None:
    # Checkpoints (free) after steps 3 and 6 (t=30, 60). Killed at t=70: step 7 is lost, 10 s.
    # The heartbeat times out at 100; the on-demand instance resumes at step 6 and needs 40 s.
    r = simulate(one_job(kills=((0, 70.0, False),)), EVERY_30S)
    assert r.job_preemptions_per_day == 1 and r.preemptions_per_day == 1
    assert r.lost_gpu_h_per_day * 3600 == pytest.approx(10.0)
    assert r.mean_loss_s == pytest.approx(10.0)
    assert r.mean_latency_s == pytest.approx(70.0 + 30.0 + 40.0)
    assert r.mean_extra_s == pytest.approx(10.0 + 30.0)  # lost work + detection delay
    assert r.useful_gpu_h_per_day * 3600 == pytest.approx(100.0)  # every step counted once
    # Cost: 70 s of spot at $1/h, 40 s of on-demand at $3.60/h, and the replacement's 60-s
    # cold start at $1/h (billed, though no job runs on it).
    assert r.cost_per_video == pytest.approx((70 + 60) / 3600 * 1.0 + 40 / 3600 * 3.6)
    assert r.cold_start_gpu_h_per_day * 3600 == pytest.approx(60.0)


def test_policy_off_loses_everything() -> None:
    r = simulate(one_job(kills=((0, 70.0, False),)), OFF)
    assert r.checkpoints_per_job == 0
    assert r.lost_gpu_h_per_day * 3600 == pytest.approx(70.0)
    assert r.mean_latency_s == pytest.approx(70.0 + 30.0 + 100.0)


def test_restore_time_is_waste() -> None:
    ckpt = CheckpointCost(restore_s=5.0)
    r = simulate(one_job(kills=((0, 70.0, False),), ckpt=ckpt), EVERY_30S)
    assert r.restore_gpu_h_per_day * 3600 == pytest.approx(5.0)
    assert r.wasted_gpu_h_per_day * 3600 == pytest.approx(10.0 + 5.0)
    assert r.mean_latency_s == pytest.approx(70.0 + 30.0 + 5.0 + 40.0)


def test_notice_that_fits_loses_nothing() -> None:
    # Notice 25 s ahead of the end at 70: seen at 45, the loop stops at the next boundary (50,
    # step 5), writes step 5 (C=0) and hands over; the on-demand instance runs steps 6-10.
    r = simulate(one_job(kills=((0, 70.0, True),), notice_s=25.0), EVERY_30S)
    assert r.graceful_per_day == 1
    assert r.lost_gpu_h_per_day == 0.0
    assert r.mean_latency_s == pytest.approx(50.0 + 50.0)
    # The same with no periodic checkpoints at all: the hand-over alone saves the work.
    r = simulate(one_job(kills=((0, 70.0, True),), notice_s=25.0), OFF)
    assert r.lost_gpu_h_per_day == 0.0 and r.checkpoints_per_job == 1


def test_notice_too_short_for_the_checkpoint_falls_back_to_the_last_one() -> None:
    # Seen at 65: stop at 70 (step 7)... which is the end; with a 10-s write it cannot fit
    # either way. The steps stop at the boundary, so 10 s (step 7) is lost, not more.
    ckpt = CheckpointCost(write_s=10.0, blocking_s=0.0)  # async: the periodic ones are free
    r = simulate(one_job(kills=((0, 75.0, True),), notice_s=10.0, ckpt=ckpt), EVERY_30S)
    assert r.graceful_per_day == 0
    # Periodic checkpoints taken at 30 and 60, confirmed at 40 and 70: step 6 is safe.
    # The notice (seen at 65) stopped the loop at 70 after step 7: 10 s lost.
    assert r.lost_gpu_h_per_day * 3600 == pytest.approx(10.0)


def test_preemption_during_a_synchronous_write_loses_the_interval() -> None:
    # 5-s writes: checkpoint of step 3 taken at 30, confirmed at 35. Killed at 33: 30 s lost.
    ckpt = CheckpointCost(write_s=5.0)
    r = simulate(one_job(kills=((0, 33.0, False),), ckpt=ckpt), EVERY_30S)
    assert r.lost_gpu_h_per_day * 3600 == pytest.approx(30.0)
    assert r.checkpoint_gpu_h_per_day * 3600 > 3.0  # the 3 s of the write that was cut short


def test_async_writer_busy_skips_checkpoints() -> None:
    # Every step is due, but a 25-s background write blocks the next one until it is confirmed:
    # taken after steps 1 (busy to 35), 4 (t=40, busy to 65), 7 (70), 10 (100).
    per_step = CheckpointPolicy(mode="steps", every_steps=1)
    plan = plan_attempt(per_step, 0, 10, 10.0, CheckpointCost(write_s=25.0, blocking_s=0.0))
    assert plan.ckpt_steps == (1, 4, 7, 10)
    assert plan.duration == pytest.approx(100.0)


def test_adaptive_measures_first_then_uses_young_daly() -> None:
    # C = 2 s, MTBF 400 s -> interval sqrt(2 * 2 * 400) = 40 s. No measurement yet: the first
    # checkpoint comes after step 1; then 40 s from the time it was taken (10): step 5 at 52,
    # step 9 at 94.
    policy = CheckpointPolicy(mode="adaptive", mtbf_s=400.0)
    assert policy.interval_s(2.0) == pytest.approx(40.0)
    plan = plan_attempt(policy, 0, 10, 10.0, CheckpointCost(write_s=2.0))
    assert plan.ckpt_steps == (1, 5, 9)


@dataclass(frozen=True)
class _Recording(CheckpointPolicy):
    """A policy that records what it is asked (frozen and hashable, as the simulator needs)."""

    calls: list[tuple[int, float, float | None]] = field(
        default_factory=list, hash=False, compare=False
    )

    def due(self, *, steps_since: int, seconds_since: float, cost_s: float | None) -> bool:
        self.calls.append((steps_since, seconds_since, cost_s))
        return steps_since >= 4


def test_the_policy_object_decides() -> None:
    policy = _Recording(mode="steps", every_steps=99)
    plan = plan_attempt(policy, 0, 10, 10.0, CheckpointCost(write_s=1.0))
    assert plan.ckpt_steps == (4, 8)  # what `due` said, not every_steps=99
    assert len(policy.calls) == 10  # asked after every step, the last one included
    assert policy.calls[0] == (1, 10.0, None)  # nothing measured yet
    assert policy.calls[4] == (1, pytest.approx(11.0), 1.0)  # after the first write
    r = simulate(one_job(), policy)
    assert r.checkpoints_per_job == 2


def test_resume_plan_starts_from_the_checkpoint() -> None:
    plan = plan_attempt(EVERY_30S, 6, 10, 10.0, CheckpointCost(restore_s=3.0))
    assert plan.starts[0] == 3.0 and plan.duration == pytest.approx(43.0)
    assert plan.confirmed_step(0.0) == 6


def test_cost_per_video_with_known_prices() -> None:
    fleet = one_job(gpus=1, spot_share=0.0)  # only the on-demand instance, $3.60/h
    r = simulate(fleet, OFF)
    assert r.cost_per_video == pytest.approx(0.10)  # 100 s at $3.60/h
    assert r.fleet_cost_per_video == pytest.approx(3.6 * 24)  # the idle day is billed too


def test_waste_priced_at_the_documents_rate() -> None:
    r = simulate(one_job(kills=((0, 70.0, False),), waste_price=3.6), OFF)
    assert r.wasted_usd_per_day == pytest.approx(70.0 / 3600 * 3.6)


def test_reproducible_with_a_seed() -> None:
    fleet = Fleet(
        days=0.05,
        videos_per_day=20_000,
        gpus=120,
        interruptions_per_hour=2.0,
        notice_share=0.3,
        ckpt=CheckpointCost(write_s=1.0, blocking_s=0.1),
    )
    a = simulate(fleet, EVERY_30S, seed=7).as_dict()
    b = simulate(fleet, EVERY_30S, seed=7).as_dict()
    c = simulate(fleet, EVERY_30S, seed=8).as_dict()
    assert a == b
    assert a != c
    assert a["job_preemptions_per_day"] > 0 and a["graceful_per_day"] > 0


@pytest.mark.parametrize(
    "policy",
    [
        OFF,
        EVERY_30S,
        CheckpointPolicy(mode="adaptive"),
        CheckpointPolicy(mode="steps", every_steps=1),
    ],
)
def test_every_gpu_second_is_booked_once(policy: CheckpointPolicy) -> None:
    # A busy random fleet with notices, sync writes and restores: every step the jobs need is
    # kept exactly once, and the bill (one price for all) is the sum of the categories.
    fleet = Fleet(
        days=0.05,
        videos_per_day=20_000,
        gpus=150,
        job_mean_s=300.0,
        job_cv=0.5,
        interruptions_per_hour=3.0,
        notice_share=0.5,
        notice_s=20.0,
        ckpt=CheckpointCost(write_s=2.0, restore_s=1.0),
        spot_price=1.0,
        ondemand_price=1.0,
        replace_s=60.0,
    )
    r = simulate(fleet, policy, seed=5)
    assert r.job_preemptions_per_day > 50
    assert r.useful_gpu_h_per_day == pytest.approx(r.demand_gpu_h_per_day)
    booked = (
        r.useful_gpu_h_per_day
        + r.lost_gpu_h_per_day
        + r.restore_gpu_h_per_day
        + r.checkpoint_gpu_h_per_day
        + r.handover_gpu_h_per_day
        + r.cold_start_gpu_h_per_day
    )
    assert r.cost_per_video * r.videos_per_day == pytest.approx(booked)


def test_saturated_spot_fleet_matches_the_arithmetic() -> None:
    # 100 busy spot instances at 10 %/h for a day: 240 preemptions expected (sd 15.5); with
    # 5-min jobs and no checkpoints each loses 2.5 min on average (sd of the mean ~5 s).
    fleet = Fleet(
        days=1.0,
        saturated=True,
        gpus=100,
        spot_share=1.0,
        job_mean_s=300.0,
        job_cv=0.0,
        replace_s=0.0,
        heartbeat_timeout_s=0.0,
    )
    r = simulate(fleet, OFF, seed=3)
    assert abs(r.preemptions_per_day - 240) < 4 * 15.5
    assert r.mean_loss_s == pytest.approx(150.0, abs=25.0)
    assert r.max_loss_s <= 300.0
    assert r.lost_gpu_h_per_day == pytest.approx(r.job_preemptions_per_day * r.mean_loss_s / 3600)


def test_documents_own_arithmetic() -> None:
    d = doc_arithmetic()
    assert d["preemptions_per_hour"] == pytest.approx(73.0)
    assert d["paragraph_gpu_h_per_day"] == pytest.approx(73.0)  # not the table's 182
    assert d["table_gpu_h_per_day_as_minutes_per_hour"] == pytest.approx(182.5)
    assert d["price_per_h_paragraph"] == pytest.approx(3.6)
    assert d["price_per_h_table"] == pytest.approx(3.5, abs=0.01)
    # The table's 30-s and 2-min rows differ by more than half of the 90-s interval difference.
    assert d["rows_gap_s_per_preemption"] > 45.0


def test_worker_and_simulator_share_the_policy_code() -> None:
    tree = ast.parse((ROOT / "activities" / "checkpoint.py").read_text())
    classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    imports = {
        (n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
    }
    assert "CheckpointPolicy" not in classes
    assert ("videogen.checkpoint_policy", "CheckpointPolicy") in imports
    # ... and the simulator does not pull in torch to use it.
    out = subprocess.run(
        [sys.executable, "-c", "import sys, sim.model; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_young_daly_interval_of_the_documents_numbers() -> None:
    # 5-s checkpoints, 10 %/h per instance (MTBF 10 h): sqrt(2 * 5 * 36000) = 600 s.
    fleet = Fleet(interruptions_per_hour=0.1)
    policy = CheckpointPolicy(mode="adaptive", mtbf_s=fleet.mtbf_s)
    assert policy.interval_s(5.0) == pytest.approx(600.0)
    assert math.isinf(Fleet(interruptions_per_hour=0.0).mtbf_s)
