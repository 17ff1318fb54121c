"""worker_gpu.models.ModelHost: switching the served model, with recording fakes for the loads
and moves (the real switch runs through the whole stack in test_model_routing.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import pipeline
from videogen import catalog
from videogen import contracts as c
from videogen.registry import Registry, ServedModel
from worker_gpu import models
from worker_gpu.models import Held, IdleOnly, ModelHost


class FakePlaced:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name, self.plan = log, name, None

    def park(self) -> None:
        self.log.append(f"park {self.name}")

    def rehome(self, plan: object) -> None:
        self.log.append(f"rehome {self.name}")


class FakeActs:
    def __init__(self) -> None:
        self.running, self.accepting, self.held = 0, True, None

    def hold(self, model: Any) -> None:
        self.held = model


def _served(name: str) -> ServedModel:
    spec = dataclasses.replace(catalog.TINY_SPEC, name=name, path=f"/m/{name}")
    return ServedModel(name, spec, spec.path or "", name * 16, 0, queue_key=name)


def _loaded(log: list[str], name: str) -> Any:
    return type("Loaded", (), {"placed": FakePlaced(log, name)})()


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> tuple[ModelHost, FakeActs, list[str]]:
    log: list[str] = []
    served = {n: _served(n) for n in ("aaaa", "bbbb", "cccc")}

    def load(spec: catalog.ModelSpec, device: str, placement: object = None) -> Any:
        if spec.name == "cccc":
            raise OSError("disk gone")
        log.append(f"load {spec.name}")
        return _loaded(log, spec.name)

    monkeypatch.setattr(pipeline, "load_pipeline", load)
    acts = FakeActs()
    host = ModelHost(
        acts,  # type: ignore[arg-type]
        Held(served["aaaa"], _loaded(log, "aaaa")),
        catalog=Registry(served, {}, "aaaa"),
        queue_of=lambda m: f"q-{m.name}",
        device="cpu",
        placement=None,  # type: ignore[arg-type]
        keep=1,
    )
    return host, acts, log


def _ask(name: str) -> c.WarmUpInput:
    return c.WarmUpInput(
        job_id="video_x", model=name, model_version=name * 16, warm_queue=f"q-{name}"
    )


async def test_a_switch_parks_the_old_model_and_a_switch_back_needs_no_load(
    setup: tuple[ModelHost, FakeActs, list[str]],
) -> None:
    host, acts, log = setup
    env = ActivityEnvironment()
    out = await env.run(host.warm_up, _ask("bbbb"))
    assert out.swapped and host.queue == "q-bbbb" and acts.accepting
    assert log == ["park aaaa", "load bbbb"] and host.active.served.name == "bbbb"
    again = await env.run(host.warm_up, _ask("bbbb"))
    assert not again.swapped and log == ["park aaaa", "load bbbb"]  # already served: nothing
    await env.run(host.warm_up, _ask("aaaa"))
    assert log[2:] == ["park bbbb", "rehome aaaa"]  # from host memory, not from disk
    assert acts.held is host.active.loaded


async def test_models_beyond_keep_are_dropped_least_recently_used_first(
    setup: tuple[ModelHost, FakeActs, list[str]],
) -> None:
    host, _, log = setup
    host._keep = 0
    env = ActivityEnvironment()
    await env.run(host.warm_up, _ask("bbbb"))
    await env.run(host.warm_up, _ask("aaaa"))
    assert log == ["park aaaa", "load bbbb", "park bbbb", "load aaaa"]


async def test_a_busy_worker_or_a_model_it_lacks_refuses_for_another_to_take(
    setup: tuple[ModelHost, FakeActs, list[str]],
) -> None:
    host, acts, log = setup
    acts.running = 1
    assert not host.idle()
    with pytest.raises(ApplicationError) as busy:
        await ActivityEnvironment().run(host.warm_up, _ask("bbbb"))
    assert busy.value.type == c.ErrorCode.WORKER_BUSY and not busy.value.non_retryable
    acts.running = 0
    with pytest.raises(ApplicationError) as lacking:
        await ActivityEnvironment().run(host.warm_up, _ask("dddd"))
    assert lacking.value.type == c.ErrorCode.MODEL_NOT_HERE and not lacking.value.non_retryable
    assert log == [] and host.queue == "q-aaaa"


async def test_a_failed_load_serves_the_old_model_again(
    setup: tuple[ModelHost, FakeActs, list[str]],
) -> None:
    host, acts, log = setup
    with pytest.raises(OSError, match="disk gone"):
        await ActivityEnvironment().run(host.warm_up, _ask("cccc"))
    assert host.active.served.name == "aaaa" and host.queue == "q-aaaa"
    assert acts.accepting and host.idle() and log == ["park aaaa", "rehome aaaa"]


async def test_the_cold_slot_is_offered_only_while_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(models, "IDLE_POLL_S", 0.01)
    idle = False
    slots = IdleOnly(lambda: idle)
    waiting = asyncio.ensure_future(slots.reserve_slot(None))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not waiting.done()
    idle = True
    await asyncio.wait_for(waiting, 1)
    second = asyncio.ensure_future(slots.reserve_slot(None))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not second.done()  # one warm-up at a time
    slots.release_slot(None)  # type: ignore[arg-type]
    await asyncio.wait_for(second, 1)
