"""`GET /v1/files/{id}/{variant}`: content behind an expiring HMAC-signed URL (file:// storage).

The signature is the authorisation: whoever holds the URL may fetch that one object until
`expires`. A tampered or expired URL is a 403. On s3:// the API hands out S3 presigned URLs
instead and this route is not involved.

`stream` (also behind `GET /v1/videos/{id}/content`) reads the object's size and first chunk
before the response starts, so a store that is down is a 503 (api/errors.py); a failure after
that can only cut the transfer short, as the headers are out.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from api.deps import SettingsDep, StoreDep
from api.errors import ApiError, NotFoundError
from videogen import contracts as c
from videogen.storage import NotFound, ObjectStore

router = APIRouter(prefix="/v1/files", tags=["files"])
# Job ids as the API makes them (`video_` and hex digits; see api.jobs, api.admission).
JOB_ID = re.compile(r"video_[0-9a-f]{1,64}")


def _sig(secret: str, video_id: str, variant: str, expires: int) -> str:
    msg = f"{video_id}/{variant}/{expires}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def signed_path(secret: str, video_id: str, variant: str, expires: int) -> str:
    return (
        f"/v1/files/{video_id}/{variant}?expires={expires}"
        f"&sig={_sig(secret, video_id, variant, expires)}"
    )


async def stream(store: ObjectStore, video_id: str, variant: str, obj: str) -> StreamingResponse:
    name, media_type = c.VARIANTS[variant]
    try:
        size = await asyncio.to_thread(store.size, obj)
    except NotFound:
        raise NotFoundError(
            f"the {variant} of video {video_id} is no longer stored (expired or deleted)",
            code="content_gone",
        ) from None
    ext = name.rsplit(".", 1)[-1]
    # Off the event loop: opening an S3 object is a request, and so may be the first read.
    chunks = await asyncio.to_thread(store.iter_chunks, obj)
    first = await asyncio.to_thread(next, chunks, b"")
    return StreamingResponse(
        _body(first, chunks),
        media_type=media_type,
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{video_id}.{ext}"',
        },
    )


async def _body(first: bytes, rest: Iterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in iterate_in_threadpool(rest):
        yield chunk


@router.get("/{video_id}/{variant}")
async def signed_file(
    video_id: str,
    variant: str,
    settings: SettingsDep,
    store: StoreDep,
    expires: Annotated[int, Query()],
    sig: Annotated[str, Query()],
) -> StreamingResponse:
    if not JOB_ID.fullmatch(video_id):
        # Before the id reaches a store key: '..', backslashes or a 5,000-character id are no
        # video, however well signed.
        raise NotFoundError("no video with this id", param="video_id", code="video_not_found")
    expected = _sig(settings.url_signing_key, video_id, variant, expires)
    if variant not in c.VARIANTS or not hmac.compare_digest(
        expected.encode(), sig.encode("utf-8", "replace")
    ):
        raise ApiError(
            403,
            "invalid signature: this link was altered; ask for a new one with "
            "GET /v1/videos/{id}/content_url",
            code="invalid_signature",
        )
    if time.time() > expires:
        raise ApiError(
            403,
            "this link has expired; ask for a new one with GET /v1/videos/{id}/content_url",
            code="url_expired",
        )
    if await asyncio.to_thread(store.exists, c.tombstone_key(video_id)):
        raise NotFoundError(f"video {video_id} was deleted", code="content_gone")
    return await stream(
        store, video_id, variant, c.outputs_prefix(video_id) + c.VARIANTS[variant][0]
    )
