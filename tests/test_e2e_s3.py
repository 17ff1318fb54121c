"""The whole stack on the s3:// backend: a real S3-protocol server (moto) over HTTP on loopback.

The workers store frames and videos through boto3, the API streams content back from S3; the
same seed gives the same bytes as on file:// (storage does not touch the media).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import s3server
from helpers import (
    EVERY_STEPS,
    JOB,
    api_client,
    assert_reference_video,
    preemption_env,
    private_stack,
    submit,
    wait_for,
    wait_step,
    worker_child,
)

from activities.media import probe_mp4
from videogen import contracts as c
from videogen.stack import Stack, gpu_worker_pid


@pytest.fixture(scope="module")
def s3_stack(
    tmp_path_factory: pytest.TempPathFactory, moto_s3: s3server.S3Server
) -> Iterator[Stack]:
    s3 = moto_s3
    bucket = s3.create_bucket()
    env = {k: v for k, v in s3.subprocess_env().items()}
    env.update(preemption_env("s3"))
    env["VIDEOGEN_STORAGE_URL"] = f"s3://{bucket}/videogen"
    with private_stack(tmp_path_factory, "s3stack", env) as stack:
        stack.bucket = bucket  # type: ignore[attr-defined]
        yield stack


def test_job_on_s3_completes_and_streams_from_s3(
    s3_stack: Stack, moto_s3: s3server.S3Server, api: httpx.Client
) -> None:
    with api_client(s3_stack) as s3_api:
        v = submit(s3_api, seed=77)
        assert wait_for(s3_api, v["id"])["status"] == "completed"
        video = s3_api.get(f"/v1/videos/{v['id']}/content").content
        assert probe_mp4(video).frames == 9
        # A presigned S3 URL serves the same bytes to anyone holding it, without an API key.
        link = s3_api.get(f"/v1/videos/{v['id']}/content_url").json()
        assert "Signature=" in link["url"] and link["expires_at"] > time.time()
        assert httpx.get(link["url"], timeout=30).content == video

        keys = [
            o["Key"]
            for o in moto_s3.client()
            .list_objects_v2(Bucket=s3_stack.bucket, Prefix="videogen/")
            .get("Contents", [])
        ]  # type: ignore[attr-defined]
        assert f"videogen/videos/{v['id']}/video.mp4" in keys
        assert not [k for k in keys if k.startswith(f"videogen/frames/{v['id']}/")]
        assert not (s3_stack.data_dir / "objects").exists(), "file:// used instead of s3://"

        # Storage does not touch the media: the same job on the file:// stack gives same bytes.
        ref = submit(api, seed=77)
        done = wait_for(api, ref["id"])
        assert done["status"] == "completed"
        assert done["frames_sha256"] == s3_api.get(f"/v1/videos/{v['id']}").json()["frames_sha256"]
        assert api.get(f"/v1/videos/{ref['id']}/content").content == video

        # Delete removes the objects from the bucket.
        assert s3_api.delete(f"/v1/videos/{v['id']}").status_code == 200
        keys = [
            o["Key"]
            for o in moto_s3.client()
            .list_objects_v2(Bucket=s3_stack.bucket, Prefix=f"videogen/videos/{v['id']}/")
            .get("Contents", [])
        ]  # type: ignore[attr-defined]
        assert keys == []


async def test_preempted_job_resumes_from_checkpoints_in_s3(
    s3_stack: Stack, moto_s3: s3server.S3Server
) -> None:
    """SIGTERM, then SIGKILL, of the only GPU worker (restarted each time): the job resumes
    from checkpoints kept in S3 and gives the uninterrupted run's bytes."""
    client = await s3_stack.client()
    s3 = moto_s3.client()
    bucket = s3_stack.bucket  # type: ignore[attr-defined]
    with api_client(s3_stack) as s3_api:
        job = submit(s3_api, **JOB, seed=105)["id"]
        for sig, step in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
            wait_step(s3_api, job, step)
            pid = await gpu_worker_pid(client, job)
            assert pid is not None
            os.kill(pid, sig)
            prefix = f"videogen/{c.checkpoints_prefix(job)}"
            keys = [
                o["Key"]
                for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            ]
            assert keys, "checkpoints are written to the bucket"
            worker_child(s3_stack, pid).process.wait(30)  # SIGTERM: after the hand-over
            s3_stack.wait_gpu_workers(1)  # restarts the worker, as a supervisor would
        v = wait_for(s3_api, job)
        assert v["status"] == "completed" and v["attempt"] == 3
        assert v["resumed_from_step"] >= 30 - EVERY_STEPS - 1
        assert_reference_video(s3_api, job, {**JOB, "seed": 105})
        for prefix in (c.checkpoints_prefix(job), c.frames_prefix(job)):
            assert (
                s3.list_objects_v2(Bucket=bucket, Prefix=f"videogen/{prefix}").get("KeyCount") == 0
            )
