"""api.errors: every domain error the service code raises gets its status here, and only here."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import errors


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
