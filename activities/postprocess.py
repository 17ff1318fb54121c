"""CPU activities: encode stored frames to MP4 (plus thumbnail and spritesheet), and clean up.

They run on the CPU worker, never on a GPU worker: a GPU is too expensive to spend on x264.
Blocking work (storage I/O, encoding) runs in a thread so the worker's event loop stays free.
"""

from __future__ import annotations

import asyncio
import hashlib

import structlog
from temporalio import activity

from activities import media
from videogen import contracts as c
from videogen.storage import ObjectStore

log = structlog.get_logger(__name__)


class PostprocessActivities:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @activity.defn(name=c.ACTIVITY_ENCODE)
    async def encode_video(self, inp: c.EncodeInput) -> c.EncodeOutput:
        return await asyncio.to_thread(self._encode, inp)

    def _encode(self, inp: c.EncodeInput) -> c.EncodeOutput:
        frames = media.frames_from_bytes(self._store.get(inp.frames_key))
        video = media.encode_mp4(frames, inp.fps)
        prefix = c.outputs_prefix(inp.job_id)
        keys = {variant: prefix + name for variant, (name, _) in c.VARIANTS.items()}
        # Encoding is deterministic, so a retried encode rewrites the same bytes: no conflict.
        self._store.put(keys["video"], video)
        self._store.put(keys["thumbnail"], media.make_thumbnail(frames))
        self._store.put(keys["spritesheet"], media.make_spritesheet(frames))
        t, h, w, _ = frames.shape
        log.info("video encoded", job_id=inp.job_id, model=inp.model, bytes=len(video),
                 frames=t)
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
        )

    @activity.defn(name=c.ACTIVITY_CLEANUP)
    async def cleanup_job(self, inp: c.CleanupInput) -> int:
        """Delete a job's frames and checkpoints (and its outputs on cancel/failure)."""

        def work() -> int:
            n = self._store.delete_prefix(c.frames_prefix(inp.job_id))
            n += self._store.delete_prefix(c.checkpoints_prefix(inp.job_id))
            if inp.remove_outputs:
                n += self._store.delete_prefix(c.outputs_prefix(inp.job_id))
            return n

        removed = await asyncio.to_thread(work)
        log.info("job cleaned up", job_id=inp.job_id, model=inp.model, removed=removed,
                 outputs=inp.remove_outputs)
        return removed
