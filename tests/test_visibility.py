"""videogen.visibility: one quoting rule for every visibility query, checked on a real server.

Values a query compares with (user ids, tiers, model names) must never change the query's
shape: a quote ends no string early, a backslash escapes nothing it should not, and a value
shaped like SQL adds no condition. (API user ids are limited to `[A-Za-z0-9_.@+-]`, so these
values come from configuration: tier and model names.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from videogen import contracts as c
from videogen import visibility as vis
from videogen.stack import Stack
from videogen.temporal import connect

TRICKY = ["it's", 'say "hi"', "back\\slash", "end\\", "x' OR VideogenModel != 'y", "\\\"'"]


def test_literals() -> None:
    assert vis.literal("plain") == "'plain'"
    assert vis.literal("it's") == "'it\\'s'"
    assert vis.literal("a\\b") == "'a\\\\b'"
    assert vis.literal(3) == "3" and vis.literal(2.5) == "2.5"
    assert vis.literal(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "'2026-01-02T03:04:05+00:00'"
    with pytest.raises(TypeError):
        vis.literal(True)
    assert vis.jobs(vis.eq(c.SA_USER, "u"), status="Running") == (
        f"WorkflowType = '{c.WORKFLOW_NAME}' AND ExecutionStatus = 'Running' AND {c.SA_USER} = 'u'"
    )
    assert vis.one_of(c.SA_TIER, ["a", "b'"]) == f"{c.SA_TIER} IN ('a', 'b\\'')"


@pytest_asyncio.fixture
async def tricky_jobs(stack: Stack) -> AsyncIterator[tuple[Client, str, list[str]]]:
    """One queued job (no worker polls its queue) per tricky model name, plus a plain one; all
    tagged with a run-unique prefix so other tests' jobs never match."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{stack.temporal_port}")
        client = await connect(wait_s=10)
    run = uuid.uuid4().hex[:8]
    names = [f"{run}{value}" for value in TRICKY] + [f"{run}plain"]
    handles = []
    for name in names:
        handles.append(
            await client.start_workflow(
                c.WORKFLOW_NAME,
                id=f"vis-{uuid.uuid4().hex}",
                task_queue=f"vis-{run}",
                search_attributes=TypedSearchAttributes([SearchAttributePair(c.MODEL_KEY, name)]),
            )
        )
    try:
        yield client, run, names
    finally:
        for handle in handles:
            await handle.terminate("test over")


async def _count(client: Client, query: str, expected: int, deadline_s: float = 10) -> int:
    """The count once visibility has caught up with the starts (it lags a little, and not for
    every start at once: a count taken as soon as it is non-zero can miss the last ones), or at
    the deadline; a count over `expected` is returned at once."""
    end = time.monotonic() + deadline_s
    while True:
        n = (await client.count_workflows(query)).count
        if n >= expected or time.monotonic() > end:
            return n
        await asyncio.sleep(0.2)


async def test_a_value_can_neither_break_nor_widen_a_query(
    tricky_jobs: tuple[Client, str, list[str]],
) -> None:
    client, run, names = tricky_jobs
    everything = vis.jobs(f"{c.SA_MODEL} STARTS_WITH {vis.literal(run)}")
    assert await _count(client, everything, len(names)) == len(names)
    for name in names:
        n = (await client.count_workflows(vis.jobs(vis.eq(c.SA_MODEL, name)))).count
        if '"' in name or "\\" in name:
            # The dev server's SQLite visibility finds no keyword holding `"` or `\` however it
            # is escaped (measured): such a value matches nothing, never more than itself.
            assert n <= 1, name
        else:
            assert await _count(client, vis.jobs(vis.eq(c.SA_MODEL, name)), 1) == 1, name
    # Shaped like an injection: it matches only a job with exactly that name, not every job.
    widened = vis.jobs(vis.eq(c.SA_MODEL, f"{run}plain' OR {c.SA_MODEL} != 'nothing"))
    assert (await client.count_workflows(widened)).count == 0
    findable = [name for name in names if '"' not in name and "\\" not in name]
    assert len(findable) == 3
    query = vis.jobs(vis.one_of(c.SA_MODEL, findable))
    assert await _count(client, query, len(findable)) == len(findable)
