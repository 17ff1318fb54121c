"""The whole stack on the s3:// backend: a real S3-protocol server (moto) over HTTP on loopback.

The workers store frames and videos through boto3, the API streams content back from S3; the
same seed gives the same bytes as on file:// (storage does not touch the media).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import s3server
from helpers import submit, wait_for

from activities.media import probe_mp4
from videogen.devserver import free_port
from videogen.settings import DEV_API_KEY
from videogen.stack import Stack


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory,
             moto_s3: s3server.S3Server) -> Iterator[Stack]:
    s3 = moto_s3
    bucket = s3.create_bucket()
    data = tmp_path_factory.mktemp("s3stack")
    env = {k: v for k, v in s3.subprocess_env().items()}
    env.update({
        "VIDEOGEN_STORAGE_URL": f"s3://{bucket}/videogen",
        "VIDEOGEN_TASK_QUEUE_PREFIX": f"s3-{uuid.uuid4().hex[:8]}",
        "VIDEOGEN_PROGRESS_INTERVAL_S": "0.1",
    })
    stack = Stack(data_dir=data, api_port=free_port(), temporal_port=free_port(), ui_port=None,
                  log_dir=data / "logs", env=env)
    stack.start(timeout_s=180)
    stack.bucket = bucket  # type: ignore[attr-defined]
    yield stack
    stack.stop()


def test_job_on_s3_completes_and_streams_from_s3(s3_stack: Stack, moto_s3: s3server.S3Server,
                                                  api: httpx.Client) -> None:
    with httpx.Client(base_url=s3_stack.api_url, timeout=30,
                      headers={"Authorization": f"Bearer {DEV_API_KEY}"}) as s3_api:
        v = submit(s3_api, seed=77)
        assert wait_for(s3_api, v["id"])["status"] == "completed"
        video = s3_api.get(f"/v1/videos/{v['id']}/content").content
        assert probe_mp4(video).frames == 9

        keys = [o["Key"] for o in moto_s3.client().list_objects_v2(
            Bucket=s3_stack.bucket, Prefix="videogen/").get("Contents", [])]  # type: ignore[attr-defined]
        assert f"videogen/videos/{v['id']}/video.mp4" in keys
        assert not [k for k in keys if k.startswith(f"videogen/frames/{v['id']}/")]
        assert not (s3_stack.data_dir / "objects").exists(), "file:// used instead of s3://"

        # Storage does not touch the media: the same job on the file:// stack gives same bytes.
        ref = submit(api, seed=77)
        assert wait_for(api, ref["id"])["status"] == "completed"
        assert api.get(f"/v1/videos/{ref['id']}/content").content == video

        # Delete removes the objects from the bucket.
        assert s3_api.delete(f"/v1/videos/{v['id']}").status_code == 200
        keys = [o["Key"] for o in moto_s3.client().list_objects_v2(
            Bucket=s3_stack.bucket, Prefix=f"videogen/videos/{v['id']}/").get("Contents", [])]  # type: ignore[attr-defined]
        assert keys == []
