"""Inputs and outputs of the workflow and its activities, plus the object-store key layout.

Plain dataclasses (one argument per workflow/activity, as Temporal recommends) so that fields
can be added later with defaults without breaking running workflows. No heavy imports: the
workflow sandbox and the API import this module.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from temporalio.common import SearchAttributeKey

if TYPE_CHECKING:  # storage imports boto3: not for the workflow sandbox
    from videogen.storage import ObjectStore

# Temporal names shared by the API, the workers and operators (`temporal workflow ...`).
WORKFLOW_NAME = "VideoGeneration"
ACTIVITY_GENERATE = "generate_video"
ACTIVITY_ENCODE = "encode_video"
ACTIVITY_CLEANUP = "cleanup_job"
ACTIVITY_WEBHOOK = "deliver_webhook"
# On the cold queue: an idle GPU worker loads a job's model so that it polls its warm queue.
ACTIVITY_WARM_UP = "warm_up_model"
# Children a job starts as it ends, abandoned so they outlive it: a webhook delivery retried
# until it lands, and the timer that deletes the assets when they expire.
WEBHOOK_WORKFLOW = "WebhookDelivery"
RETENTION_WORKFLOW = "VideoRetention"
SIGNAL_PROGRESS = "report_progress"
# Webhook events: the final ones (sent by default) and progress (sent when asked for, at each
# phase change and every quarter of the denoising).
WEBHOOK_FINAL_EVENTS = ("video.completed", "video.failed", "video.cancelled")
WEBHOOK_PROGRESS_EVENT = "video.progress"
QUERY_STATUS = "status"
# Priority preemption (docs/scheduling.md#priority-preemption): a job that waited past its
# tier's `max_wait_s` runs `make_room` on the CPU queue, which asks a lower-priority running job
# of its GPU queue to yield with the `request_yield` update. The accepted request is recorded in
# the victim's memo under MEMO_YIELD_ATTEMPT (the attempt that is to yield), where its GPU
# activity reads it.
ACTIVITY_MAKE_ROOM = "make_room"
UPDATE_YIELD = "request_yield"
MEMO_YIELD_ATTEMPT = "yield_attempt"

# Search attributes registered on the embedded dev server (see videogen.devserver).
SA_USER = "VideogenUser"
SA_TIER = "VideogenTier"
SA_MODEL = "VideogenModel"
SA_STATUS = "VideogenStatus"
# The job's Temporal priority key (queue position counts jobs ahead by it) and, once completed,
# its GPU generation time (the queue's ETA averages recent ones).
SA_PRIORITY = "VideogenPriority"
SA_GEN_SECONDS = "VideogenGenSeconds"
SEARCH_ATTRIBUTES = {
    SA_USER: "Keyword",
    SA_TIER: "Keyword",
    SA_MODEL: "Keyword",
    SA_STATUS: "Keyword",
    SA_PRIORITY: "Int",
    SA_GEN_SECONDS: "Double",
}
# The same attributes as typed keys, for starting, upserting and reading them.
USER_KEY = SearchAttributeKey.for_keyword(SA_USER)
TIER_KEY = SearchAttributeKey.for_keyword(SA_TIER)
MODEL_KEY = SearchAttributeKey.for_keyword(SA_MODEL)
STATUS_KEY = SearchAttributeKey.for_keyword(SA_STATUS)
PRIORITY_KEY = SearchAttributeKey.for_int(SA_PRIORITY)
GEN_SECONDS_KEY = SearchAttributeKey.for_float(SA_GEN_SECONDS)


class ErrorCode(StrEnum):
    """`ApplicationError` types of our own; the API shows them as `error.code`."""

    # Retried elsewhere: a worker offered a warm-up while busy, or without that model.
    WORKER_BUSY = "WorkerBusy"
    MODEL_NOT_HERE = "ModelNotHere"
    # Never retried: input that cannot be generated, a job on the wrong model's queue.
    INVALID_INPUT = "InvalidInput"
    MODEL_MISMATCH = "ModelMismatch"
    # Retryable: the attempt ended early on purpose (preemption) or on a bad step (NaN/Inf);
    # the retry resumes from the last checkpoint. POISONED becomes final when it repeats.
    WORKER_SHUTDOWN = "WorkerShutdown"
    # Asked to make room for a higher-priority job (priority preemption): same hand-over.
    YIELDED = "Yielded"
    # A `request_yield` the job refused (why: the message), recorded nowhere.
    YIELD_REFUSED = "YieldRefused"
    POISONED = "PoisonedState"
    STORE_UNAVAILABLE = "StoreUnavailable"
    # The stored frames are not the ones the GPU attempt hashed: re-encoding cannot mend that.
    FRAMES_CORRUPT = "FramesCorrupt"
    # Webhook deliveries: these end a delivery at once; any other failure retries for a day.
    WEBHOOK_UNSAFE = "UnsafeWebhookURL"
    WEBHOOK_REDIRECT = "WebhookRedirect"
    WEBHOOK_GONE = "WebhookGone"
    # The job's own deadline (`expires_after_s`) passed: before a GPU took it, or mid-render.
    DEADLINE_EXCEEDED = "deadline_exceeded"
    # The same for the completion window of a batch-like tier, when it comes first.
    WINDOW_EXPIRED = "window_expired"


NON_RETRYABLE_ERRORS = [ErrorCode.INVALID_INPUT.value, ErrorCode.MODEL_MISMATCH.value]
WEBHOOK_NON_RETRYABLE = [
    ErrorCode.WEBHOOK_UNSAFE.value,
    ErrorCode.WEBHOOK_REDIRECT.value,
    ErrorCode.WEBHOOK_GONE.value,
]


class Status(StrEnum):
    """A job's status, as the OpenAI Videos API names them."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Phase(StrEnum):
    """What a job is doing, finer than its status; the last three end it."""

    QUEUED = "queued"
    STARTING = "starting"
    # A retried attempt restoring a checkpoint: `resumed_from_step` says from where.
    RESUMING = "resuming"
    DENOISING = "denoising"
    DECODING = "decoding"
    # Handed its GPU to a higher-priority job at a checkpoint; queued again at its priority.
    YIELDED = "yielded"
    ENCODING = "encoding"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


def frames_key(job_id: str, attempt: int) -> str:
    """Per attempt, so a stale attempt that wakes up late never overwrites the accepted frames."""
    return f"frames/{job_id}/attempt-{attempt}.npy"


def frames_manifest_key(job_id: str, attempt: int) -> str:
    """Written after the attempt's frames: whose they are (job, parameters, weights) and their
    sha256, so a retry whose predecessor's completion was lost can verify and reuse them."""
    return f"frames/{job_id}/attempt-{attempt}.json"


def parse_frames_manifest_key(key: str) -> int | None:
    """The attempt of a `frames_manifest_key`; None for any other key."""
    name = key.rsplit("/", 1)[-1]
    if not (name.startswith("attempt-") and name.endswith(".json")):
        return None
    digits = name[len("attempt-") : -len(".json")]
    return int(digits) if digits.isdigit() else None


def frames_prefix(job_id: str) -> str:
    return f"frames/{job_id}/"


def checkpoints_prefix(job_id: str) -> str:
    """`checkpoints/<2 hex>/<job>/`: the hashed level spreads a fleet-wide preemption's write
    storm over 256 key prefixes (S3 rate limits are per prefix)."""
    shard = hashlib.sha256(job_id.encode()).hexdigest()[:2]
    return f"checkpoints/{shard}/{job_id}/"


def checkpoint_key(job_id: str, attempt: int, step: int) -> str:
    """One object per attempt and step: attempts never overwrite each other's checkpoints."""
    return f"{checkpoints_prefix(job_id)}attempt-{attempt}/step-{step:06d}.safetensors"


def parse_checkpoint_key(key: str) -> tuple[int, int] | None:
    """(attempt, step) of a key made by `checkpoint_key`; None for anything else."""
    parts = key.split("/")
    try:
        attempt_dir, name = parts[-2], parts[-1]
        if (
            attempt_dir.startswith("attempt-")
            and name.startswith("step-")
            and name.endswith(".safetensors")
        ):
            return int(attempt_dir[len("attempt-") :]), int(
                name[len("step-") : -len(".safetensors")]
            )
    except (IndexError, ValueError):
        pass
    return None


def outputs_prefix(job_id: str) -> str:
    return f"videos/{job_id}/"


def tombstone_key(job_id: str) -> str:
    """Marks a deleted job: Temporal deletes executions asynchronously (~20 s on the dev server),
    and a deleted video must disappear from the API at once."""
    return f"deleted/{job_id}"


def delete_job_assets(store: ObjectStore, job_id: str, *, outputs: bool) -> int:
    """Delete a job's frames and checkpoints, and its published outputs too if `outputs`;
    the number of objects removed. The one place that knows which prefixes a job owns."""
    prefixes = [frames_prefix(job_id), checkpoints_prefix(job_id)]
    if outputs:
        prefixes.append(outputs_prefix(job_id))
    return sum(store.delete_prefix(prefix) for prefix in prefixes)


VARIANTS = {
    # variant -> (file name under outputs_prefix, media type)
    "video": ("video.mp4", "video/mp4"),
    "thumbnail": ("thumbnail.png", "image/png"),
    "spritesheet": ("spritesheet.jpg", "image/jpeg"),
}


@dataclass
class VideoRequest:
    """Workflow input: a validated job. The API fills every field; the workflow trusts them."""

    job_id: str
    user: str
    tier: str
    prompt: str
    model: str
    seed: int
    width: int
    height: int
    seconds: int
    fps: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    gpu_task_queue: str
    cpu_task_queue: str
    negative_prompt: str = ""
    heartbeat_timeout_s: float = 30.0
    progress_interval_s: float = 1.0
    gpu_start_timeout_s: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)
    # Where `video.completed|failed|cancelled` go (empty: nowhere); checked at submission.
    webhook_url: str = ""
    # Empty: the final events (video.completed|failed|cancelled); may add video.progress.
    webhook_events: list[str] = field(default_factory=list)
    # Seconds the outputs are kept after completion (0: until deleted).
    retention_s: float = 0.0
    # `model` as the request named it (an alias, say; empty: as `model`), and the sha256 of
    # the weights `model` resolved to (videogen.registry; empty: any, as before catalogs).
    requested_model: str = ""
    model_version: str = ""
    # Cold-start routing (empty: off, the job waits for a warm worker): after this long
    # unpicked on its warm queue, an idle worker polling `cold_queue` loads the model.
    cold_queue: str = ""
    cold_start_after_s: float = 0.0
    # No worker has polled the warm queue lately (checked at submission): start cold at once.
    cold_start_now: bool = False
    # Seconds after submission by which the job must be done (0: none); `expires_after_s`.
    deadline_s: float = 0.0
    # `deadline_s` is the tier's completion window (shorter than any `expires_after_s`).
    deadline_is_window: bool = False
    # Priority preemption, from the job's tier (TierPolicy): unstarted this long, it asks a
    # lower-priority running job to yield (0: it waits its turn); it may itself be made to
    # yield `max_yields` times (0: never), each after running at least `min_run_s`.
    preempt_after_s: float = 0.0
    max_yields: int = 0
    min_run_s: float = 0.0


# Hex digits of a weights version shown in references ('model@version') and warm queue names:
# enough that two versions in one fleet never collide by chance.
SHORT_VERSION = 12


def model_ref(model: str, version: str) -> str:
    """'model@version' (its first SHORT_VERSION hex digits); the bare model for a job that
    recorded no version."""
    return f"{model}@{version[:SHORT_VERSION]}" if version else model


@dataclass
class GenerateInput:
    request: VideoRequest
    # When the job was submitted (the workflow's start, Unix time): the GPU worker's
    # `videogen_queue_wait_seconds` runs from here to its first attempt's start.
    submitted_at: float = 0.0
    # Attempts of earlier generate activities of this job (a cold start offers it again as a
    # new activity): this one's attempts count on from there, and, without heartbeat details
    # of its own, it takes what the job had reached (`step`, `wasted_steps`) from the workflow.
    attempt_base: int = 0
    prior_reached_step: int = 0
    prior_wasted_steps: int = 0


@dataclass
class WarmUpInput:
    """Load `model` at `model_version` (if not held already) and poll `warm_queue`."""

    job_id: str
    model: str
    model_version: str
    warm_queue: str


@dataclass
class WarmUpOutput:
    worker: str
    # Whether the worker had to load (or bring back from host memory) the model.
    swapped: bool
    load_seconds: float


@dataclass
class GenerateOutput:
    frames_key: str
    num_frames: int
    width: int
    height: int
    attempt: int
    device: str
    generation_seconds: float
    # Where this attempt started (None: from step 0), and the steps all attempts of the job
    # computed and then lost to preemptions (as far as their heartbeats showed).
    resumed_from_step: int | None = None
    wasted_steps: int = 0
    checkpoints_written: int = 0
    # Warm: the worker had its model loaded before the job was scheduled (no cold start in the
    # job's wait); model_load_seconds: how long that worker took to load it.
    warm: bool = True
    model_load_seconds: float = 0.0
    # sha256 of the frames' raw RGB bytes (activities.media.frames_sha256): equal for two runs
    # exactly when they made the same video, whatever the MP4 encoder does with it.
    frames_sha256: str = ""


@dataclass
class EncodeInput:
    job_id: str
    frames_key: str
    fps: int
    model: str = ""  # for the log lines of the job's work
    # The GPU attempt's frames_sha256: the encoder checks the frames it reads against it.
    frames_sha256: str = ""
    # The video's size: frames drawn at another size (a model's render_size) are scaled to
    # it. 0: as the frames are.
    width: int = 0
    height: int = 0


@dataclass
class EncodeOutput:
    video_key: str
    thumbnail_key: str
    spritesheet_key: str
    video_bytes: int
    video_sha256: str
    num_frames: int
    width: int
    height: int
    fps: int
    duration_s: float
    frames_sha256: str = ""


@dataclass
class JobResult:
    """Workflow result: where the outputs are, and which GPU attempt produced them."""

    video: EncodeOutput
    attempt: int
    device: str
    generation_seconds: float
    resumed_from_step: int | None = None
    wasted_steps: int = 0
    warm: bool = True
    model_load_seconds: float = 0.0
    yields: int = 0


@dataclass
class YieldRequest:
    """`request_yield` update: the waiting job that asks, and its priority key."""

    by_job_id: str
    priority: int


@dataclass
class YieldAnswer:
    """The accepted request: the attempt that yields at its next step boundary."""

    attempt: int
    step: int


@dataclass
class MakeRoomInput:
    """A job that waited past its `max_wait_s`: find it a GPU on `gpu_task_queue`."""

    job_id: str
    gpu_task_queue: str
    model: str
    priority: int
    # Which of the job's requests this is (the update id: a retried activity asks again,
    # never twice).
    round: int = 1


@dataclass
class MakeRoomOutput:
    """The job that agreed to yield (empty: none could), and why not where none did."""

    victim_job_id: str = ""
    reason: str = ""


@dataclass
class CleanupInput:
    job_id: str
    # False after success (frames and checkpoints go), True on cancel/failure (everything).
    remove_outputs: bool = False
    model: str = ""  # for the log lines of the job's work
    # The job's owner and tier: the job's ending gives back its place in their admission
    # ledgers (videogen.quota). Empty in the retention cleanup, which releases nothing.
    user: str = ""
    tier: str = ""


@dataclass
class ProgressUpdate:
    """Sent by the GPU activity as a signal; `attempt` lets the workflow drop stale reports."""

    attempt: int
    phase: str  # a Phase; str for the sandbox, as in JobStatus
    step: int = 0
    total_steps: int = 0
    resumed_from_step: int | None = None
    wasted_steps: int = 0


@dataclass
class JobError:
    code: str
    message: str


@dataclass
class JobStatus:
    """What the `status` query returns: the live state of one job."""

    # str, not Status/Phase: the workflow sandbox resolves payload type hints without this
    # module's names (a signal typed with an enum fails to decode there, measured on replay).
    status: str = Status.QUEUED
    phase: str = Phase.QUEUED
    progress: int = 0
    # Bumped on every change: the id of server-sent events, so a viewer that reconnects with
    # Last-Event-ID gets only what it missed.
    seq: int = 0
    step: int = 0
    total_steps: int = 0
    attempt: int = 0
    resumed_from_step: int | None = None
    wasted_steps: int = 0
    error: JobError | None = None
    result: JobResult | None = None
    # Times the job handed its GPU to a higher-priority one (phase `yielded` while it waits).
    yields: int = 0


@dataclass
class WebhookInput:
    """One event for one job's webhook; `webhook_id` is the same on every delivery attempt."""

    job_id: str
    user: str
    url: str
    event: str
    webhook_id: str
    # The JSON body, exactly as sent and signed on every attempt.
    body: str
    cpu_task_queue: str
    model: str = ""  # for the log lines of the job's work


@dataclass
class RetentionInput:
    job_id: str
    seconds: float
    cpu_task_queue: str
