"""Request and response shapes of the Videos API (the OpenAI Videos API, plus extensions)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from videogen import catalog
from videogen import contracts as c

MAX_PROMPT = 4000
MAX_METADATA_KEYS = 16
MAX_DEADLINE_S = 7 * 24 * 3600


class CreateVideoBody(BaseModel):
    """`POST /v1/videos`, as JSON or form fields. Model-specific limits are checked after."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        max_length=MAX_PROMPT,
        description=f"What to draw: at least one non-space character, at most {MAX_PROMPT}.",
    )
    model: str | None = Field(
        None,
        description="A model or alias of GET /v1/models, or 'model@version'; default: "
        "the catalog's default.",
    )
    seconds: int | None = Field(
        None, description="Clip length; allowed values: the model's `seconds` (GET /v1/models)."
    )
    size: str | None = Field(
        None, description="WIDTHxHEIGHT, one of the model's `sizes` (GET /v1/models)."
    )
    seed: int | None = Field(None, ge=0, le=catalog.MAX_SEED)
    negative_prompt: str = Field("", max_length=MAX_PROMPT)
    num_inference_steps: int | None = Field(None, ge=1, le=catalog.MAX_STEPS)
    expires_after_s: int | None = Field(
        None,
        ge=1,
        le=MAX_DEADLINE_S,
        description="A deadline, in seconds after submission: a job not started on a GPU by "
        "then ends without using one, one still rendering is stopped; both fail with code "
        "deadline_exceeded. Default: none.",
    )
    webhook_url: str | None = None
    webhook_events: list[str] | None = Field(
        None,
        description="Which events go to webhook_url: video.completed, video.failed, "
        "video.cancelled (the default: all three) and video.progress.",
    )
    metadata: dict[str, str] | None = Field(
        None,
        description=f"At most {MAX_METADATA_KEYS} pairs; keys up to 64 characters, values up "
        "to 512.",
        json_schema_extra={
            "maxProperties": MAX_METADATA_KEYS,
            "propertyNames": {"maxLength": 64},
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
    )

    @field_validator("webhook_events")
    @classmethod
    def _webhook_events(cls, v: list[str] | None) -> list[str] | None:
        allowed = (*c.WEBHOOK_FINAL_EVENTS, c.WEBHOOK_PROGRESS_EVENT)
        for event in v or []:
            if event not in allowed:
                raise ValueError(f"{event!r} is not an event; allowed: {', '.join(allowed)}")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty; describe the video to generate")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and len(v) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys")
        if v and any(len(k) > 64 or len(val) > 512 for k, val in v.items()):
            raise ValueError("keys are at most 64 characters, values at most 512")
        return v


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and how to fix it.")
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = Field(None, description="The field at fault, if one is.")
    code: str | None = Field(None, description="Machine-readable cause, e.g. unsupported_size.")


class ErrorBody(BaseModel):
    """Every error answer (OpenAI's shape)."""

    error: ErrorDetail


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    id: str
    object: Literal["video"] = "video"
    status: c.Status
    progress: int = 0
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    model: str = Field(description="The model as the request named it (a model or an alias).")
    model_version: str | None = Field(
        None, description="'model@version': the model and weights version the job runs on."
    )
    prompt: str
    seconds: str
    size: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    # Extensions: what a spot-GPU render is doing right now.
    phase: c.Phase = c.Phase.QUEUED
    step: int = 0
    total_steps: int = 0
    attempt: int = 0
    # Set when a retried attempt continued from a checkpoint (phase "resuming" while it loads).
    resumed_from_step: int | None = None
    # Steps computed by attempts that were preempted and not saved by a checkpoint.
    wasted_steps: int = 0
    # Times it handed its GPU to a higher-priority job (phase "yielded" while it waits again).
    yields: int = 0
    # Queued jobs only: jobs ahead of this one, and when it should start (Unix time).
    queue_position: int | None = None
    estimated_start_at: int | None = None
    # Jobs created with `expires_after_s`: when they fail if not done (Unix time).
    deadline_at: int | None = None
    frames_sha256: str | None = Field(
        None,
        description="Completed jobs: sha256 of the generated frames' raw RGB bytes. Equal "
        "for two jobs exactly when they made the same video (a resumed and an uninterrupted "
        "run of one request, say), whatever the encoder does.",
    )
    video_sha256: str | None = Field(
        None, description="Completed jobs: sha256 of the MP4 that GET /content serves."
    )
    seed: int
    negative_prompt: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
    next_cursor: str | None = Field(None, description="Pass as `after` for the next page.")


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class ContentURL(BaseModel):
    url: str = Field(description="GET it without an API key until expires_at.")
    expires_at: int
    variant: str


class WebhookSecret(BaseModel):
    object: Literal["webhook_secret"] = "webhook_secret"
    secret: str = Field(
        description="whsec_…: verify `webhook-signature` with it (Standard Webhooks)."
    )


class ModelInfo(BaseModel):
    """One model or alias (the OpenAI model object, plus what a request to it may ask for)."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time of the newest file of its weights.")
    owned_by: str = "videogen"
    version: str | None = Field(
        None, description="Models: the weights version (a sha256 prefix); aliases: none."
    )
    model_version: str | None = Field(
        None, description="Models: 'id@version', as a job run on it records it."
    )
    routes_to: dict[str, int] | None = Field(
        None, description="Aliases: model -> weight; each user sticks to one of them."
    )
    default: bool = Field(False, description="Used when a request names no model.")
    fps: int
    sizes: list[str]
    default_size: str
    seconds: list[int]
    default_seconds: int
    default_steps: int
    max_steps: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]
