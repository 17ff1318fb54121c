"""Faults an adversarial run found at the API's edge, each refused there with a 4xx before
anything starts. The app runs without Temporal (its client connects lazily): a request that got
as far as starting a job would answer 503, not the 4xx asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from api.app import MAX_BODY_BYTES, create_app
from api.routers.files import signed_path
from videogen.settings import DEV_API_KEY, Settings

AUTH = {"Authorization": f"Bearer {DEV_API_KEY}"}
JSON = {**AUTH, "content-type": "application/json"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("hardening"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"prompt": "a", "size": "64x64", "metadata": {"k": "\\udfff"}}', "metadata.k"),
        ('{"prompt": "a \\ud800 b"}', "prompt"),
        ('{"prompt": "a", "negative_prompt": "\\udc00"}', "negative_prompt"),
        ('{"prompt": "a", "metadata": {"\\udfff": "v"}}', "metadata.(a key that is not text)"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(api: TestClient, body: str, field: str) -> None:
    r = api.post("/v1/videos", content=body, headers=JSON)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and "lone UTF-16 surrogate" in err["message"]


def test_a_surrogate_in_a_form_field_is_a_400_too(api: TestClient) -> None:
    r = api.post("/v1/videos", data={"prompt": "a", "metadata": '{"k": "\\udfff"}'}, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "metadata.k"


def test_json_nested_too_deep_is_a_400(api: TestClient) -> None:
    depth = 30_000  # within the size limit, far past the parser's recursion limit
    body = '{"prompt": "a", "metadata": ' + "[" * depth + "]" * depth + "}"
    r = api.post("/v1/videos", content=body, headers=JSON)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text


def test_a_body_over_the_limit_is_a_413_by_its_length_or_as_it_streams(api: TestClient) -> None:
    big = json.dumps({"prompt": "a" * (MAX_BODY_BYTES + 1)})
    declared = api.post("/v1/videos", content=big, headers=JSON)
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked
        for _ in range(1024):  # 1 MiB on offer
            yield b" " * 1024

    streamed = api.post("/v1/videos", content=chunks(), headers=JSON)
    assert streamed.status_code == 413, streamed.text
    just_under = json.dumps({"prompt": "a" * 3000, "size": "999x999"})
    assert api.post("/v1/videos", content=just_under, headers=JSON).status_code == 400


@pytest.mark.parametrize("video_id", ["..", "video_..", "video_a\\b", "video_" + "a" * 5000])
def test_a_validly_signed_link_for_an_odd_id_is_a_404(api: TestClient, video_id: str) -> None:
    path = signed_path("videogen-dev-url-key", video_id, "video", int(time.time()) + 60)
    # Escaped, so that the client sends the id as it is (it would resolve a bare '..').
    escaped = quote(video_id, safe="").replace(".", "%2E")
    r = api.get(path.replace(f"/v1/files/{video_id}/", f"/v1/files/{escaped}/", 1))
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "video_not_found"


def test_an_unhandled_error_is_logged_with_its_type_and_traceback(tmp_path: Path) -> None:
    script = (
        "import structlog\n"
        "from videogen import logs\n"
        "logs.configure()\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError as exc:\n"
        "    structlog.get_logger('api').exception('unhandled error', exc_info=exc)\n"
    )
    env = {**os.environ, "VIDEOGEN_LOG_FORMAT": "json"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    line = json.loads(out.stderr.strip().splitlines()[-1])
    assert line["event"] == "unhandled error"
    assert "Traceback" in line["exception"] and "ValueError: boom" in line["exception"]
