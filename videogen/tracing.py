"""OpenTelemetry tracing: one trace per video, from the HTTP request through every activity.

Off by default. The standard OpenTelemetry environment variables turn it on, so a deployment
configures it the way it configures any other service:

- `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): export spans over
  OTLP/HTTP to a collector (Jaeger, Tempo, Honeycomb, ...);
- `OTEL_TRACES_EXPORTER=console`: print spans (debugging); `otlp` with the default endpoint;
- `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`: as the spec says;
- `OTEL_SDK_DISABLED=true` turns it off again.

The API's FastAPI instrumentation opens the server span; Temporal's `TracingInterceptor` on the
client carries its context into the workflow's headers, and on the workers into every workflow
task and activity attempt, so a retried GPU attempt on another machine joins the same trace.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace


def wanted() -> bool:
    """Whether the environment asks for tracing."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup(service: str) -> bool:
    """Install a tracer provider with the exporter the environment names; True if tracing is
    on. A provider installed before (by a test, or by `opentelemetry-instrument`) is kept."""
    if enabled():
        return True
    if not wanted():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        # One JSON object per line, so spans interleave with the JSON log lines readably.
        exporter = ConsoleSpanExporter(
            formatter=lambda span: span.to_json(indent=None) + os.linesep
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def enabled() -> bool:
    """Whether a real tracer provider is installed (not the API's no-op default)."""
    from opentelemetry.sdk.trace import TracerProvider

    return isinstance(trace.get_tracer_provider(), TracerProvider)


def interceptors() -> list[Any]:
    """Temporal client interceptors: the tracing one when tracing is on. Workers built on the
    client inherit it."""
    if not enabled():
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def instrument_app(app: Any) -> None:
    if not enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # Health checks and scrapes every few seconds would drown the traces that matter; signed
    # download links carry their signature in the query string.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,metrics,v1/files")


def shutdown() -> None:
    """Flush spans still buffered (a worker exiting after a preemption hand-over)."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "shutdown", None)
    if callable(flush):
        flush()
