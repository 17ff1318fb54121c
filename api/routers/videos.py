"""The `/v1/videos` resource: create, retrieve, list, content, cancel, delete.

Input is validated here, once, at the edge: generic checks by the pydantic body model, model
limits (sizes, lengths, steps) against the model's spec, each error naming the field and the
allowed values. A job that passes is a workflow start; everything after that is Temporal's.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import Counter
from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from api import admission, jobs, presenter, queue
from api.deps import ClientDep, KeyDep, RegistryDep, SettingsDep, StoreDep
from api.errors import (
    TRANSIENT_RPC,
    ApiError,
    ConflictError,
    NotFoundError,
    RateLimitedError,
    validation_error,
)
from api.routers import files
from api.schemas import ContentURL, CreateVideoBody, Video, VideoDeleted, VideoList
from videogen import contracts as c
from videogen import webhooks
from videogen.catalog import ModelSpec
from videogen.registry import Registry, UnknownModel
from videogen.settings import ApiKey, Settings, TierPolicy
from videogen.storage import ObjectStore

router = APIRouter(prefix="/v1/videos", tags=["videos"])

JOBS_SUBMITTED = Counter(
    "videogen_jobs_submitted_total", "Jobs accepted", ["tier", "model", "model_version"]
)


async def _read_body(request: Request) -> dict[str, Any]:
    """JSON, multipart or url-encoded form (the OpenAI SDK sends multipart) as one dict."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form()
        out: dict[str, Any] = {}
        for name, value in form.multi_items():
            if not isinstance(value, str):
                raise ApiError(
                    400,
                    f"{name}: file uploads are not supported; "
                    "input_reference is not available for text-to-video",
                    param=name,
                )
            out[name] = value
        if "metadata" in out:
            try:
                out["metadata"] = json.loads(out["metadata"])
            except (json.JSONDecodeError, RecursionError):
                raise ApiError(
                    400,
                    "metadata: must be a JSON object of strings in a form field",
                    param="metadata",
                ) from None
        _check_text(out)
        return out
    if ctype not in ("application/json", ""):
        raise ApiError(
            415,
            f"unsupported content type {ctype!r}; send application/json or multipart/form-data",
            code="unsupported_media_type",
        )
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(
            400, "request body nests too deeply; send a flat JSON object", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    _check_text(body)
    return body


def _check_text(body: dict[str, Any]) -> None:
    """400, naming the field, for a string that is not text: JSON's `\\udfff` escapes decode to
    lone surrogates, which no UTF-8 payload (Temporal's, the logs') can carry. A loop, not
    recursion: the body may nest as deep as the JSON parser allowed."""
    todo: list[tuple[str, Any]] = [("", body)]
    while todo:
        field, value = todo.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                # The message names the field, never with the bad key itself in it.
                name = str(key) if _is_text(str(key)) else "(a key that is not text)"
                name = f"{field}.{name}" if field else name
                todo += [(name, key), (name, item)]
        elif isinstance(value, list):
            todo += [(f"{field}[{i}]", item) for i, item in enumerate(value)]
        elif isinstance(value, str) and not _is_text(value):
            raise ApiError(
                400,
                f"{field}: holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), "
                "which is not text; send valid Unicode",
                param=field,
                code="invalid_value",
            )


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _build_request(
    body: CreateVideoBody, key: ApiKey, settings: Settings, reg: Registry
) -> c.VideoRequest:
    """Resolve the model (an alias per user), check the body against its limits and fill in
    its defaults."""
    try:
        resolved = reg.resolve(body.model, key.user)
    except UnknownModel as err:
        raise ApiError(400, str(err), param="model", code="unsupported_model") from None
    served = resolved.model
    spec: ModelSpec = served.spec
    size = (body.size or spec.default_size).lower()
    try:
        spec.check_size(size)
    except ValueError as err:
        raise ApiError(400, str(err), param="size", code="unsupported_size") from None
    seconds = body.seconds if body.seconds is not None else spec.default_seconds
    if seconds not in spec.seconds:
        raise ApiError(
            400,
            f"seconds: {seconds} is not supported by {spec.name}; allowed: "
            f"{', '.join(map(str, spec.seconds))}",
            param="seconds",
            code="unsupported_seconds",
        )
    steps = body.num_inference_steps or spec.default_steps
    if steps > spec.max_steps:
        raise ApiError(
            400,
            f"num_inference_steps: at most {spec.max_steps} for {spec.name}",
            param="num_inference_steps",
            code="invalid_value",
        )
    width, height = spec.parse_size(size)
    return c.VideoRequest(
        job_id=jobs.new_job_id(),
        user=key.user,
        tier=key.tier,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        model=spec.name,
        # A job without a seed still gets one, recorded, so it can be reproduced.
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        width=width,
        height=height,
        seconds=seconds,
        fps=spec.fps,
        num_frames=spec.num_frames(seconds),
        num_inference_steps=steps,
        guidance_scale=spec.guidance_scale,
        gpu_task_queue=settings.warm_queue(served, settings.pool_for(key.tier)),
        cpu_task_queue=settings.cpu_task_queue,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        progress_interval_s=settings.progress_interval_s,
        gpu_start_timeout_s=settings.gpu_start_timeout_s,
        metadata=body.metadata or {},
        webhook_url=body.webhook_url or "",
        webhook_events=body.webhook_events or [],
        retention_s=settings.retention_s,
        **_deadline(settings.tiers[key.tier], body.expires_after_s),
        **_preemption(settings.tiers[key.tier]),
        requested_model=resolved.asked,
        model_version=served.version,
        **_cold_route(settings, reg, key.tier),
    )


def _deadline(policy: TierPolicy, expires_after_s: int | None) -> dict[str, Any]:
    """The job's deadline: `expires_after_s`, or its tier's completion window if sooner."""
    window = policy.completion_window_s
    if window and (not expires_after_s or window < expires_after_s):
        return {"deadline_s": window, "deadline_is_window": True}
    return {"deadline_s": float(expires_after_s or 0)}


def _preemption(policy: TierPolicy) -> dict[str, Any]:
    """The tier's preemption settings, as the workflow input names them."""
    return {
        "preempt_after_s": policy.max_wait_s,
        "max_yields": policy.max_yields,
        "min_run_s": policy.min_run_s,
    }


def _cold_route(settings: Settings, reg: Registry, tier: str) -> dict[str, Any]:
    """Cold-start routing, for a catalog of several models (with one, every worker holds it)."""
    if len(reg.models) < 2 or not settings.cold_start_after_s:
        return {}
    return {
        "cold_queue": settings.cold_queue(settings.pool_for(tier)),
        "cold_start_after_s": settings.cold_start_after_s,
    }


@router.post("", response_model=Video)
async def create_video(
    request: Request,
    response: Response,
    key: KeyDep,
    settings: SettingsDep,
    reg: RegistryDep,
    client: ClientDep,
    store: StoreDep,
) -> Video:
    idem = admission.idempotency_key(request.headers.get(admission.IDEMPOTENCY_HEADER))
    raw = await _read_body(request)
    try:
        body = CreateVideoBody.model_validate(raw)
    except ValidationError as err:
        raise validation_error(err) from None
    req = _build_request(body, key, settings, reg)
    if req.cold_queue:
        req.cold_start_now = not await queue.recently_polled(client, req.gpu_task_queue)
    if req.webhook_events and not req.webhook_url:
        raise ApiError(
            400,
            "webhook_events: needs a webhook_url to send them to",
            param="webhook_events",
            code="invalid_value",
        )
    if req.webhook_url:
        try:  # resolves the host: off the event loop
            await asyncio.to_thread(
                webhooks.check_url, req.webhook_url, allowed_hosts=settings.webhook_hosts
            )
        except webhooks.UnsafeWebhookURL as err:
            raise ApiError(
                400, f"webhook_url: {err}", param="webhook_url", code="invalid_webhook_url"
            ) from None
    fingerprint = admission.fingerprint(body)
    if idem is not None:
        # A retry of a request that already started a job gets that job, never a second one,
        # and is not counted against the rate limits again.
        req.job_id = admission.idempotent_job_id(key.user, idem)
        found = await admission.existing(client, store, req.job_id, key, fingerprint)
        if found is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return await presenter.to_video(*found, live=False)
    policy = settings.tiers[key.tier]
    try:
        await admission.admit(client, store, key, policy, req.job_id)
    except RateLimitedError:
        # A concurrent request with the same key may just have started the job (and so taken
        # the place): that job is this request's answer, not a 429.
        if idem is not None:
            found = await admission.existing(client, store, req.job_id, key, fingerprint)
            if found is not None:
                response.headers["Idempotent-Replayed"] = "true"
                return await presenter.to_video(*found, live=False)
        raise
    try:
        await jobs.start(
            client, req, key, policy, fingerprint=fingerprint, idempotent=idem is not None
        )
    except RPCError as err:
        # Refused outright (not a timeout that may have started it): give the place back. An
        # uncertain start keeps it until the ledger is next full (admission._reclaim).
        if err.status not in TRANSIENT_RPC:
            await admission.give_back(store, key, policy, req.job_id)
        raise
    JOBS_SUBMITTED.labels(
        tier=key.tier, model=req.model, model_version=c.model_ref(req.model, req.model_version)
    ).inc()
    if idem is not None:
        # A concurrent request with this key may have won the start: same checks as a replay.
        found = await admission.existing(client, store, req.job_id, key, fingerprint)
        if found is not None:
            return await presenter.to_video(*found, live=False)
    return presenter.just_started(req)


@router.get("", response_model=VideoList)
async def list_videos(
    key: KeyDep,
    settings: SettingsDep,
    client: ClientDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> VideoList:
    videos, cursor = await jobs.list_page(
        client, store, key, limit, after, cursor_secret=settings.url_signing_key
    )
    return VideoList(
        data=videos,
        first_id=videos[0].id if videos else None,
        last_id=videos[-1].id if videos else None,
        has_more=cursor is not None,
        next_cursor=cursor,
    )


@router.get("/{video_id}", response_model=Video)
async def retrieve_video(
    video_id: str,
    response: Response,
    key: KeyDep,
    settings: SettingsDep,
    client: ClientDep,
    store: StoreDep,
) -> Video:
    handle, ex = await jobs.owned_handle(client, store, video_id, key)
    video = await presenter.to_video(
        handle, ex, client=client, queue_tiers=settings.tiers_sharing_pool(key.tier)
    )
    wait = presenter.poll_after_ms(video)
    if wait is not None:
        response.headers[presenter.POLL_AFTER_HEADER] = str(wait)
    return video


@router.get("/{video_id}/content")
async def download_content(
    video_id: str,
    key: KeyDep,
    client: ClientDep,
    store: StoreDep,
    variant: Annotated[str, Query(description="video | thumbnail | spritesheet")] = "video",
) -> StreamingResponse:
    obj = await _content_object(client, store, video_id, key, variant)
    return await files.stream(store, video_id, variant, obj)


async def _content_object(
    client: Client, store: ObjectStore, video_id: str, key: ApiKey, variant: str
) -> str:
    """The object key of a completed video's variant; 400/404/409 otherwise."""
    if variant not in c.VARIANTS:
        raise ApiError(
            400,
            f"variant: {variant!r} is not one of {', '.join(c.VARIANTS)}",
            param="variant",
            code="invalid_value",
        )
    _, ex = await jobs.owned_handle(client, store, video_id, key)
    if ex.status != WorkflowExecutionStatus.COMPLETED:
        raise ConflictError(
            f"video {video_id} is not completed; its content is available "
            "once status is 'completed'",
            code="video_not_ready",
        )
    return c.outputs_prefix(video_id) + c.VARIANTS[variant][0]


@router.get("/{video_id}/content_url", response_model=ContentURL)
async def content_url(
    video_id: str,
    request: Request,
    key: KeyDep,
    settings: SettingsDep,
    client: ClientDep,
    store: StoreDep,
    variant: Annotated[str, Query(description="video | thumbnail | spritesheet")] = "video",
) -> ContentURL:
    """An expiring URL that serves the content without an API key (to hand to a browser or a
    CDN): presigned by S3 on s3://, HMAC-signed by this API on file://."""
    obj = await _content_object(client, store, video_id, key, variant)
    if not await asyncio.to_thread(store.exists, obj):
        raise NotFoundError(
            f"the {variant} of video {video_id} is no longer stored (expired or deleted)",
            code="content_gone",
        )
    expires = int(time.time() + settings.signed_url_ttl_s)
    presign = getattr(store, "presigned_get_url", None)
    if presign is not None:
        url = await asyncio.to_thread(presign, obj, settings.signed_url_ttl_s)
    else:
        base = (settings.public_url or str(request.base_url)).rstrip("/")
        url = f"{base}{files.signed_path(settings.url_signing_key, video_id, variant, expires)}"
    return ContentURL(url=url, expires_at=expires, variant=variant)


@router.post("/{video_id}/cancel", response_model=Video)
async def cancel_video(video_id: str, key: KeyDep, client: ClientDep, store: StoreDep) -> Video:
    handle, ex = await jobs.owned_handle(client, store, video_id, key)
    await jobs.cancel(handle, ex)
    handle, ex = await jobs.owned_handle(client, store, video_id, key)
    return await presenter.to_video(handle, ex)


@router.delete("/{video_id}", response_model=VideoDeleted)
async def delete_video(
    video_id: str, key: KeyDep, client: ClientDep, store: StoreDep
) -> VideoDeleted:
    _, ex = await jobs.owned_handle(client, store, video_id, key)
    if ex.status == WorkflowExecutionStatus.RUNNING:
        raise ConflictError(
            f"video {video_id} is still running; cancel it first "
            f"(POST /v1/videos/{video_id}/cancel)",
            code="video_running",
        )

    def remove() -> None:
        # Tombstone first: from here on the job is gone for the API, whatever fails next.
        store.put(c.tombstone_key(video_id), b"")
        c.delete_job_assets(store, video_id, outputs=True)

    await asyncio.to_thread(remove)
    try:
        await jobs.delete_execution(client, ex)
    except RPCError as err:  # already being deleted: the assets are gone, which is what counts
        if "not found" not in str(err).lower():
            raise
    return VideoDeleted(id=video_id)
