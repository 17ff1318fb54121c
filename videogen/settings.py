"""Configuration of every videogen process, read once from the environment.

Temporal's own connection settings (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`,
`TEMPORAL_TLS_*`, profiles in the standard config file) are read by `temporalio.envconfig` in
`videogen.temporal`, not here, so the same processes run against the embedded dev server, a
self-hosted cluster or Temporal Cloud unchanged.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from videogen import catalog, codec
from videogen import registry as model_registry
from videogen.registry import Registry, ServedModel, UnknownModel

DEV_API_KEY = "vg-dev-key"
DEV_WEBHOOK_SECRET_KEY = "videogen-dev-webhook-key"
DEV_URL_SIGNING_KEY = "videogen-dev-url-key"


class TextEncoderPlacement(StrEnum):
    """Where a GPU worker keeps and runs its text encoder (activities/placement.py)."""

    DEVICE = "device"  # kept and run on the accelerator
    OFFLOAD = "offload"  # kept in host memory, moved to the accelerator to encode
    CPU = "cpu"  # kept and run on the CPU


class TierPolicy(BaseModel):
    """How one tier is scheduled and limited. 0 means unlimited for the limits."""

    model_config = ConfigDict(extra="forbid")

    # Temporal priority key: lower runs first (the server's default range is 1-5).
    priority: int = Field(3, ge=1, le=5)
    # Share of the queue each of the tier's users gets relative to others (Temporal fairness).
    fairness_weight: float = Field(1.0, gt=0)
    user_per_minute: int = Field(0, ge=0, description="Submissions per user per minute.")
    user_concurrent: int = Field(0, ge=0, description="Queued or running jobs per user.")
    tier_per_minute: int = Field(0, ge=0, description="Submissions per minute, whole tier.")
    tier_concurrent: int = Field(0, ge=0, description="Queued or running jobs, whole tier.")
    # Its own GPU queue (and workers started with VIDEOGEN_WORKER_POOL=<tier>).
    dedicated_pool: bool = False
    # Priority preemption (docs/scheduling.md#priority-preemption).
    max_wait_s: float = Field(
        0.0,
        ge=0,
        description="Seconds a job may wait unstarted before a running job of a lower-priority "
        "tier on its GPU queue is asked to yield to it; 0: it waits its turn.",
    )
    max_yields: int = Field(
        0, ge=0, description="Times one job may be made to yield its GPU; 0: never."
    )
    min_run_s: float = Field(
        30.0,
        ge=0,
        description="Seconds a job's GPU attempt runs before it may be made to yield.",
    )
    completion_window_s: float = Field(
        0.0,
        ge=0,
        description="Seconds after submission by which a job must have rendered, else it "
        "fails with window_expired (a batch tier); 0: no window.",
    )


DEFAULT_TIERS: dict[str, TierPolicy] = {
    "internal": TierPolicy(priority=1),
    "paid": TierPolicy(priority=2, user_per_minute=60, user_concurrent=10, max_wait_s=30),
    "free": TierPolicy(priority=4, user_per_minute=10, user_concurrent=2, max_yields=3),
    # Lowest priority, always preemptible, done within a day or not at all.
    "batch": TierPolicy(priority=5, user_per_minute=60, max_yields=100, completion_window_s=86400),
}


@dataclass(frozen=True)
class ApiKey:
    key: str
    user: str
    tier: str


class Settings(BaseSettings):
    """Everything has a working default for the embedded stack (`videogen up`, `make demo`)."""

    model_config = SettingsConfigDict(env_prefix="VIDEOGEN_", extra="ignore")

    data_dir: Path = Field(Path(".data"), description="Root of the embedded stack's state.")
    storage_url: str = Field(
        "", description="file:///abs/dir or s3://bucket/prefix; default: file:// under data_dir."
    )
    model: str = Field("", description="Empty for the built-in tiny model, else a local dir.")
    model_name: str = Field("", description="Name of a local model (default: the dir's name).")
    models: str = Field(
        "",
        description="The model catalog: a JSON or TOML file, or inline JSON (videogen.registry); "
        "empty: the one model of VIDEOGEN_MODEL.",
    )
    worker_model: str = Field(
        "", description="GPU worker: the catalog model it loads (default: the catalog's default)."
    )
    cold_start_after_s: float = Field(
        30.0,
        ge=0,
        description="With several models: a job no warm worker picked up in this long is "
        "offered to idle workers that may load its model (0: it waits for a warm one).",
    )
    worker_swaps: bool = Field(
        True,
        description="GPU worker, with several models: take cold starts (switch models when "
        "idle); false: serve VIDEOGEN_WORKER_MODEL only.",
    )
    worker_models_kept: int = Field(
        1,
        ge=0,
        description="GPU worker: models kept in host memory after a switch, for a fast switch "
        "back (least recently used dropped first).",
    )

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_keys: str = Field(
        f"{DEV_API_KEY}:dev:paid",
        description="Comma-separated key:user:tier entries; the default tiers are internal, paid, "
        "free and batch (VIDEOGEN_TIERS).",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file of hashed API keys, one `<sha256 hex of the key>:user:tier` per line "
        "(`videogen key new` makes one); read besides VIDEOGEN_API_KEYS.",
    )

    tiers: dict[str, TierPolicy] = Field(
        default_factory=lambda: dict(DEFAULT_TIERS),
        description="JSON object tier -> TierPolicy; replaces the default tiers as a whole.",
    )
    worker_pool: str = Field(
        "", description="GPU worker: serve this tier's dedicated pool instead of the shared one."
    )

    task_queue_prefix: str = Field("videogen", description="Prefix of every task queue name.")
    heartbeat_timeout_s: float = Field(30.0, gt=0, description="GPU activity heartbeat timeout.")
    heartbeat_throttle_s: float = Field(
        1.0, gt=0, description="Longest gap between heartbeats the GPU worker sends."
    )
    progress_interval_s: float = Field(
        1.0, ge=0, description="Least time between progress signals of one job."
    )
    webhook_secret_key: str = Field(
        DEV_WEBHOOK_SECRET_KEY,
        description="Master key the users' webhook signing "
        "secrets derive from; set a long random value in production.",
    )
    webhook_allowed_hosts: str = Field(
        "",
        description="Comma-separated webhook hosts allowed although they are loopback or "
        "private ('*': any). Development only.",
    )
    payload_keys: str = Field(
        codec.DEV_PAYLOAD_KEYS,
        description="Keys of the payloads Temporal stores, `id:base64-key` comma-separated, "
        "the first encrypting (videogen.codec; `videogen key payload ID` makes one).",
    )
    codec_cors_origins: str = Field(
        "",
        description="Comma-separated origins (the Temporal Web UI's) allowed to call "
        "/codec/decode from a browser.",
    )
    url_signing_key: str = Field(
        DEV_URL_SIGNING_KEY,
        description="Key of the signed download URLs (file:// "
        "storage); set a long random value in production.",
    )
    # At most 7 days: the longest an S3 (SigV4) presigned URL can live.
    signed_url_ttl_s: float = Field(
        3600.0, gt=0, le=604800, description="Lifetime of a download URL."
    )
    retention_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="Seconds a finished video's files are kept (0: until DELETE).",
    )
    public_url: str = Field(
        "", description="The API's external base URL for signed links (default: as requested)."
    )
    events_poll_s: float = Field(
        0.5,
        gt=0,
        description="How often an SSE stream looks at "
        "its job (a query: no workflow history per viewer).",
    )
    events_keepalive_s: float = Field(15.0, gt=0, description="SSE keep-alive comment interval.")
    gpu_start_timeout_s: float = Field(
        0, ge=0, description="Fail a job if no GPU worker picks it up in this time (0 = wait)."
    )

    # Checkpoints and preemption (GPU worker; docs/checkpoints.md).
    checkpoint_policy: Literal["adaptive", "steps", "seconds", "off"] = Field(
        "adaptive",
        description="When the GPU activity checkpoints: adaptive (Young-Daly), "
        "every N steps, every T seconds, or off.",
    )
    checkpoint_every_steps: int = Field(10, ge=1, description="N for the 'steps' policy.")
    checkpoint_every_s: float = Field(30.0, gt=0, description="T for the 'seconds' policy.")
    preemption_mtbf_s: float = Field(
        3600.0,
        gt=0,
        description="Mean time between preemptions of one GPU worker, for the "
        "adaptive policy's interval sqrt(2 * checkpoint cost * MTBF).",
    )
    checkpoint_retries: int = Field(3, ge=1, description="Tries per checkpoint write.")
    checkpoint_backoff_s: float = Field(0.5, ge=0, description="First retry delay (doubles).")
    graceful_shutdown_s: float = Field(
        90.0,
        gt=0,
        description="On SIGTERM, time for the running step plus a checkpoint "
        "write before the GPU worker gives up on a graceful hand-over.",
    )
    spot_notice_url: str = Field(
        "",
        description="Instance-metadata URL of spot interruption notices (AWS: "
        "http://169.254.169.254/latest/meta-data/spot/instance-action); empty = off.",
    )
    spot_notice_poll_s: float = Field(5.0, gt=0, description="How often to poll it.")
    torch_threads: int = Field(
        0,
        ge=0,
        description="Torch CPU threads of the GPU worker (0 = torch's default). "
        "Checkpoints resume bit for bit only with the same count on the CPU.",
    )
    text_encoder: TextEncoderPlacement = Field(
        TextEncoderPlacement.DEVICE,
        description="Where the GPU worker keeps its text encoder: device, offload (host "
        "memory, moved in to encode; same bits as device) or cpu (runs there; other bits).",
    )
    offload_experts: bool = Field(
        False,
        description="Keep the inactive expert of a two-expert model (Wan2.2 A14B) in host "
        "memory, swapping at the boundary step; same bits, one expert's memory.",
    )
    worker_metrics_port: int = Field(
        0, ge=0, description="Worker /metrics port, GPU and CPU workers alike (0 = off)."
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address the worker's metrics server binds (0.0.0.0 in a pod)."
    )
    region: str = Field(
        "", description="Label of this worker's region on its preemption metrics (e.g. us-east-1)."
    )

    # Operations (docs/operations.md).
    admin_key: str = Field(
        "",
        description="Bearer key of the admin endpoints (/v1/admin/...); empty: they are off (404).",
    )
    fleet_cache_s: float = Field(
        5.0,
        ge=0,
        description="How long the API reuses its fleet snapshot (Temporal's task "
        "queue stats are themselves cached about 5 s).",
    )

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, v: dict[str, TierPolicy]) -> dict[str, TierPolicy]:
        if not v:
            raise ValueError("at least one tier is needed")
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"tier name {name!r}: letters, digits, '_' and '-' only")
        return v

    @field_validator("worker_pool")
    @classmethod
    def _pool(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError("worker_pool: a tier name (letters, digits, '_', '-')")
        return v

    @field_validator("task_queue_prefix")
    @classmethod
    def _queue_prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("task_queue_prefix may hold letters, digits, '_', '.', '-' only")
        return v

    @cached_property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return f"file://{(self.data_dir / 'objects').resolve()}"

    @cached_property
    def registry(self) -> Registry:
        """The model catalog as it stands at start (the API follows changes: registry.Live)."""
        return model_registry.load(self.models, self.model, self.model_name)

    @cached_property
    def served_model(self) -> ServedModel:
        """The model a GPU worker loads: VIDEOGEN_WORKER_MODEL, else the catalog's default (an
        alias's first model if the default is an alias)."""
        reg = self.registry
        name = self.worker_model or reg.default
        if name in reg.aliases and not self.worker_model:
            name = reg.aliases[name].weights[0][0]
        try:
            return reg.get(name)
        except UnknownModel as err:
            raise ValueError(f"VIDEOGEN_WORKER_MODEL: {err}") from None

    @property
    def model_spec(self) -> catalog.ModelSpec:
        return self.served_model.spec

    @cached_property
    def payload_keyring(self) -> codec.PayloadKeys:
        """Parse VIDEOGEN_PAYLOAD_KEYS; malformed is an error at start-up."""
        return codec.PayloadKeys.parse(self.payload_keys)

    @cached_property
    def keys(self) -> dict[str, ApiKey]:
        """Parse VIDEOGEN_API_KEYS; a malformed entry is an error at start-up, not at request."""
        out: dict[str, ApiKey] = {}
        entries = [e.strip() for e in self.api_keys.split(",") if e.strip()]
        for n, entry in enumerate(entries, 1):
            key, api_key = self._key_entry(entry, f"VIDEOGEN_API_KEYS entry {n}")
            out[key] = api_key
        return out

    def _key_entry(self, entry: str, where: str) -> tuple[str, ApiKey]:
        """`key:user:tier` (the key may be its hash) as (key, ApiKey). Messages name the entry
        by its place and user, never by the key: they end up in logs."""
        parts = entry.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{where} is not of the form key:user:tier")
        key, user, tier = parts
        if not re.fullmatch(r"[A-Za-z0-9_.@+-]{1,64}", user):
            # User ids go into visibility queries and Temporal fairness keys (at most 64
            # bytes): keep them plain and short.
            raise ValueError(
                f"{where}: user ids may hold up to 64 letters, digits and '_.@+-' only"
            )
        if tier not in self.tiers:
            raise ValueError(
                f"{where} for user {user!r} has tier {tier!r}; "
                f"allowed tiers: {', '.join(self.tiers)} (VIDEOGEN_TIERS)"
            )
        return key, ApiKey(key=key, user=user, tier=tier)

    @cached_property
    def hashed_keys(self) -> dict[str, ApiKey]:
        """VIDEOGEN_API_KEYS_FILE by sha256 hex digest of the key; errors name the line."""
        if self.api_keys_file is None:
            return {}
        try:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise ValueError(f"VIDEOGEN_API_KEYS_FILE: cannot read it ({err})") from None
        out: dict[str, ApiKey] = {}
        for n, raw in enumerate(lines, 1):
            entry = raw.strip()
            if entry and not entry.startswith("#"):
                digest, key = self._key_entry(entry, f"VIDEOGEN_API_KEYS_FILE line {n}")
                if not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise ValueError(
                        f"VIDEOGEN_API_KEYS_FILE line {n}: the first field must be the sha256 "
                        "hex digest of the key, not the key (`videogen key new` writes lines)"
                    )
                out[digest] = key
        return out

    def lookup_key(self, token: str) -> ApiKey | None:
        """The caller of a bearer `token`: a plain key of VIDEOGEN_API_KEYS, or one whose hash
        VIDEOGEN_API_KEYS_FILE lists."""
        found = self.keys.get(token)
        if found is None and self.hashed_keys:
            found = self.hashed_keys.get(hashlib.sha256(token.encode()).hexdigest())
        return found

    def development_secrets(self) -> list[str]:
        """The settings still at their public development values, each with what to set."""
        found = []
        if DEV_API_KEY in self.keys:
            found.append(
                f"VIDEOGEN_API_KEYS holds the development key {DEV_API_KEY!r}: list your own "
                "keys there, or hashed ones in VIDEOGEN_API_KEYS_FILE"
            )
        for name, value, dev in (
            ("VIDEOGEN_URL_SIGNING_KEY", self.url_signing_key, DEV_URL_SIGNING_KEY),
            ("VIDEOGEN_WEBHOOK_SECRET_KEY", self.webhook_secret_key, DEV_WEBHOOK_SECRET_KEY),
        ):
            if value == dev:
                found.append(
                    f"{name} is the development value: set a long random one "
                    "(`openssl rand -hex 32`)"
                )
        if codec.DEV_KEY_ID in self.payload_keyring.keys:
            found.append(
                f"{codec.SETTING} holds the development key {codec.DEV_KEY_ID!r}: make your own "
                "with `videogen key payload ID`"
            )
        return found

    @property
    def cpu_task_queue(self) -> str:
        return f"{self.task_queue_prefix}-cpu"

    def gpu_task_queue(self, model: str, pool: str = "") -> str:
        """One queue per model (a job only reaches a worker that holds its model warm), and per
        dedicated pool: `<prefix>-gpu-<model>` or `<prefix>-gpu-<model>-pool-<tier>`."""
        base = f"{self.task_queue_prefix}-gpu-{model}"
        return f"{base}-pool-{pool}" if pool else base

    def cold_queue(self, pool: str = "") -> str:
        """Where jobs that no warm worker took in time ask idle workers of the pool to load
        their model: `<prefix>-gpu-cold` or `<prefix>-gpu-cold-pool-<tier>`."""
        return self.gpu_task_queue("cold", pool)

    def warm_queue(self, model: ServedModel, pool: str = "") -> str:
        """The GPU queue of one model version: only workers holding those weights poll it."""
        return self.gpu_task_queue(model.queue_key, pool)

    @property
    def webhook_hosts(self) -> frozenset[str]:
        return frozenset(h.strip() for h in self.webhook_allowed_hosts.split(",") if h.strip())

    def tiers_sharing_pool(self, tier: str) -> list[str]:
        """The tiers whose jobs wait on the same GPU queues as `tier`'s."""
        pool = self.pool_for(tier)
        return [t for t in self.tiers if self.pool_for(t) == pool]

    def pool_for(self, tier: str) -> str:
        """The GPU pool a tier's jobs go to: its own if it has one, else the shared one."""
        policy = self.tiers.get(tier)
        return tier if policy is not None and policy.dedicated_pool else ""
