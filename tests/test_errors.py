"""api.errors: every domain error the service code raises gets its status here, and only here."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from temporalio.service import RPCError, RPCStatusCode

from api import errors
from videogen.storage import StorageError, StoreUnavailable


def _subclasses(cls: type) -> list[type]:
    return [s for sub in cls.__subclasses__() for s in (sub, *_subclasses(sub))]


KINDS = _subclasses(errors.ServiceError)


def test_every_domain_error_has_a_status() -> None:
    assert len(KINDS) >= 5
    for kind in KINDS:
        assert 400 <= errors.service_status(kind("m", code="c")) < 600, kind


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (errors.InvalidRequestError, 400),
        (errors.NotFoundError, 404),
        (errors.ConflictError, 409),
        (errors.RateLimitedError, 429),
        (errors.UnavailableError, 503),
    ],
)
def test_a_domain_error_becomes_its_openai_style_response(
    kind: type[errors.ServiceError], status: int
) -> None:
    app = FastAPI()
    errors.install(app)

    @app.get("/x")
    async def raise_it() -> None:
        raise kind(
            "what went wrong and how to fix it", code="some_code", param="field", retry_after_s=7
        )

    r = TestClient(app).get("/x")
    assert r.status_code == status
    body = r.json()["error"]
    assert body["message"] == "what went wrong and how to fix it"
    assert (body["code"], body["param"]) == ("some_code", "field")
    assert r.headers["Retry-After"] == "7"


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (
            RPCError("tcp connect error", RPCStatusCode.UNAVAILABLE, b""),
            503,
            "temporal_unavailable",
        ),
        (RPCError("deadline", RPCStatusCode.DEADLINE_EXCEEDED, b""), 503, "temporal_unavailable"),
        (RPCError("busy", RPCStatusCode.RESOURCE_EXHAUSTED, b""), 503, "temporal_unavailable"),
        (RPCError("Timeout expired", RPCStatusCode.CANCELLED, b""), 503, "temporal_unavailable"),
        (
            RuntimeError("Failed client connect: Server connection error"),
            503,
            "temporal_unavailable",
        ),
        (StoreUnavailable("cannot stat 'x': s3://b is unreachable"), 503, "storage_unavailable"),
        (RPCError("bad", RPCStatusCode.INVALID_ARGUMENT, b""), 500, None),
        (RuntimeError("a bug"), 500, None),
        (StorageError("permission denied"), 500, None),
    ],
)
def test_a_dependency_failure_is_a_503_with_retry_after_and_a_bug_a_500(
    exc: Exception, status: int, code: str | None
) -> None:
    """Temporal and the object store being down are decided in one place (api.errors)."""
    app = FastAPI()
    errors.install(app)

    @app.get("/x")
    async def raise_it() -> None:
        raise exc

    r = TestClient(app, raise_server_exceptions=False).get("/x")
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code
    if status == 503:
        assert r.headers["Retry-After"] == str(errors.RETRY_AFTER_S)
        assert body["type"] == "service_unavailable_error" and "retry" in body["message"]
    else:
        assert "Retry-After" not in r.headers
