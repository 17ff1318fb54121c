"""`POST /codec/decode` and `/codec/encode`: Temporal's remote codec protocol, for operators.

Temporal stores videogen's payloads encrypted (videogen.codec). The Web UI (`--ui-codec-endpoint`,
which `videogen up` sets) and the CLI (`temporal workflow show --codec-endpoint URL
--codec-auth "Bearer KEY"`) send the payloads they show here and get them back in the clear.
The body is Temporal's `Payloads` message as protobuf JSON, both ways.

Only operators may decode: the admin key (`VIDEOGEN_ADMIN_KEY`) as a bearer token; without one
the endpoints are off (404), as the admin endpoints are. On the embedded stack a request from
loopback needs no key, because the dev server's UI has no way to send one (and the embedded
stack's development key is public anyway). Browsers may call it only from the origins in
`VIDEOGEN_CODEC_CORS_ORIGINS` (the Web UI's).
"""

from __future__ import annotations

import hmac
from enum import StrEnum

from fastapi import APIRouter, Request, Response
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payloads

from api.deps import SettingsDep
from api.errors import ApiError, NotFoundError
from videogen import codec
from videogen.settings import Settings
from videogen.temporal import is_embedded

router = APIRouter(prefix="/codec", tags=["codec"], include_in_schema=False)
LOOPBACK = ("127.0.0.1", "::1")


class Direction(StrEnum):
    ENCODE = "encode"
    DECODE = "decode"


def _cors(request: Request, settings: Settings, response: Response) -> Response:
    origin = request.headers.get("origin", "")
    allowed = [o.strip() for o in settings.codec_cors_origins.split(",") if o.strip()]
    if origin and origin in allowed:
        response.headers.update(
            {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": "authorization, content-type, x-namespace",
                "Vary": "Origin",
            }
        )
    return response


def _authorise(request: Request, settings: Settings) -> None:
    header = request.headers.get("authorization", "")
    expected = f"Bearer {settings.admin_key}".encode()
    # As bytes: a header may hold any latin-1 character, which str comparison refuses.
    if settings.admin_key and hmac.compare_digest(header.encode("latin-1"), expected):
        return
    client = request.client.host if request.client else ""
    if not header and is_embedded() and client in LOOPBACK:
        return
    if not settings.admin_key and not is_embedded():
        raise NotFoundError(
            "the codec endpoints are off; set VIDEOGEN_ADMIN_KEY to enable them", code="not_found"
        )
    raise ApiError(
        401,
        "the codec endpoints take the operator key: `Authorization: Bearer <VIDEOGEN_ADMIN_KEY>`",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


@router.options("/{direction}")
async def preflight(direction: Direction, request: Request, settings: SettingsDep) -> Response:
    return _cors(request, settings, Response(status_code=204))


@router.post("/{direction}")
async def transcode(direction: Direction, request: Request, settings: SettingsDep) -> Response:
    _authorise(request, settings)
    try:
        payloads = json_format.Parse(await request.body(), Payloads())
    except (json_format.ParseError, DecodeError, UnicodeDecodeError) as err:
        raise ApiError(
            400, f"body: expected Temporal's Payloads as protobuf JSON ({err})", param="payloads"
        ) from None
    coder: codec.EncryptionCodec = request.app.state.codec
    try:
        if direction == Direction.ENCODE:
            out = await coder.encode(payloads.payloads)
        else:
            out = await coder.decode(payloads.payloads)
    except codec.PayloadKeyError as err:
        raise ApiError(400, str(err), param="payloads", code="undecryptable_payload") from None
    body = json_format.MessageToJson(Payloads(payloads=out))
    return _cors(request, settings, Response(body, media_type="application/json"))
