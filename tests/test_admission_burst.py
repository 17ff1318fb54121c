"""Rate limits under a burst: 200 concurrent submissions spread over two API processes (real
HTTP, one Temporal, one object store) admit exactly the configured limits, no more.

With limits counted in Temporal's visibility store, such a burst admitted 111 jobs against a
concurrency limit of 10: visibility lags exactly when the burst arrives. The ledgers of
videogen.quota are changed by compare-and-swap, so each admission sees every earlier one.
The jobs go to a GPU queue no worker polls: they stay queued and hold their places.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from helpers import submit, wait_for

from videogen import contracts as c
from videogen import quota
from videogen import visibility as vis
from videogen.devserver import free_port
from videogen.stack import Stack, wait_ready
from videogen.storage import open_store

# The fault tier; the module's time budget, its replicas' start included.
pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]

BODY = {"prompt": "a kite", "size": "64x64", "seconds": 1, "num_inference_steps": 3}
BURST = 200


def _tiers() -> dict[str, dict[str, int]]:
    return {
        "paid": {"priority": 2, "user_concurrent": 10, "user_per_minute": 1000},
        "free": {"priority": 4, "user_concurrent": 2, "user_per_minute": 1000},
        "batch": {"priority": 5, "user_per_minute": 7},
        "team": {"priority": 3, "tier_concurrent": 6},
    }


@pytest.fixture(scope="module")
def burst(stack: Stack) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Two API replicas of their own, with the limits above, and an API key per test user."""
    run = uuid.uuid4().hex[:8]
    users = {
        "paid": f"burst-paid-{run}",
        "free1": f"burst-free1-{run}",
        "free2": f"burst-free2-{run}",
        "batch": f"burst-batch-{run}",
        "team1": f"burst-team1-{run}",
        "team2": f"burst-team2-{run}",
    }
    tiers = {"paid": "paid", "free1": "free", "free2": "free", "batch": "batch"}
    tiers |= {"team1": "team", "team2": "team"}
    keys = {name: f"key-{user}" for name, user in users.items()}
    env = {
        **stack.child_env(),
        "VIDEOGEN_API_KEYS": ",".join(f"{keys[n]}:{users[n]}:{tiers[n]}" for n in users),
        "VIDEOGEN_TIERS": json.dumps(_tiers()),
        # A pool of their own: no GPU worker polls it, the jobs stay queued.
        "VIDEOGEN_TASK_QUEUE_PREFIX": f"burst-{run}",
    }
    procs, urls = [], []
    for _ in range(2):
        port = free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "videogen.cli", "api"],
                env={**env, "VIDEOGEN_API_PORT": str(port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            wait_ready(url, 60)
        yield urls, keys
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        asyncio.run(_terminate_all(stack, list(users.values())))


async def _terminate_all(stack: Stack, users: list[str]) -> None:
    # An explicit address, not TEMPORAL_ADDRESS: os.environ leaks into later tests' stacks.
    client = await stack.client()
    for user in users:
        async for ex in client.list_workflows(vis.jobs(vis.eq(c.SA_USER, user), status="Running")):
            await client.get_workflow_handle(ex.id).terminate("burst test over")


async def _post_burst(urls: list[str], key: str, n: int) -> Counter[int]:
    """`n` POSTs at once, alternating between the replicas; the count of each status code."""
    clients = [
        httpx.AsyncClient(
            base_url=url,
            timeout=60,
            limits=httpx.Limits(max_connections=n),
            headers={"Authorization": f"Bearer {key}"},
        )
        for url in urls
    ]
    go = asyncio.Event()

    async def one(i: int) -> int:
        await go.wait()
        r = await clients[i % len(clients)].post("/v1/videos", json=BODY)
        assert r.status_code in (200, 429), r.text
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
        return r.status_code

    try:
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.sleep(0.2)
        go.set()
        return Counter(await asyncio.gather(*tasks))
    finally:
        for cl in clients:
            await cl.aclose()


async def test_a_burst_admits_exactly_the_concurrency_limit(
    burst: tuple[list[str], dict[str, str]],
) -> None:
    urls, keys = burst
    paid = await _post_burst(urls, keys["paid"], BURST)
    assert paid == Counter({200: 10, 429: BURST - 10}), paid
    # Two free users at once, limit 2 each: the ledgers are per user.
    free1, free2 = await asyncio.gather(
        _post_burst(urls, keys["free1"], 40), _post_burst(urls, keys["free2"], 40)
    )
    assert free1[200] == 2 and free2[200] == 2, (free1, free2)


async def test_a_burst_admits_exactly_the_per_minute_and_tier_limits(
    burst: tuple[list[str], dict[str, str]],
) -> None:
    urls, keys = burst
    batch = await _post_burst(urls, keys["batch"], 60)
    assert batch == Counter({200: 7, 429: 53}), batch
    # tier_concurrent counts the tier's users together.
    team1, team2 = await asyncio.gather(
        _post_burst(urls, keys["team1"], 30), _post_burst(urls, keys["team2"], 30)
    )
    assert team1[200] + team2[200] == 6, (team1, team2)


def test_a_finished_job_gives_its_place_back(stack: Stack, api: httpx.Client) -> None:
    # The session stack's "paid" tier counts submissions per minute, so "dev" has a ledger.
    store = open_store(stack.child_env()["VIDEOGEN_STORAGE_URL"])
    user = quota.Quota(quota.Scope.USER, "dev")
    job = submit(api)["id"]
    assert wait_for(api, job)["status"] == "completed"
    # The cleanup activity ran before the workflow closed: the place is free, no reclaim
    # needed (that would ask Temporal only when the ledger is full).
    assert job not in quota.active(store, user)
    raw = json.loads(store.get(quota.ledger_key(quota.Scope.USER, "dev")))
    assert raw["name"] == "dev" and sum(raw["recent"].values()) >= 1
