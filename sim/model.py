"""The fleet simulator's core: a discrete-event simulation of GPU workers, spot preemptions and
checkpoints, with the GPU worker's own `CheckpointPolicy` deciding when a worker checkpoints.

The model (one GPU = one job at a time, as in the product requirements; sim/README.md):

- Jobs arrive as a Poisson process (`Fleet.videos_per_day`), or, with `Fleet.saturated`, a
  backlog never runs dry (every free worker starts a job at once: the requirements' "730 spot
  instances, ~73 jobs preempted per hour" assumes every instance is busy). A job is
  `steps_per_job` denoising steps of equal length; its GPU time is drawn from a lognormal
  distribution (`job_mean_s`, `job_cv`), rounded to whole seconds.
- A worker runs the steps; after every step it asks `policy.due(steps_since, seconds_since,
  cost_s)` exactly as `activities.diffusion` does (no new checkpoint while one is still being
  written; `cost_s` is None until the attempt's first checkpoint is confirmed). A checkpoint
  stops the loop for `CheckpointCost.blocking_s` and is confirmed `write_s` after it was taken
  (synchronous: blocking = write; asynchronous: only the snapshot blocks).
- A spot instance lives an exponential time (rate `interruptions_per_hour`). A share of the
  preemptions come with a notice `notice_s` before the end: the worker sees it after a poll
  delay, stops at the next step boundary, waits for a write in flight, writes a checkpoint and
  hands the job over (`requeue_s` later it is queued again): no work lost if that fits in the
  notice. Otherwise the work since the last confirmed checkpoint is lost and the job is queued
  again once the heartbeat times out (`heartbeat_timeout_s`, Temporal's lease).
- A preempted spot instance is replaced by a new one that is ready `replace_s` later (launch and
  model load: the cold start, billed). On-demand instances are never preempted.
- A retried attempt that resumes from a checkpoint first spends `restore_s` reading it.

Every random draw comes from streams seeded from `seed` and named by purpose (job lengths and
arrivals; each instance slot's lifetimes and notices), so two runs with the same seed give the
same numbers and two policies see the same jobs and the same preemptions (common random
numbers: their differences are not sampling noise of the inputs).
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from videogen.checkpoint_policy import CheckpointPolicy

DAY_S = 86_400.0


@dataclass(frozen=True)
class CheckpointCost:
    """What one checkpoint costs.

    `write_s` is the whole cost of one checkpoint (snapshot, serialisation, upload): what the
    worker's `CheckpointWriter` measures and hands to the policy as `cost_s`, and the C of
    Young–Daly. `blocking_s` is the part that stops the denoising loop: all of it for a
    synchronous write, only the snapshot for the worker's asynchronous one.
    """

    write_s: float = 0.0
    blocking_s: float | None = None  # None: synchronous (= write_s)
    restore_s: float = 0.0
    size_mb: float = 0.0

    @property
    def blocking(self) -> float:
        return self.write_s if self.blocking_s is None else self.blocking_s

    @property
    def synchronous(self) -> bool:
        return self.blocking >= self.write_s

    def describe(self) -> str:
        if self.synchronous:
            return f"sync C={self.write_s:g} s"
        return f"async C={self.write_s:g} s (blocks {self.blocking:g} s)"


@dataclass(frozen=True)
class Fleet:
    """One scenario: load, jobs, fleet, preemptions, failure handling and prices."""

    days: float = 1.0
    videos_per_day: float = 100_000.0
    saturated: bool = False  # an endless backlog instead of Poisson arrivals
    job_mean_s: float = 750.0
    job_cv: float = 0.25  # 0: every job takes job_mean_s
    steps_per_job: int = 50
    gpus: int = 1042
    spot_share: float = 0.7
    interruptions_per_hour: float = 0.10  # per spot instance
    notice_share: float = 0.0  # share of preemptions announced `notice_s` ahead
    notice_s: float = 120.0
    notice_poll_s: float = 5.0  # the worker polls for the notice this often
    heartbeat_timeout_s: float = 30.0
    requeue_s: float = 0.1  # graceful hand-over: the retry's delay (PREEMPTED_RETRY_DELAY)
    replace_s: float = 180.0  # a replacement spot instance: launch + model load
    ckpt: CheckpointCost = field(default_factory=CheckpointCost)
    spot_price: float = 1.05  # $ per GPU hour
    ondemand_price: float = 3.50
    waste_price: float | None = None  # value lost GPU time at this price (the doc: $3.50/h)
    # Scripted cases (tests, what-ifs): jobs as (arrival, GPU seconds) instead of Poisson
    # arrivals, and preemptions as (slot, time, with notice) instead of random ones. Slots
    # 0 .. n_spot-1 are the spot instances.
    arrivals: tuple[tuple[float, float], ...] = ()
    kills: tuple[tuple[int, float, bool], ...] = ()

    @property
    def mtbf_s(self) -> float:
        """Mean time between preemptions of one spot instance (Young–Daly's MTBF)."""
        rate = self.interruptions_per_hour
        return math.inf if rate <= 0 else 3600.0 / rate

    @property
    def n_spot(self) -> int:
        return round(self.gpus * self.spot_share)


@dataclass
class Result:
    """Per-day figures of one run (jobs that arrived in the measured days, followed to the end)."""

    policy: str
    cost_model: str
    days: float
    videos_per_day: float
    preemptions_per_day: float  # spot instances terminated
    job_preemptions_per_day: float  # ... of which while running a job
    graceful_per_day: float  # ... handed over with a checkpoint inside the notice
    demand_gpu_h_per_day: float  # the jobs' own GPU time (what they would need uninterrupted)
    useful_gpu_h_per_day: float  # steps computed and kept: equals the demand once all are done
    lost_gpu_h_per_day: float  # steps computed and then lost (redone later)
    restore_gpu_h_per_day: float  # reading checkpoints to resume
    wasted_gpu_h_per_day: float  # lost + restore: GPU time that preemptions cost
    wasted_usd_per_day: float
    checkpoint_gpu_h_per_day: float  # periodic checkpoints: time the loop was blocked
    checkpoint_usd_per_day: float
    handover_gpu_h_per_day: float  # checkpoints written on a notice
    cold_start_gpu_h_per_day: float  # replacement instances starting up (billed)
    overhead: float  # periodic checkpoint blocking time / useful GPU time
    checkpoints_per_job: float
    checkpoint_tb_per_day: float
    mean_loss_s: float  # GPU time lost per preemption of a running job
    max_loss_s: float
    mean_extra_s: float  # latency beyond the job's own GPU time, all jobs
    p95_extra_s: float
    mean_extra_preempted_s: float  # the same for preempted jobs only
    mean_latency_s: float  # arrival to completion
    p95_latency_s: float
    p95_latency_preempted_s: float  # ... of the jobs that were preempted at least once
    cost_per_video: float  # busy GPU time (all of the above) at the instances' prices
    fleet_cost_per_video: float  # the whole fleet, idle time included
    interval_s: float | None = None  # the checkpoint interval the policy aims at (if it has one)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# One attempt's timeline, decided by the policy


@dataclass(frozen=True)
class Plan:
    """An attempt's timeline if nothing interrupts it, as offsets from its start (seconds)."""

    start_step: int
    step_s: float
    restore_s: float
    starts: tuple[float, ...]  # when each step begins
    ckpt_steps: tuple[int, ...]  # the step each checkpoint holds (the next step to run)
    ckpt_taken: tuple[float, ...]  # when it was taken (the loop resumes `blocking` later)
    ckpt_confirmed: tuple[float, ...]  # when its write was confirmed
    blocking_s: float  # per checkpoint
    duration: float

    def compute_done(self, t: float) -> float:
        """Seconds of denoising done by offset t."""
        i = bisect.bisect_right(self.starts, t) - 1
        if i < 0:
            return 0.0
        return i * self.step_s + min(self.step_s, t - self.starts[i])

    def confirmed_step(self, t: float) -> int:
        """The newest step saved by offset t (the resume point it started from, if none)."""
        j = bisect.bisect_right(self.ckpt_confirmed, t)
        return self.ckpt_steps[j - 1] if j else self.start_step

    def checkpoints_by(self, t: float) -> int:
        return bisect.bisect_right(self.ckpt_taken, t)


@functools.lru_cache(maxsize=200_000)
def plan_attempt(
    policy: CheckpointPolicy, start_step: int, total_steps: int, step_s: float, cost: CheckpointCost
) -> Plan:
    """Walk the attempt step by step and let the policy decide, as the worker's loop does.

    Cached: with whole-second job lengths most attempts share a plan, which is what makes
    asking the policy at every step of 100K jobs a day affordable.
    """
    t = cost.restore_s if start_step > 0 else 0.0
    blocking = cost.blocking
    starts: list[float] = []
    steps: list[int] = []
    taken: list[float] = []
    confirmed: list[float] = []
    last_step, last_at = start_step, t
    busy_until = -math.inf
    for step in range(start_step + 1, total_steps + 1):
        starts.append(t)
        t += step_s
        # The writer measures C once its first write of this attempt is confirmed.
        measured = cost.write_s if confirmed and confirmed[0] <= t else None
        # The worker checks after every step, the last one included, and never starts a
        # checkpoint while the previous one is still being written.
        if t >= busy_until and policy.due(
            steps_since=step - last_step, seconds_since=t - last_at, cost_s=measured
        ):
            steps.append(step)
            taken.append(t)
            confirmed.append(t + cost.write_s)
            busy_until = t + cost.write_s
            last_step, last_at = step, t
            t += blocking
    return Plan(
        start_step=start_step,
        step_s=step_s,
        restore_s=cost.restore_s if start_step > 0 else 0.0,
        starts=tuple(starts),
        ckpt_steps=tuple(steps),
        ckpt_taken=tuple(taken),
        ckpt_confirmed=tuple(confirmed),
        blocking_s=blocking,
        duration=t,
    )


# --------------------------------------------------------------------------------------------
# The simulation


class _Job:
    """One video. GPU seconds by category; `losses`: what each of its preemptions cost."""

    # Slots and a plain __init__: the simulation makes 100K of these a simulated day.
    __slots__ = (
        "arrival",
        "blocking",
        "blocking_usd",
        "checkpoints",
        "counted",
        "done",
        "gpu_s",
        "graceful",
        "handover",
        "id",
        "losses",
        "lost",
        "ondemand_s",
        "preemptions",
        "restore",
        "resume_step",
        "spot_s",
        "step_s",
        "useful",
        "waste_usd",
    )

    def __init__(self, id: int, arrival: float, gpu_s: float, step_s: float, counted: bool) -> None:
        self.id, self.arrival, self.gpu_s, self.step_s = id, arrival, gpu_s, step_s
        self.counted = counted
        self.resume_step = self.preemptions = self.checkpoints = self.graceful = 0
        self.done: float | None = None
        self.useful = self.lost = self.restore = self.blocking = self.handover = 0.0
        self.spot_s = self.ondemand_s = self.waste_usd = self.blocking_usd = 0.0
        self.losses: list[float] = []


@dataclass(eq=False)
class _Instance:
    slot: int
    spot: bool
    rng: random.Random | None
    launched_at: float = 0.0
    ready_at: float = 0.0
    kill_at: float = math.inf
    notice_at: float = math.inf  # when the worker sees the notice (inf: no notice)
    alive: bool = True
    ready: bool = False
    draining: bool = False
    idle: bool = False
    job: _Job | None = None
    plan: Plan | None = None
    t0: float = 0.0
    token: int = 0
    stop: float = math.inf  # offset where a notice stopped the loop


_ARRIVE, _READY, _FINISH, _NOTICE, _KILL, _REQUEUE = range(6)


class _Sim:
    def __init__(self, fleet: Fleet, policy: CheckpointPolicy, seed: int) -> None:
        self.f = fleet
        self.policy = policy
        self.seed = seed
        self.horizon = fleet.days * DAY_S
        self.now = 0.0
        self.events: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.queue: deque[_Job] = deque()
        self.idle: deque[_Instance] = deque()
        self.jobs: list[_Job] = []
        self.job_rng = random.Random(f"{seed}/jobs")
        self.arrival_rng = random.Random(f"{seed}/arrivals")
        s2 = math.log(1.0 + fleet.job_cv**2)
        self.ln_sigma = math.sqrt(s2)
        self.ln_mu = math.log(fleet.job_mean_s) - s2 / 2.0
        self.preemptions = 0
        self.cold_start_s = 0.0
        self._first_open = 0  # jobs before this index are done or not counted
        self._plans: dict[tuple[int, float], Plan] = {}

    # -- plumbing -----------------------------------------------------------------------------

    def push(self, t: float, kind: int, obj: Any) -> None:
        # seq breaks ties in order of scheduling, so equal times never compare the payloads.
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, obj))

    def new_job(self, t: float, gpu_s: float | None = None) -> _Job:
        f = self.f
        if gpu_s is None:
            gpu_s = (
                f.job_mean_s
                if f.job_cv <= 0
                else self.job_rng.lognormvariate(self.ln_mu, self.ln_sigma)
            )
            # Whole seconds: attempts of equal length share one plan (see plan_attempt).
            gpu_s = max(float(f.steps_per_job), float(round(gpu_s)))
        job = _Job(
            id=len(self.jobs),
            arrival=t,
            gpu_s=gpu_s,
            step_s=gpu_s / f.steps_per_job,
            counted=t < self.horizon,
        )
        self.jobs.append(job)
        return job

    def launch(self, inst: _Instance, t: float, ready_at: float) -> None:
        """Start an instance's life: ready at `ready_at`; spot ones get a preemption time."""
        inst.alive, inst.ready, inst.draining, inst.idle = True, False, False, False
        inst.job, inst.plan, inst.stop = None, None, math.inf
        inst.launched_at, inst.ready_at = t, ready_at
        self.push(ready_at, _READY, inst)
        if self.f.kills:
            scripted = sorted(
                (at, notice) for slot, at, notice in self.f.kills if slot == inst.slot and at > t
            )
            if inst.spot and scripted:
                inst.kill_at, noticed = scripted[0]
                inst.notice_at = (
                    inst.kill_at - self.f.notice_s + self.f.notice_poll_s if noticed else math.inf
                )
                self.push(inst.kill_at, _KILL, inst)
                if noticed:
                    self.push(max(inst.notice_at, t), _NOTICE, inst)
            else:
                inst.kill_at, inst.notice_at = math.inf, math.inf
        elif inst.spot and inst.rng is not None and self.f.interruptions_per_hour > 0:
            rng = inst.rng
            inst.kill_at = t + rng.expovariate(self.f.interruptions_per_hour / 3600.0)
            # Draw both every time so that the stream stays aligned whatever the share.
            noticed = rng.random() < self.f.notice_share
            poll = rng.random() * self.f.notice_poll_s
            inst.notice_at = (inst.kill_at - self.f.notice_s + poll) if noticed else math.inf
            self.push(inst.kill_at, _KILL, inst)
            if noticed:
                self.push(max(inst.notice_at, t), _NOTICE, inst)

    # -- scheduling ---------------------------------------------------------------------------

    def dispatch(self) -> None:
        while self.idle:
            inst = self.idle[0]
            if not (inst.idle and inst.alive and not inst.draining):
                self.idle.popleft()
                continue
            if self.queue:
                job = self.queue.popleft()
            elif self.f.saturated and self.now < self.horizon:
                job = self.new_job(self.now)
            else:
                return
            self.idle.popleft()
            inst.idle = False
            self.start(inst, job)

    def start(self, inst: _Instance, job: _Job) -> None:
        key = (job.resume_step, job.step_s)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plan_attempt(
                self.policy, job.resume_step, self.f.steps_per_job, job.step_s, self.f.ckpt
            )
        inst.job, inst.plan, inst.t0, inst.stop = job, plan, self.now, math.inf
        inst.token += 1
        self.push(self.now + plan.duration, _FINISH, (inst, inst.token))

    def make_idle(self, inst: _Instance) -> None:
        inst.job, inst.plan = None, None
        if inst.alive and inst.ready and not inst.draining:
            inst.idle = True
            self.idle.append(inst)

    # -- accounting ---------------------------------------------------------------------------

    def charge(
        self, inst: _Instance, job: _Job, gpu_s: float, wasted_s: float, blocking_s: float
    ) -> None:
        f = self.f
        price = f.spot_price if inst.spot else f.ondemand_price
        if inst.spot:
            job.spot_s += gpu_s
        else:
            job.ondemand_s += gpu_s
        waste_price = price if f.waste_price is None else f.waste_price
        job.waste_usd += wasted_s * waste_price / 3600.0
        job.blocking_usd += blocking_s * price / 3600.0

    def end_attempt(
        self,
        inst: _Instance,
        offset: float,
        *,
        finished: bool = False,
        saved: tuple[int, float, bool] | None = None,
    ) -> int:
        """Book an attempt that ended `offset` seconds after it started; the step to resume at.

        `saved`: stopped by a notice and handed over: (step, end of the hand-over, whether it
        had to write a checkpoint).
        """
        job, plan = inst.job, inst.plan
        assert job is not None and plan is not None
        f = self.f
        if finished:
            compute = (f.steps_per_job - plan.start_step) * plan.step_s
            job.useful += compute
            job.restore += plan.restore_s
            blocking = plan.duration - compute - plan.restore_s
            job.blocking += blocking
            job.checkpoints += len(plan.ckpt_taken)
            self.charge(inst, job, plan.duration, plan.restore_s, blocking)
            return f.steps_per_job
        run_until = min(offset, inst.stop)  # a notice stops the steps at a loop top
        compute = plan.compute_done(run_until)
        restore = min(run_until, plan.restore_s)
        blocking = max(0.0, run_until - compute - restore)
        if saved is not None:
            resume, handover_end, wrote = saved
            lost, handover = 0.0, handover_end - run_until
            job.graceful += 1
            job.checkpoints += wrote
            offset = handover_end
        else:
            resume = plan.confirmed_step(offset)
            lost = compute - (resume - plan.start_step) * plan.step_s
            handover = offset - run_until  # a hand-over that the end cut short
        job.useful += compute - lost
        job.lost += lost
        job.restore += restore
        job.blocking += blocking
        job.handover += handover
        job.checkpoints += plan.checkpoints_by(run_until)
        job.preemptions += 1
        job.losses.append(lost + restore)
        self.charge(inst, job, offset, lost + restore, blocking)
        return resume

    # -- events -------------------------------------------------------------------------------

    def on_finish(self, inst: _Instance, token: int) -> None:
        if token != inst.token or inst.job is None or not inst.alive:
            return
        job = inst.job
        self.end_attempt(inst, self.now - inst.t0, finished=True)
        job.done = self.now
        self.make_idle(inst)
        self.dispatch()

    def on_notice(self, inst: _Instance) -> None:
        if not inst.alive:
            return
        inst.draining = True  # the worker shuts down: it takes no new job
        inst.idle = False
        job, plan = inst.job, inst.plan
        if job is None or plan is None:
            return
        seen = self.now - inst.t0
        kill = inst.kill_at - inst.t0
        i = bisect.bisect_left(plan.starts, seen)
        if i >= len(plan.starts):
            return  # in its last step: it finishes, or the end catches it
        stop = plan.starts[i]
        inst.stop = stop
        # As `DiffusionActivities._preempted`: wait for a write in flight, then write the
        # stopped state unless the newest confirmed checkpoint already holds it.
        state_step = plan.start_step + i
        j = bisect.bisect_right(plan.ckpt_taken, stop)
        drained = max(stop, plan.ckpt_confirmed[j - 1]) if j else stop
        newest = plan.ckpt_steps[j - 1] if j else (plan.start_step or None)
        end = drained if newest == state_step else drained + self.f.ckpt.write_s
        if end > kill:
            # It does not fit: the loop has stopped (no FINISH), the end finds it unsaved.
            inst.token += 1
            return
        job.resume_step = self.end_attempt(inst, end, saved=(state_step, end, newest != state_step))
        inst.token += 1
        inst.job, inst.plan = None, None
        self.push(inst.t0 + end + self.f.requeue_s, _REQUEUE, job)

    def on_kill(self, inst: _Instance) -> None:
        if not inst.alive:
            return
        if self.now < self.horizon:
            self.preemptions += 1
        inst.alive = False
        inst.idle = False
        job = inst.job
        if job is not None:
            job.resume_step = self.end_attempt(inst, self.now - inst.t0)
            inst.token += 1
            inst.job, inst.plan = None, None
            # Nobody hears of it until the heartbeat times out (Temporal's lease).
            self.push(self.now + self.f.heartbeat_timeout_s, _REQUEUE, job)
        if not inst.ready and inst.launched_at < self.horizon:
            self.cold_start_s += self.now - inst.launched_at  # died while starting up
        # The autoscaler replaces it at once with a new spot instance in the same slot.
        self.launch(inst, self.now, self.now + self.f.replace_s)

    def on_ready(self, inst: _Instance) -> None:
        if not inst.alive or inst.ready_at != self.now:
            return
        inst.ready = True
        if inst.launched_at < self.horizon:
            self.cold_start_s += inst.ready_at - inst.launched_at  # billed, no work done
        if self.now >= inst.notice_at:
            inst.draining = True
            return
        self.make_idle(inst)
        self.dispatch()

    def on_arrive(self, gpu_s: float | None) -> None:
        self.queue.append(self.new_job(self.now, gpu_s))
        if gpu_s is not None:  # scripted
            self.dispatch()
            return
        rate = self.f.videos_per_day / DAY_S
        nxt = self.now + self.arrival_rng.expovariate(rate)
        if nxt < self.horizon:
            self.push(nxt, _ARRIVE, None)
        self.dispatch()

    # -- run ----------------------------------------------------------------------------------

    def run(self) -> Result:
        f = self.f
        n_spot = f.n_spot
        for slot in range(f.gpus):
            spot = slot < n_spot
            rng = random.Random(f"{self.seed}/slot/{slot}") if spot else None
            inst = _Instance(slot=slot, spot=spot, rng=rng)
            self.launch(inst, 0.0, 0.0)  # a warm fleet at the start
        for at, gpu_s in sorted(f.arrivals):
            self.push(at, _ARRIVE, float(gpu_s))
        if not f.saturated and not f.arrivals and f.videos_per_day > 0:
            self.push(self.arrival_rng.expovariate(f.videos_per_day / DAY_S), _ARRIVE, None)
        handlers = {
            _ARRIVE: self.on_arrive,
            _READY: self.on_ready,
            _NOTICE: self.on_notice,
            _KILL: self.on_kill,
        }
        events = self.events
        while events:
            t, _, kind, obj = heapq.heappop(events)
            self.now = t
            if kind == _FINISH:
                self.on_finish(*obj)
            elif kind == _REQUEUE:
                self.queue.append(obj)
                self.dispatch()
            else:
                handlers[kind](obj)
            if t >= self.horizon and self._drained():
                break
        return self.result()

    def _drained(self) -> bool:
        # After the measured days the run goes on only until every counted job is done.
        # jobs are appended in arrival order: the counted ones come first.
        while self._first_open < len(self.jobs):
            job = self.jobs[self._first_open]
            if not job.counted or job.done is not None:
                self._first_open += 1
                continue
            return False
        return True

    def result(self) -> Result:
        f = self.f
        days = f.days
        jobs = [j for j in self.jobs if j.counted and j.done is not None]
        n = max(1, len(jobs))
        preempted = [j for j in jobs if j.preemptions]
        losses = [x for j in jobs for x in j.losses]
        done = {j.id: float(j.done or 0.0) for j in jobs}
        latency = sorted(done[j.id] - j.arrival for j in jobs)
        extra = sorted(done[j.id] - j.arrival - j.gpu_s for j in jobs)
        extra_preempted = [done[j.id] - j.arrival - j.gpu_s for j in preempted]
        useful = sum(j.useful for j in jobs)
        lost = sum(j.lost for j in jobs)
        restore = sum(j.restore for j in jobs)
        blocking = sum(j.blocking for j in jobs)
        checkpoints = sum(j.checkpoints for j in jobs)
        spot_s = sum(j.spot_s for j in jobs) + self.cold_start_s
        od_s = sum(j.ondemand_s for j in jobs)
        busy_usd = (spot_s * f.spot_price + od_s * f.ondemand_price) / 3600.0
        fleet_usd = (f.n_spot * f.spot_price + (f.gpus - f.n_spot) * f.ondemand_price) * 24 * days
        h = 3600.0 * days
        interval = (
            self.policy.interval_s(f.ckpt.write_s)
            if self.policy.mode == "adaptive"
            else self.policy.every_s
            if self.policy.mode == "seconds"
            else None
        )
        return Result(
            policy=self.policy.describe(),
            cost_model=f.ckpt.describe(),
            days=days,
            videos_per_day=len(jobs) / days,
            preemptions_per_day=self.preemptions / days,
            job_preemptions_per_day=len(losses) / days,
            graceful_per_day=sum(j.graceful for j in jobs) / days,
            demand_gpu_h_per_day=sum(j.gpu_s for j in jobs) / h,
            useful_gpu_h_per_day=useful / h,
            lost_gpu_h_per_day=lost / h,
            restore_gpu_h_per_day=restore / h,
            wasted_gpu_h_per_day=(lost + restore) / h,
            wasted_usd_per_day=sum(j.waste_usd for j in jobs) / days,
            checkpoint_gpu_h_per_day=blocking / h,
            checkpoint_usd_per_day=sum(j.blocking_usd for j in jobs) / days,
            handover_gpu_h_per_day=sum(j.handover for j in jobs) / h,
            cold_start_gpu_h_per_day=self.cold_start_s / h,
            overhead=blocking / useful if useful else 0.0,
            checkpoints_per_job=checkpoints / n,
            checkpoint_tb_per_day=checkpoints * f.ckpt.size_mb / 1e6 / days,
            mean_loss_s=_mean(losses),
            max_loss_s=max(losses, default=0.0),
            mean_extra_s=sum(extra) / n,
            p95_extra_s=_quantile(extra, 0.95),
            mean_extra_preempted_s=_mean(extra_preempted),
            mean_latency_s=sum(latency) / n,
            p95_latency_s=_quantile(latency, 0.95),
            p95_latency_preempted_s=_quantile(
                sorted(done[j.id] - j.arrival for j in preempted), 0.95
            ),
            cost_per_video=busy_usd / n,
            fleet_cost_per_video=fleet_usd / n,
            interval_s=interval,
        )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _quantile(sorted_values: list[float], q: float) -> float:
    """The q-quantile of sorted values (nearest rank)."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def simulate(fleet: Fleet, policy: CheckpointPolicy, *, seed: int = 0) -> Result:
    """Run one scenario under one checkpoint policy; reproducible for a given seed."""
    return _Sim(fleet, policy, seed).run()
