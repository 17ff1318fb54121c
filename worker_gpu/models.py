"""The models one GPU worker holds, and cold starts: switching the model it serves.

A GPU worker serves one model version at a time: that model is on the device and the worker
polls its warm queue. When the catalog has several models, an idle worker also polls the cold
queue of its pool. A job that no warm worker picked up in time asks there for its model
(the workflow's warm-up activity); the worker that takes it loads that model (or brings it
back from host memory), stops polling the old warm queue, polls the new one, and answers. The
job, offered to its warm queue again, lands on it (or on any other warm worker).

One job per GPU holds through all of it: the cold queue is polled only while the worker is
idle (`IdleOnly`), a warm-up that still reaches a busy worker is refused at once (another idle
worker takes it), and a job offered while the worker switches is handed back the same way.
Up to `keep` models stay in host memory after a switch (least recently used dropped first),
so switching back costs a copy to the device, not a load from disk.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    CustomSlotSupplier,
    SlotMarkUsedContext,
    SlotPermit,
    SlotReleaseContext,
    SlotReserveContext,
    Worker,
)

from activities import pipeline
from activities.diffusion import DiffusionActivities
from activities.placement import Placement
from videogen import contracts as c
from videogen import logs, metrics
from videogen.registry import Registry, ServedModel

log = structlog.get_logger(__name__)

# How often a held-back cold poller looks whether the worker became idle.
IDLE_POLL_S = 0.2
HEARTBEAT_S = 1.0


@dataclass
class Held:
    served: ServedModel
    loaded: pipeline.LoadedModel


class ModelHost:
    """The model this worker serves (on the device, its warm queue polled) and those it keeps
    in host memory; owns the switch between them and the warm-up activity that asks for one."""

    def __init__(
        self,
        acts: DiffusionActivities,
        active: Held,
        *,
        catalog: Registry,
        queue_of: Callable[[ServedModel], str],
        device: str,
        placement: Placement,
        keep: int,
    ) -> None:
        self._acts = acts
        self.active = active
        self._catalog = catalog
        self._queue_of = queue_of
        self._device = device
        self._placement = placement
        self._keep = keep
        self._parked: OrderedDict[str, Held] = OrderedDict()  # version -> model, LRU first
        self._switch: asyncio.Task[float] | None = None
        # The warm queue to poll now; None while switching. `changed` wakes the serving loop.
        self.queue: str | None = queue_of(active.served)
        self.changed = asyncio.Event()

    def idle(self) -> bool:
        return self._switch is None and self._acts.running == 0

    @activity.defn(name=c.ACTIVITY_WARM_UP)
    async def warm_up(self, inp: c.WarmUpInput) -> c.WarmUpOutput:
        """Serve `inp.model_version`, switching to it if this worker is idle and may."""
        if inp.model_version == self.active.served.version and self.queue == inp.warm_queue:
            return c.WarmUpOutput(worker=logs.worker_id(), swapped=False, load_seconds=0.0)
        if not self.idle():
            raise ApplicationError(
                "this GPU worker is busy; another idle worker will take the warm-up",
                type=c.ErrorCode.WORKER_BUSY,
            )
        target = self._find(inp)
        self._acts.accepting = False
        self.queue = None
        self.changed.set()
        switch = self._switch = asyncio.create_task(self._switch_to(target))
        # asyncio.wait never cancels the switch: a cancelled job must not leave a half-switched
        # worker. The switch ends on its own and the cancellation is re-raised.
        while not switch.done():
            await asyncio.wait({switch}, timeout=HEARTBEAT_S)
            activity.heartbeat()
        seconds = switch.result()
        return c.WarmUpOutput(worker=logs.worker_id(), swapped=True, load_seconds=seconds)

    def _find(self, inp: c.WarmUpInput) -> ServedModel:
        served = self._catalog.models.get(inp.model)
        if (
            served is None
            or served.version != inp.model_version
            or self._queue_of(served) != inp.warm_queue
        ):
            raise ApplicationError(
                f"this worker's catalog has no {c.model_ref(inp.model, inp.model_version)} "
                f"for {inp.warm_queue}; another worker may",
                type=c.ErrorCode.MODEL_NOT_HERE,
            )
        return served

    async def _switch_to(self, target: ServedModel) -> float:
        """Park the active model, bring `target` in; on failure the old one comes back. Always
        ends with a warm queue to poll and jobs accepted again."""
        old = self.active
        started = time.perf_counter()
        try:
            self.active = await asyncio.to_thread(self._bring, target)
        except BaseException:
            log.exception("model switch failed: serving the old model again", to=target.ref)
            await asyncio.to_thread(self._restore, old)
            raise
        finally:
            self._acts.hold(self.active.loaded)
            self.queue = self._queue_of(self.active.served)
            self._acts.accepting = True
            self._switch = None
            self.changed.set()
        seconds = time.perf_counter() - started
        metrics.COLD_STARTS.labels(model_version=target.ref).inc()
        metrics.MODEL_LOAD_SECONDS.observe(seconds)
        log.info("switched model", frm=old.served.ref, to=target.ref, seconds=round(seconds, 3))
        return seconds

    def _bring(self, target: ServedModel) -> Held:
        """Blocking: the old model to host memory, `target` onto the device."""
        old = self.active
        old.loaded.placed.park()
        self._parked[old.served.version] = old
        self._parked.move_to_end(old.served.version)
        held = self._parked.pop(target.version, None)
        if held is not None:
            held.loaded.placed.rehome(held.loaded.placed.plan)
        else:
            loaded = pipeline.load_pipeline(target.spec, self._device, self._placement)
            loaded.version = target.version
            held = Held(target, loaded)
        while len(self._parked) > self._keep:
            dropped, _ = self._parked.popitem(last=False)
            log.info("dropped a model from host memory", version=dropped[:12])
        return held

    def _restore(self, old: Held) -> None:
        self._parked.pop(old.served.version, None)
        old.loaded.placed.rehome(old.loaded.placed.plan)
        self.active = old

    async def serve(self, make_worker: Callable[[str], Worker], stop: asyncio.Event) -> None:
        """Run a warm Worker on `queue` until `stop`, a new one whenever the queue changes."""
        while not stop.is_set():
            self.changed.clear()
            queue = self.queue
            if queue is None:
                await _first(stop.wait(), self.changed.wait())
                continue
            worker = make_worker(queue)
            async with worker:
                log.info("polling warm queue", task_queue=queue, model=self.active.served.ref)
                await _first(stop.wait(), self.changed.wait())


async def _first(*aws: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


class IdleOnly(CustomSlotSupplier):
    """One cold-queue slot, reserved (so polled) only while the worker is idle: a busy worker
    does not take warm-ups that an idle one could serve."""

    def __init__(self, idle: Callable[[], bool]) -> None:
        self._idle = idle
        self._taken = False

    async def reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit:
        while self._taken or not self._idle():
            await asyncio.sleep(IDLE_POLL_S)
        self._taken = True
        return SlotPermit()

    def try_reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit | None:
        return None  # no eager warm-ups

    def mark_slot_used(self, ctx: SlotMarkUsedContext) -> None:
        pass

    def release_slot(self, ctx: SlotReleaseContext) -> None:
        self._taken = False
