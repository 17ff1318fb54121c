"""Spot interruption notices: poll the instance-metadata endpoint until one says we are going.

AWS publishes a notice about two minutes before it reclaims a spot instance, at
`http://169.254.169.254/latest/meta-data/spot/instance-action`: 404 while there is none, then
`{"action": "terminate" | "stop" | "hibernate", "time": "<UTC>"}`. The GPU worker treats a
notice exactly like SIGTERM (checkpoint at the next step boundary, hand the job over).
IMDSv2 is used when the endpoint offers it (a session token from `PUT /latest/api/token`),
IMDSv1 otherwise. Other clouds' endpoints work if they answer 404/200 the same way.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

log = structlog.get_logger(__name__)

TOKEN_TTL_S = 21600


def _token_url(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.path.startswith("/latest/"):
        return None
    return f"{parts.scheme}://{parts.netloc}/latest/api/token"


async def _token(client: httpx.AsyncClient, url: str) -> str | None:
    token_url = _token_url(url)
    if token_url is None:
        return None
    try:
        r = await client.put(
            token_url, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)}
        )
    except httpx.HTTPError:
        return None
    return r.text if r.status_code == 200 and r.text else None


async def check_notice(client: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    """The notice if there is one now, else None (no notice, or the endpoint is unreachable)."""
    token = await _token(client, url)
    headers = {"X-aws-ec2-metadata-token": token} if token else {}
    try:
        r = await client.get(url, headers=headers)
    except httpx.HTTPError as err:
        log.debug("spot notice endpoint unreachable", url=url, error=str(err))
        return None
    if r.status_code != 200:
        return None
    try:
        notice = json.loads(r.text)
    except ValueError:
        notice = {"action": "unknown", "raw": r.text[:200]}
    return notice if isinstance(notice, dict) else {"action": "unknown", "raw": r.text[:200]}


async def wait_for_notice(
    url: str, *, poll_s: float = 5.0, timeout_s: float = 2.0
) -> dict[str, Any]:
    """Poll `url` every `poll_s` seconds; return the first interruption notice."""
    # trust_env=False: an HTTP(S)_PROXY set for the cluster must not swallow link-local requests.
    async with httpx.AsyncClient(
        timeout=timeout_s, follow_redirects=False, trust_env=False
    ) as client:
        while True:
            try:
                notice = await check_notice(client, url)
            except Exception as err:  # a bad URL or a bug must not end the watch silently
                log.error("spot notice check failed", url=url, error=f"{type(err).__name__}: {err}")
                notice = None
            if notice is not None:
                log.warning(
                    "spot interruption notice",
                    url=url,
                    **{k: v for k, v in notice.items() if k in ("action", "time")},
                )
                return notice
            await asyncio.sleep(poll_s)
