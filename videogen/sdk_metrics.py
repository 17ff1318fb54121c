"""The Temporal SDK's own metrics, served by the process's Prometheus endpoint.

The SDK (its Rust core) can run its own Prometheus server, but that is a second port per process
to scrape and to keep apart when several processes share a host. Instead every videogen process
gives the SDK a `MetricBuffer`, drains it on a background thread and serves what it holds
through `prometheus_client`, next to videogen's own metrics on `/metrics`:

- the SDK's metrics keep their names with a `temporal_` prefix (`temporal_workflow_completed`,
  `temporal_activity_execution_latency_seconds`, `temporal_worker_task_slots_available`, ...);
- metrics that workflow code records with `workflow.metric_meter()` (replay-safe: nothing is
  recorded while a workflow replays) keep their own `videogen_` names, e.g.
  `videogen_jobs_total{outcome}` from the CPU worker.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_GAUGE,
    LogForwardingConfig,
    LoggingConfig,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

PREFIX = "temporal_"
# Durations are recorded in seconds (MetricBufferDurationFormat.SECONDS).
BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    math.inf,
)
DRAIN_INTERVAL_S = 1.0

Labels = tuple[tuple[str, str], ...]


class _Hist:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.buckets[i] += 1


class TemporalMetrics(Collector):
    """A `prometheus_client` collector fed by the SDK's metric buffer."""

    def __init__(self, buffer_size: int = 100_000) -> None:
        self.buffer = MetricBuffer(buffer_size, MetricBufferDurationFormat.SECONDS)
        self._lock = threading.Lock()
        # name -> (kind, description, unit, {labels: value})
        self._series: dict[str, tuple[int, str, str, dict[Labels, Any]]] = {}
        self._runtime: Runtime | None = None

    def runtime(self) -> Runtime:
        """The process's Temporal runtime, recording into this collector's buffer."""
        if self._runtime is None:
            self._runtime = Runtime(
                telemetry=TelemetryConfig(
                    metrics=self.buffer,
                    # The SDK core's own warnings go through `logging` (so into the JSON log
                    # lines, videogen.logs) rather than to stderr as coloured text.
                    logging=LoggingConfig(
                        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
                    ),
                )
            )
            threading.Thread(
                target=self._drain_forever, name="temporal-metrics", daemon=True
            ).start()
        return self._runtime

    def _drain_forever(self) -> None:
        # Drained even when nobody scrapes, so the buffer never fills and drops updates.
        while True:
            time.sleep(DRAIN_INTERVAL_S)
            self.drain()

    def drain(self) -> None:
        if self._runtime is None:
            return
        # Under the lock: two drains (the thread, a scrape) must apply batches in order, or a
        # gauge could end on an older value.
        with self._lock:
            for u in self.buffer.retrieve_updates():
                m = u.metric
                name = m.name if m.name.startswith((PREFIX, "videogen_")) else PREFIX + m.name
                entry = self._series.get(name)
                if entry is None:
                    entry = (int(m.kind), m.description or name, m.unit or "", {})
                    self._series[name] = entry
                labels: Labels = tuple(sorted((str(k), str(v)) for k, v in u.attributes.items()))
                values = entry[3]
                if m.kind == BUFFERED_METRIC_KIND_COUNTER:
                    values[labels] = values.get(labels, 0) + u.value
                elif m.kind == BUFFERED_METRIC_KIND_GAUGE:
                    values[labels] = u.value
                else:
                    hist = values.get(labels)
                    if hist is None:
                        hist = values[labels] = _Hist()
                    hist.observe(float(u.value))

    def collect(self) -> Iterator[Metric]:
        self.drain()
        with self._lock:
            for name, (kind, doc, unit, values) in sorted(self._series.items()):
                if kind == BUFFERED_METRIC_KIND_COUNTER:
                    base = name.removesuffix("_total")
                    fam = Metric(base, doc, "counter")
                    for labels, v in values.items():
                        fam.add_sample(base + "_total", dict(labels), v)
                elif kind == BUFFERED_METRIC_KIND_GAUGE:
                    fam = Metric(name, doc, "gauge")
                    for labels, v in values.items():
                        fam.add_sample(name, dict(labels), v)
                else:
                    # Durations arrive in seconds; Prometheus names carry their unit.
                    base = (
                        name + "_seconds"
                        if unit in ("duration", "s") and not name.endswith("_seconds")
                        else name
                    )
                    fam = Metric(base, doc, "histogram")
                    for labels, h in values.items():
                        lab = dict(labels)
                        for bound, n in zip(BUCKETS, h.buckets, strict=True):
                            le = "+Inf" if math.isinf(bound) else repr(bound)
                            fam.add_sample(base + "_bucket", {**lab, "le": le}, n)
                        fam.add_sample(base + "_count", lab, h.count)
                        fam.add_sample(base + "_sum", lab, h.sum)
                yield fam


_COLLECTOR: TemporalMetrics | None = None
_LOCK = threading.Lock()


def collector() -> TemporalMetrics:
    """The process's collector, registered with the default Prometheus registry once."""
    global _COLLECTOR
    with _LOCK:
        if _COLLECTOR is None:
            _COLLECTOR = TemporalMetrics()
            REGISTRY.register(_COLLECTOR)
        return _COLLECTOR


def runtime() -> Runtime:
    return collector().runtime()
