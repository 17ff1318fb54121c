"""The OpenAPI document, made to tell the truth: every status each operation can answer, with
the error body's schema, the create request's body (JSON or form), and examples.

FastAPI documents what a route declares: its 200 and a 422 it never sends here (validation
errors are 400s, api.errors). `install` post-processes its document once: the 422s go, and
each operation gets the statuses of `STATUSES` (a test, tests/test_openapi.py, runs generated
requests against the app and fails on any status or body the document does not list).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import CreateVideoBody, ErrorBody

WHY = {
    "400": "Invalid input: `error.param` names the field, the message the allowed values.",
    "401": "Missing or unknown API key (`Authorization: Bearer <key>`).",
    "403": "Not allowed: a tampered or expired signed link, or a user's key on an admin endpoint.",
    "404": "No such resource (another user's video is a 404 too).",
    "409": "The video's state does not allow it (not completed, already finished, running), or "
    "an Idempotency-Key reused with another body.",
    "413": "Request body over 64 KiB.",
    "415": "Unsupported content type: send application/json or multipart/form-data.",
    "429": "Over a rate limit or quota: retry after `Retry-After` seconds.",
    "503": "Temporal or the object store does not answer: retry after `Retry-After` seconds.",
}

# Statuses besides 200 that each operation can answer. Every request may also be a 413 (body
# over the limit, api.app.BodyLimit), listed where a body is expected.
STATUSES: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/v1/videos"): ("400", "401", "409", "413", "415", "429", "503"),
    ("get", "/v1/videos"): ("400", "401", "503"),
    ("get", "/v1/videos/{video_id}"): ("401", "404", "503"),
    ("delete", "/v1/videos/{video_id}"): ("401", "404", "409", "503"),
    ("get", "/v1/videos/{video_id}/content"): ("400", "401", "404", "409", "503"),
    ("get", "/v1/videos/{video_id}/content_url"): ("400", "401", "404", "409", "503"),
    ("post", "/v1/videos/{video_id}/cancel"): ("401", "404", "409", "503"),
    ("get", "/v1/videos/{video_id}/events"): ("204", "401", "404", "503"),
    ("get", "/v1/files/{video_id}/{variant}"): ("400", "403", "404", "503"),
    ("get", "/v1/models"): ("401",),
    ("get", "/v1/models/{model_id}"): ("401", "404"),
    ("get", "/v1/webhook_secret"): ("401",),
    ("get", "/v1/admin/fleet"): ("401", "403", "404", "503"),
    ("get", "/readyz"): ("503",),
    ("get", "/healthz"): ("503",),
}
# 200s that are not JSON.
CONTENT: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/v1/videos/{video_id}/content"): {
        "video/mp4": {},
        "image/png": {},
        "image/jpeg": {},
    },
    ("get", "/v1/files/{video_id}/{variant}"): {
        "video/mp4": {},
        "image/png": {},
        "image/jpeg": {},
    },
    ("get", "/v1/videos/{video_id}/events"): {"text/event-stream": {}},
    ("get", "/metrics"): {"text/plain": {}},
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
CREATE_EXAMPLE = {
    "prompt": "a red ball bouncing on a wooden floor",
    "model": "videogen-tiny",
    "size": "256x256",
    "seconds": 2,
    "seed": 42,
}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schemas["ErrorBody"].pop("$defs", {}))
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            _fix(op, method, path, schemas)
    return doc


def _fix(op: dict[str, Any], method: str, path: str, schemas: dict[str, Any]) -> None:
    responses = op.setdefault("responses", {})
    responses.pop("422", None)
    if (method, path) in CONTENT:
        responses["200"]["content"] = CONTENT[(method, path)]
    for status in STATUSES.get((method, path), ()):
        if status == "204":
            responses[status] = {"description": "The viewer has the final event: stop."}
        else:
            responses[status] = {
                "description": WHY[status],
                "content": {"application/json": {"schema": ERROR_REF}},
            }
    if (method, path) == ("post", "/v1/videos"):
        schemas["CreateVideoBody"] = CreateVideoBody.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        body = {"$ref": "#/components/schemas/CreateVideoBody"}
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": body, "example": CREATE_EXAMPLE},
                "multipart/form-data": {"schema": body},
            },
        }
