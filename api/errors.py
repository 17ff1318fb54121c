"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}` with the right 4xx.

Every error a client can cause maps to a 4xx that names the field and says how to fix it;
a dependency that cannot answer right now (Temporal, the object store) is a 503 with
`Retry-After`, decided here alone (`as_unavailable`); only our own bugs become a 500, and even
then the body has the same shape.
"""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from videogen.storage import StorageError, StoreUnavailable

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


# Seconds a client is told to wait when a dependency is down: about one bounded retry of the
# API's Temporal client (videogen.temporal.API_RETRY) or of an S3 call.
RETRY_AFTER_S = 2

# Temporal statuses a retry may fix. Measured with temporalio 1.35 against a dev server: a
# stopped server answers UNAVAILABLE ("tcp connect error"); a hung one (SIGSTOP) ends in the
# call's rpc_timeout as CANCELLED ("Timeout expired"). The server itself says DEADLINE_EXCEEDED
# or RESOURCE_EXHAUSTED when it is overloaded.
TRANSIENT_RPC = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.CANCELLED,
    }
)
# What the lazy client (videogen.temporal.connect_api) raises while its first connection fails.
_CONNECT_FAILED = "Failed client connect"


def as_unavailable(exc: BaseException) -> UnavailableError | None:
    """The 503 for a failure of Temporal or the object store that the same request may not meet
    later; None for anything else (a bug, a permanent error: those stay 500)."""
    if isinstance(exc, UnavailableError):
        return exc
    temporal_down = (isinstance(exc, RPCError) and exc.status in TRANSIENT_RPC) or (
        isinstance(exc, RuntimeError) and str(exc).startswith(_CONNECT_FAILED)
    )
    if temporal_down:
        return UnavailableError(
            # A write cut off by its timeout may still have reached Temporal: do not claim it
            # did not; a create retried with its Idempotency-Key never starts a second job.
            f"the job service (Temporal) is not answering ({_short(exc)}); retry in "
            f"{RETRY_AFTER_S} s (a POST with the same Idempotency-Key never starts a second job)",
            code="temporal_unavailable",
            retry_after_s=RETRY_AFTER_S,
        )
    if isinstance(exc, StoreUnavailable):
        return UnavailableError(
            f"the object store is not answering ({_short(exc)}); retry in {RETRY_AFTER_S} s",
            code="storage_unavailable",
            retry_after_s=RETRY_AFTER_S,
        )
    return None


def _short(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, RPCError) else str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


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
        return service_response(exc)

    async def _dependency(request: Request, exc: Exception) -> JSONResponse:
        unavailable = as_unavailable(exc)
        if unavailable is None:
            return _internal_error(request, exc)
        log.warning("dependency unavailable", path=request.url.path, error=unavailable.message)
        return service_response(unavailable)

    # Where a dependency's failures surface: Temporal's RPCError (and the lazy client's
    # RuntimeError), the store's StorageError. Anything else of these kinds is still a 500.
    for kind in (RPCError, RuntimeError, StorageError):
        app.add_exception_handler(kind, _dependency)

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
        return _internal_error(request, exc)


def service_response(exc: ServiceError) -> JSONResponse:
    status = service_status(exc)
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    return JSONResponse(
        error_body(status, exc.message, exc.param, exc.code), status_code=status, headers=headers
    )


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", path=request.url.path, exc_info=exc)
    return JSONResponse(
        error_body(500, "internal error; the request was not applied"), status_code=500
    )
