"""CPU activity: deliver one signed webhook (Standard Webhooks) to a user's endpoint.

Temporal retries it with backoff, so a delivery survives endpoint outages and worker or API
restarts; every attempt carries the same `webhook-id` (receivers deduplicate on it) and a fresh
timestamp and signature. Redirects are never followed, and the target is checked against the
SSRF rules again before each attempt, since DNS can change after submission.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from videogen import contracts as c
from videogen import webhooks

log = structlog.get_logger(__name__)

TIMEOUT_S = 10.0


class WebhookActivities:
    def __init__(self, secret_key: str, *, allowed_hosts: frozenset[str] = frozenset()) -> None:
        self._secret_key = secret_key
        self._allowed_hosts = allowed_hosts

    @activity.defn(name=c.ACTIVITY_WEBHOOK)
    async def deliver_webhook(self, inp: c.WebhookInput) -> int:
        try:
            target = await asyncio.to_thread(
                webhooks.check_url, inp.url, allowed_hosts=self._allowed_hosts
            )
        except webhooks.UnsafeWebhookURL as err:
            raise ApplicationError(
                f"webhook_url {err}", type=c.ErrorCode.WEBHOOK_UNSAFE, non_retryable=True
            ) from err
        body = inp.body.encode()
        ts = int(time.time())
        secret = webhooks.user_secret(self._secret_key, inp.user)
        headers = {
            "host": target.host,
            "content-type": "application/json",
            "user-agent": "videogen-webhooks/1",
            "webhook-id": inp.webhook_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": webhooks.sign(secret, inp.webhook_id, ts, body),
        }
        attempt = activity.info().attempt
        # Connect to the vetted address (no second DNS lookup), with TLS checked against the
        # original name; read only the status line and headers, all within one deadline.
        async with httpx.AsyncClient(
            timeout=TIMEOUT_S, follow_redirects=False, trust_env=False
        ) as client:
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    async with client.stream(
                        "POST",
                        target.url,
                        content=body,
                        headers=headers,
                        extensions={"sni_hostname": target.host},
                    ) as resp:
                        status = resp.status_code
            except (httpx.HTTPError, TimeoutError) as err:
                raise ApplicationError(
                    f"webhook endpoint unreachable: {err!r}", type="WebhookUnreachable"
                ) from err
        log.info(
            "webhook delivery",
            job_id=inp.job_id,
            model=inp.model,
            webhook_event=inp.event,
            status=status,
            attempt=attempt,
            webhook_id=inp.webhook_id,
        )
        if 200 <= status < 300:
            return status
        if 300 <= status < 400:
            raise ApplicationError(
                f"webhook endpoint answered {status} (redirects are not followed; "
                "give the final URL)",
                type=c.ErrorCode.WEBHOOK_REDIRECT,
                non_retryable=True,
            )
        if status == 410:  # Gone: the receiver asks us to stop
            raise ApplicationError(
                "webhook endpoint answered 410 Gone",
                type=c.ErrorCode.WEBHOOK_GONE,
                non_retryable=True,
            )
        raise ApplicationError(f"webhook endpoint answered {status}", type="WebhookRejected")
