"""The OpenAPI document tells the truth: schemathesis sends requests generated from it (valid
and invalid) to a real API over HTTP, and every answer must be a status the document lists for
that operation, with a body of its schema and content type, and never a 5xx.

The stack has no GPU worker, so the jobs it accepts stay queued; they are terminated after."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from helpers import private_stack
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from videogen import contracts as c
from videogen import visibility as vis
from videogen.settings import Settings
from videogen.stack import Stack

KEY = "openapi-key"
ADMIN_KEY = "openapi-admin"


@schemathesis.check
def retry_after_on_429_and_503(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 429 and 503 says when to retry."""
    if response.status_code in (429, 503) and "retry-after" not in {
        k.lower() for k in response.headers
    }:
        raise AssertionError(f"{response.status_code} without Retry-After")
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    retry_after_on_429_and_503,
]
# Per operation; about 15 operations: a few hundred requests in all.
EXAMPLES = 20


@pytest.fixture(scope="module")
def ostack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "VIDEOGEN_TASK_QUEUE_PREFIX": f"openapi-{uuid.uuid4().hex[:8]}",
        # Free tier: at most 2 queued jobs per user, so most creates end in a (documented) 429.
        "VIDEOGEN_API_KEYS": f"{KEY}:fuzzer:free",
        "VIDEOGEN_ADMIN_KEY": ADMIN_KEY,
    }
    with private_stack(tmp_path_factory, "openapi", env, gpu_workers=0) as s:
        yield s
        asyncio.run(_terminate_jobs(s))


async def _terminate_jobs(stack: Stack) -> None:
    client = await stack.client()
    async for ex in client.list_workflows(vis.jobs(status="Running")):
        await client.get_workflow_handle(ex.id).terminate("openapi test over")


# The document as the app serves it (built from its routes, no server needed to collect the
# tests); the one served over HTTP is checked to be the same below.
DOC = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(DOC)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_one_the_document_lists(case: Any, ostack: Stack) -> None:
    key = ADMIN_KEY if case.path.startswith("/v1/admin") else KEY
    case.call_and_validate(
        base_url=ostack.api_url, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS
    )


def test_the_document_lists_every_error_status_with_the_error_schema(ostack: Stack) -> None:
    doc = httpx.get(f"{ostack.api_url}/openapi.json").json()
    assert doc == DOC
    create = doc["paths"]["/v1/videos"]["post"]
    assert set(create["responses"]) == {"200", "400", "401", "409", "413", "415", "429", "503"}
    body = create["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["application/json"]["example"]["prompt"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "422" not in op["responses"], f"{method} {path}: validation errors are 400s"
            for status, answer in op["responses"].items():
                if status.startswith(("4", "5")):
                    schema_ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert schema_ref.endswith("/ErrorBody"), (method, path, status)
    props = doc["components"]["schemas"]["CreateVideoBody"]["properties"]
    assert props["prompt"]["maxLength"] == 4000
    assert props["metadata"]["maxProperties"] == 16
    assert c.Status.QUEUED in doc["components"]["schemas"]["Status"]["enum"]
