"""`GET /v1/webhook_secret`: the caller's secret for verifying webhook signatures."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import KeyDep, SettingsDep
from api.schemas import WebhookSecret
from videogen import webhooks

router = APIRouter(prefix="/v1", tags=["webhooks"])


@router.get("/webhook_secret", response_model=WebhookSecret)
async def webhook_secret(key: KeyDep, settings: SettingsDep) -> WebhookSecret:
    return WebhookSecret(secret=webhooks.user_secret(settings.webhook_secret_key, key.user))
