"""CPU activity: find a GPU for a job that waited past its tier's `max_wait_s`.

The waiting job's own workflow runs it (workflows/video.py, `_make_room`), so the decision
needs no controller and no lease: each waiting job asks for one GPU at a time. It lists the
running jobs of the same GPU queue at a lower priority (visibility), least important and least
progressed first, and sends each the `request_yield` update until one accepts. The victim's
workflow validates every request against its own state (still denoising, `min_run_s` run,
yields left, not already yielding), and updates to one workflow are applied one at a time, so
two API replicas or two waiting jobs can never make one job yield twice for one attempt.

The victim's GPU activity reads the accepted request from its memo, checkpoints at the next
step boundary and hands the attempt over (activities/diffusion.py). Its retry waits on the GPU
queue at its own priority, behind the job that asked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from videogen import contracts as c
from videogen import metrics
from videogen import visibility as vis

log = structlog.get_logger(__name__)

# Running jobs looked at per request: the lowest priorities come first in the list.
MAX_CANDIDATES = 50


@dataclass(frozen=True)
class _Candidate:
    job_id: str
    priority: int
    progress: float  # share of the steps done; an unreadable job counts as done


class PreemptionActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name=c.ACTIVITY_MAKE_ROOM)
    async def make_room(self, inp: c.MakeRoomInput) -> c.MakeRoomOutput:
        """Have one lower-priority running job yield its GPU to `inp.job_id`."""
        candidates = await self._candidates(inp)
        refusals: list[str] = []
        for cand in candidates:
            refusal = await self._ask(inp, cand)
            if refusal is None:
                metrics.YIELD_REQUESTS.labels("accepted").inc()
                log.info(
                    "made room: a job yields",
                    job_id=inp.job_id,
                    victim=cand.job_id,
                    victim_priority=cand.priority,
                )
                return c.MakeRoomOutput(victim_job_id=cand.job_id)
            refusals.append(f"{cand.job_id}: {refusal}")
        metrics.YIELD_REQUESTS.labels("none" if not candidates else "refused").inc()
        reason = "; ".join(refusals) or "no running job of this GPU queue has a lower priority"
        log.info("no room made", job_id=inp.job_id, reason=reason)
        return c.MakeRoomOutput(reason=reason)

    async def _candidates(self, inp: c.MakeRoomInput) -> list[_Candidate]:
        query = vis.jobs(
            vis.eq(c.SA_STATUS, c.Status.IN_PROGRESS),
            vis.eq(c.SA_MODEL, inp.model),
            f"{c.SA_PRIORITY} > {vis.literal(inp.priority)}",
            status="Running",
        )
        listed = []
        async for ex in self._client.list_workflows(query, limit=MAX_CANDIDATES):
            memo = await ex.memo()
            if memo.get("gpu_task_queue") == inp.gpu_task_queue and ex.id != inp.job_id:
                prio = ex.typed_search_attributes.get(c.PRIORITY_KEY) or 0
                listed.append((ex.id, prio))
        progress = await asyncio.gather(*(self._progress(job_id) for job_id, _ in listed))
        found = [_Candidate(j, p, f) for (j, p), f in zip(listed, progress, strict=True)]
        # The least important first (highest key), then the one that would lose least.
        return sorted(found, key=lambda cand: (-cand.priority, cand.progress))

    async def _progress(self, job_id: str) -> float:
        try:
            s = await self._client.get_workflow_handle(job_id).query(
                c.QUERY_STATUS, result_type=c.JobStatus
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # closed meanwhile, or busy: the validator has the last word
            return 1.0
        return s.step / s.total_steps if s.total_steps else 1.0

    async def _ask(self, inp: c.MakeRoomInput, cand: _Candidate) -> str | None:
        """None if `cand` accepted; else why not. The update id makes a retried activity's
        request to the same job the same request."""
        handle = self._client.get_workflow_handle(cand.job_id)
        try:
            await handle.execute_update(
                c.UPDATE_YIELD,
                c.YieldRequest(by_job_id=inp.job_id, priority=inp.priority),
                id=f"yield-for-{inp.job_id}-{inp.round}",
                result_type=c.YieldAnswer,
            )
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            return cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        except RPCError as err:  # closed or gone since it was listed
            return err.message
        return None
