"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}` with the right 4xx.

Every error a client can cause maps to a 4xx that names the field and says how to fix it;
only our own bugs become a 500, and even then the body has the same shape.
"""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)

_TYPES = {
    403: "permission_error",
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class ServiceError(Exception):
    """A request the service refuses for what it asks, not for its form: no such video, a
    state conflict, a limit, a dependency down. Service code (api.jobs, api.admission, the
    routers' job logic) raises the subclasses below; `install` alone gives each its HTTP
    status (`_SERVICE_STATUS`)."""

    def __init__(
        self, message: str, *, code: str, param: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequestError(ServiceError):
    """A value the service itself finds unusable (a forged or expired list cursor)."""


class NotFoundError(ServiceError):
    """The thing does not exist, or is not the caller's (never say which)."""


class ConflictError(ServiceError):
    """The request contradicts the job's state or an earlier request."""


class RateLimitedError(ServiceError):
    """Over one of the tier's limits; `retry_after_s` says when one more would fit."""


class UnavailableError(ServiceError):
    """A dependency cannot answer right now; the same request later may succeed."""


_SERVICE_STATUS: dict[type[ServiceError], int] = {
    InvalidRequestError: 400,
    NotFoundError: 404,
    ConflictError: 409,
    RateLimitedError: 429,
    UnavailableError: 503,
}


def service_status(err: ServiceError) -> int:
    return next(status for kind, status in _SERVICE_STATUS.items() if isinstance(err, kind))


class ApiError(Exception):
    """An error at the HTTP edge (authentication, a malformed request), with its status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def validation_error(err: ValidationError | RequestValidationError) -> ApiError:
    """First pydantic error as one message that names the field."""
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown parameter; check the spelling against the API reference"
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status, exc.message, exc.param, exc.code),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        status = service_status(exc)
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return JSONResponse(
            error_body(status, exc.message, exc.param, exc.code),
            status_code=status,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        e = validation_error(exc)
        return JSONResponse(error_body(400, e.message, e.param, e.code), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the API"
        return JSONResponse(
            error_body(exc.status_code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path)
        return JSONResponse(
            error_body(500, "internal error; the request was not applied"), status_code=500
        )
