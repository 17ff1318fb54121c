"""Hardening: faults an adversarial run found at the API's edge, each refused there with a 4xx
before anything starts (the app runs without Temporal, its client connecting lazily: a request
that got as far as starting a job would answer 503, not the 4xx asserted); hashed API keys; the
public development secrets refused outside the embedded stack; secrets kept out of the logs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
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


def test_hashed_keys_from_a_file_authenticate_and_a_plain_key_there_is_refused(
    tmp_path: Path,
) -> None:
    key = "vg-" + "s3cret" * 6
    digest = hashlib.sha256(key.encode()).hexdigest()
    keys = tmp_path / "keys"
    keys.write_text(f"# ops-managed\n\n{digest}:carol:free\n")
    settings = Settings(api_keys="", api_keys_file=keys, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        assert (
            client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        )
        wrong = client.get("/v1/models", headers={"Authorization": f"Bearer {digest}"})
        assert wrong.status_code == 401  # the hash itself is no key
    keys.write_text(f"{digest}:carol:free\n{key}:dave:paid\n")
    with pytest.raises(ValueError, match="line 2: the first field must be the sha256") as err:
        Settings(api_keys_file=keys).hashed_keys  # noqa: B018
    assert key not in str(err.value)
    with pytest.raises(ValueError, match="entry 2 is not of the form") as env_err:
        Settings(api_keys=f"k1:u:paid,{key}:nobody").keys  # noqa: B018
    assert key not in str(env_err.value)  # start-up errors are logged: no key in them


def test_the_development_secrets_are_refused_outside_the_embedded_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from videogen import codec
    from worker_cpu import main as cpu_worker
    from worker_gpu import main as gpu_worker

    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal-frontend.temporal.svc:7233")
    with pytest.raises(RuntimeError) as refused:
        create_app(Settings(data_dir=tmp_path))
    names = ("API_KEYS", "URL_SIGNING_KEY", "WEBHOOK_SECRET_KEY", "PAYLOAD_KEYS")
    for name in names:
        assert f"VIDEOGEN_{name}" in str(refused.value)
    with pytest.raises(RuntimeError, match=r"VIDEOGEN_WEBHOOK_SECRET_KEY.*VIDEOGEN_PAYLOAD_KEYS"):
        asyncio.run(cpu_worker.run(Settings(data_dir=tmp_path)))
    with pytest.raises(RuntimeError, match="VIDEOGEN_PAYLOAD_KEYS"):
        asyncio.run(gpu_worker.run(Settings(data_dir=tmp_path)))
    own = Settings(
        api_keys="k-0123456789:u:paid",
        url_signing_key="a" * 40,
        webhook_secret_key="b" * 40,
        payload_keys=codec.new_key("prod"),
        data_dir=tmp_path,
    )
    create_app(own)  # starts
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:7233")
    create_app(Settings(data_dir=tmp_path))  # the embedded stack keeps its defaults


def test_secrets_never_reach_the_logs(tmp_path: Path) -> None:
    secrets = {
        "VIDEOGEN_API_KEYS": "key-alpha-7f3e9b:alice:paid",
        "VIDEOGEN_URL_SIGNING_KEY": "url-key-c41d8a77",
        "VIDEOGEN_WEBHOOK_SECRET_KEY": "hook-key-9e02bb13",
        "VIDEOGEN_ADMIN_KEY": "admin-key-5a6b7c",
        "VIDEOGEN_PAYLOAD_KEYS": "k1:" + base64.b64encode(b"payload-key-3d9f".ljust(32)).decode(),
    }
    script = (
        "from fastapi.testclient import TestClient\n"
        "from api.app import create_app\n"
        "from videogen import logs\n"
        "logs.configure(level='DEBUG')\n"
        "with TestClient(create_app(), raise_server_exceptions=False) as c:\n"
        "    good = {'Authorization': 'Bearer key-alpha-7f3e9b'}\n"
        "    c.get('/v1/models', headers=good)\n"
        "    c.get('/v1/webhook_secret', headers=good)\n"
        "    c.get('/v1/models', headers={'Authorization': 'Bearer key-alpha-7f3e9bX'})\n"
        "    c.get('/v1/admin/fleet', headers={'Authorization': 'Bearer admin-key-5a6b7c'})\n"
        "    c.post('/v1/videos', headers=good, json={'prompt': 'a', 'size': '1x1'})\n"
        "    c.post('/v1/videos', headers=good, json={'prompt': 'a'})  # no Temporal: 503\n"
        "    op = {'Authorization': 'Bearer admin-key-5a6b7c'}\n"
        "    c.post('/codec/encode', headers=op, json={'payloads': [{'data': 'eA=='}]})\n"
    )
    env = {
        **os.environ,
        **secrets,
        "VIDEOGEN_LOG_FORMAT": "json",
        "VIDEOGEN_DATA_DIR": str(tmp_path),
        "TEMPORAL_ADDRESS": "127.0.0.1:9",
    }
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    logged = out.stdout + out.stderr
    assert '"event"' in logged  # it did log (requests, the failed start)
    for name, value in secrets.items():
        # The key of an `id:key` payload entry; the key before `:user:tier` of an API key.
        secret = value.split(":")[1] if name == "VIDEOGEN_PAYLOAD_KEYS" else value.split(":")[0]
        assert secret not in logged, f"{name} appears in the logs"
    assert "payload-key-3d9f" not in logged


CORE_WARNING = """
import asyncio, os
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker
from videogen import logs, sdk_metrics
from videogen.devserver import DevServer, free_port

logs.configure()

@activity.defn
async def noop() -> None: ...

async def main() -> None:
    server = DevServer(port=free_port(), ui_port=None).start()
    client = await Client.connect(server.address, runtime=sdk_metrics.runtime())
    async with Worker(client, task_queue="core-logs", activities=[noop]):
        server.stop()  # the worker's polls fail from here on: the SDK core warns
        await asyncio.sleep(60)

asyncio.run(main())
"""


def test_the_sdk_cores_warnings_are_json_log_lines(tmp_path: Path) -> None:
    env = {**os.environ, "VIDEOGEN_LOG_FORMAT": "json"}
    child = subprocess.Popen(
        [sys.executable, "-c", CORE_WARNING],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            lines.append(line)
            if '"temporalio.core' in line or not line:
                break
    finally:
        child.kill()
        child.wait(10)
    core = [json.loads(line) for line in lines if '"temporalio.core' in line]
    assert core, f"no warning of the SDK core came through logging: {lines[-5:]}"
    assert core[0]["level"] == "warning" and "poll" in core[0]["event"]
    assert "temporal_log" not in core[0]
    assert not any("\x1b[" in line for line in lines), "coloured text in the log stream"
