"""Spot interruption notices, polled over real HTTP from a stand-in metadata server (the AWS
`spot/instance-action` format, IMDSv2 token or none)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from imds import NOTICE, Metadata

from worker_gpu import spot


@pytest.fixture(params=[True, False], ids=["imdsv2", "imdsv1"])
def metadata(request: pytest.FixtureRequest) -> Iterator[Metadata]:
    m = Metadata(v2=request.param)
    yield m
    m.server.shutdown()


async def test_waits_for_the_notice_and_returns_it(metadata: Metadata) -> None:
    task = asyncio.ensure_future(spot.wait_for_notice(metadata.url, poll_s=0.05))
    while metadata.gets < 3:  # several polls answered "no notice"
        await asyncio.sleep(0.02)
    assert not task.done()
    metadata.notice = NOTICE
    assert await asyncio.wait_for(task, timeout=5) == NOTICE


async def test_unreachable_endpoint_is_not_a_notice() -> None:
    task = asyncio.ensure_future(
        spot.wait_for_notice(
            "http://127.0.0.1:9/latest/meta-data/spot/instance-action", poll_s=0.05, timeout_s=0.2
        )
    )
    await asyncio.sleep(0.5)
    assert not task.done()
    task.cancel()
