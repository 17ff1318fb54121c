"""Structured logs for every process: JSON lines in production, readable on a terminal.

- `VIDEOGEN_LOG_FORMAT`: `json` or `console` (default: console on a TTY, else JSON);
  `VIDEOGEN_LOG_LEVEL` (default INFO).
- Every line logged while a Temporal activity runs (its threads included) carries the job's
  `workflow_id`, `run_id`, `activity` and `attempt`; lines of workflow code (`workflow.logger`,
  silent while replaying) carry `workflow_id` and `run_id`. The process adds its `worker_id`,
  and a GPU worker its `model`.
- Standard-library loggers (the Temporal SDK's, uvicorn's) go through the same renderer, so a
  log pipeline sees one format.
- Prompts are user data: a `prompt` or `negative_prompt` field is replaced by its length
  unless the level is DEBUG.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from temporalio import activity, workflow

USER_DATA_FIELDS = ("prompt", "negative_prompt")
_STATIC: dict[str, Any] = {}


def worker_id() -> str:
    """This process in the fleet: host and pid (what Temporal shows as the worker identity)."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _temporal_context(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    if activity.in_activity():
        info = activity.info()
        event.setdefault("workflow_id", info.workflow_id)
        event.setdefault("run_id", info.workflow_run_id)
        event.setdefault("activity", info.activity_type)
        event.setdefault("attempt", info.attempt)
    # workflow.logger / activity.logger put their context in `extra` (see ExtraAdder below).
    for key in ("temporal_workflow", "temporal_activity"):
        ctx = event.pop(key, None)
        if isinstance(ctx, dict):
            event.setdefault("workflow_id", ctx.get("workflow_id"))
            event.setdefault("run_id", ctx.get("run_id") or ctx.get("workflow_run_id"))
            for name in ("attempt", "workflow_type", "activity_type"):
                if name in ctx:
                    event.setdefault(name, ctx[name])
    # The SDK core's forwarded entry object: its text is already the message.
    event.pop("temporal_log", None)
    for key, value in _STATIC.items():
        event.setdefault(key, value)
    return event


def _user_data(_: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    if method != "debug":
        for key in USER_DATA_FIELDS:
            value = event.get(key)
            if isinstance(value, str):
                event[key] = f"<{len(value)} chars>"
    return event


def configure(level: str | None = None, **static: Any) -> None:
    """Set up structlog and the standard library's logging for this process. `static` fields
    (worker_id, model, ...) go on every line."""
    _STATIC.update(static)
    lvl = getattr(logging, (level or os.environ.get("VIDEOGEN_LOG_LEVEL", "INFO")).upper())
    fmt = os.environ.get("VIDEOGEN_LOG_FORMAT", "").strip().lower()
    console = fmt == "console" or (fmt != "json" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if console
        # str() for values JSON cannot hold: structlog's own fallback imports
        # lazily, which the workflow sandbox refuses (records logged there).
        else structlog.processors.JSONRenderer(default=str)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        _temporal_context,
        _user_data,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
                *shared,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # JSON lines carry the exception's type and traceback as text (`exception`);
                # the console renderer draws them itself.
                *([] if console else [structlog.processors.format_exc_info]),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # Their context goes into fields (above), not appended to the message text.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
