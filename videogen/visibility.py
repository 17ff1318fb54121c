"""Temporal visibility queries, built in one place with one quoting rule.

Every query the API sends (job lists, rate limits, queue estimates, fleet counts) is made of
the clauses below, so no value reaches a query unquoted: a value holding ``'``, ``"`` or ``\\``
can neither end its string early nor add a condition (tests/test_visibility.py checks that
against a real server).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from videogen import contracts as c

Value = str | int | float | datetime


def literal(value: Value) -> str:
    """A value as a query literal: strings single-quoted with ``\\`` and ``'`` escaped, times
    as quoted ISO 8601, numbers as they are."""
    if isinstance(value, bool):
        raise TypeError("visibility queries have no booleans here; compare a keyword instead")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        value = value.isoformat()
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def eq(field: str, value: Value) -> str:
    return f"{field} = {literal(value)}"


def one_of(field: str, values: Iterable[Value]) -> str:
    return f"{field} IN ({', '.join(literal(v) for v in values)})"


def jobs(*clauses: str, status: str | None = None) -> str:
    """Video jobs matching every clause, and in one `ExecutionStatus` ('Running',
    'Completed', ...) if `status` is given."""
    parts = [eq("WorkflowType", c.WORKFLOW_NAME)]
    if status is not None:
        parts.append(eq("ExecutionStatus", status))
    return " AND ".join([*parts, *clauses])
