"""CPU activities: encode stored frames to MP4 (plus thumbnail and spritesheet), and clean up.

They run on the CPU worker, never on a GPU worker: a GPU is too expensive to spend on x264.
Blocking work (storage I/O, encoding) runs in a thread so the worker's event loop stays free,
and heartbeats meanwhile (both are idempotent, so a retry after a lost completion is harmless).
"""

from __future__ import annotations

import functools
import hashlib

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import heartbeating, media
from videogen import contracts as c
from videogen import quota
from videogen.storage import AlreadyExists, ObjectStore

log = structlog.get_logger(__name__)


class PostprocessActivities:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @activity.defn(name=c.ACTIVITY_ENCODE)
    async def encode_video(self, inp: c.EncodeInput) -> c.EncodeOutput:
        # Heartbeats: a completion lost while Temporal is unreachable is retried within the
        # heartbeat timeout, not the start-to-close timeout (the retry finds the files stored).
        return await heartbeating.in_thread(self._encode, inp)

    def _encode(self, inp: c.EncodeInput) -> c.EncodeOutput:
        frames = media.frames_from_bytes(self._store.get(inp.frames_key))
        digest = media.frames_sha256(frames)
        if inp.frames_sha256 and digest != inp.frames_sha256:
            raise ApplicationError(
                f"frames {inp.frames_key!r} hash to {digest[:12]}…, the GPU attempt made "
                f"{inp.frames_sha256[:12]}…: the stored copy is damaged",
                type=c.ErrorCode.FRAMES_CORRUPT,
                non_retryable=True,
            )
        if inp.width and inp.height:
            frames = media.scale_frames(frames, inp.width, inp.height)
        prefix = c.outputs_prefix(inp.job_id)
        keys = {variant: prefix + name for variant, (name, _) in c.VARIANTS.items()}
        video = self._publish(keys["video"], media.encode_mp4(frames, inp.fps))
        self._publish(keys["thumbnail"], media.make_thumbnail(frames))
        self._publish(keys["spritesheet"], media.make_spritesheet(frames))
        t, h, w, _ = frames.shape
        log.info(
            "video encoded",
            job_id=inp.job_id,
            model=inp.model,
            bytes=len(video),
            frames=t,
            frames_sha256=digest,
        )
        return c.EncodeOutput(
            video_key=keys["video"],
            thumbnail_key=keys["thumbnail"],
            spritesheet_key=keys["spritesheet"],
            video_bytes=len(video),
            video_sha256=hashlib.sha256(video).hexdigest(),
            num_frames=t,
            width=w,
            height=h,
            fps=inp.fps,
            duration_s=t / inp.fps,
            frames_sha256=digest,
        )

    def _publish(self, key: str, data: bytes) -> bytes:
        """Write `data` unless the key exists; either way, return the bytes that are stored.

        Write-once, so a published file never changes: a retry whose first attempt stored the
        file (its completion lost on the way to Temporal), or one running on an encoder build
        that writes other bytes, reports what is there instead of replacing it.
        """
        try:
            self._store.put(key, data, if_absent=True)
        except AlreadyExists:
            stored = self._store.get(key)
            if stored != data:
                log.warning(
                    "published file kept; this encode gave other bytes",
                    key=key,
                    stored_sha256=hashlib.sha256(stored).hexdigest(),
                    new_sha256=hashlib.sha256(data).hexdigest(),
                )
            return stored
        return data

    @activity.defn(name=c.ACTIVITY_CLEANUP)
    async def cleanup_job(self, inp: c.CleanupInput) -> int:
        """Delete a job's frames and checkpoints (and its outputs on cancel/failure), and give
        back the job's place in its user's and tier's admission ledgers. Both are idempotent:
        a retry repeats them harmlessly."""
        removed = await heartbeating.in_thread(functools.partial(self._cleanup, inp))
        log.info(
            "job cleaned up",
            job_id=inp.job_id,
            model=inp.model,
            removed=removed,
            outputs=inp.remove_outputs,
        )
        return removed

    def _cleanup(self, inp: c.CleanupInput) -> int:
        removed = c.delete_job_assets(self._store, inp.job_id, outputs=inp.remove_outputs)
        if inp.user:
            quota.release(self._store, inp.job_id, inp.user, inp.tier)
        return removed
