"""Encrypted Temporal payloads (videogen.codec) and the operators' codec endpoint.

Fast tests of the codec and its keys; then a stack of this module's own, with the Temporal Web
UI on: a job's raw history holds no byte of its prompt, the codec endpoint gives it back to an
operator (and to the Web UI, in a real browser), `videogen replay` replays the encrypted
history, and a key rotation keeps old jobs readable.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser import chromium
from helpers import api_client, private_stack, wait_for
from selenium.webdriver.support.ui import WebDriverWait
from starlette.requests import Request
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client, WorkflowHistory

from api.errors import ApiError, NotFoundError
from api.routers import codec as codec_router
from videogen import cli, codec
from videogen.devserver import free_port
from videogen.settings import Settings
from videogen.stack import Stack

OLD = codec.PayloadKeys.parse(codec.new_key("old"))
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "codec"


def payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


# --- the codec ---------------------------------------------------------------------------


async def test_a_payload_is_sealed_under_the_active_key_and_names_it() -> None:
    coder = codec.EncryptionCodec(OLD)
    [sealed] = await coder.encode([payload("a red ball")])
    assert sealed.metadata["encoding"] == codec.ENCODING
    assert sealed.metadata[codec.KEY_ID] == b"old"
    assert b"red ball" not in sealed.SerializeToString()
    assert await coder.decode([sealed]) == [payload("a red ball")]
    # A fresh nonce each time: equal prompts give unequal ciphertexts.
    [again] = await coder.encode([payload("a red ball")])
    assert again.data != sealed.data


async def test_after_a_rotation_old_payloads_read_and_new_ones_use_the_new_key() -> None:
    [old] = await codec.EncryptionCodec(OLD).encode([payload("kept for a year")])
    old_entry = f"old:{base64.b64encode(OLD.keys['old']).decode()}"
    rotated = codec.PayloadKeys.parse(f"{codec.new_key('new')},{old_entry}")
    assert rotated.active == "new"
    coder = codec.EncryptionCodec(rotated)
    assert await coder.decode([old]) == [payload("kept for a year")]
    [new] = await coder.encode([payload("written today")])
    assert new.metadata[codec.KEY_ID] == b"new"


async def test_a_payload_of_an_unknown_key_or_altered_is_refused_saying_why() -> None:
    [sealed] = await codec.EncryptionCodec(OLD).encode([payload("secret")])
    other = codec.EncryptionCodec(codec.PayloadKeys.parse(codec.new_key("other")))
    with pytest.raises(codec.PayloadKeyError, match=r"key id 'old'.*VIDEOGEN_PAYLOAD_KEYS"):
        await other.decode([sealed])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(codec.PayloadKeyError, match="altered"):
        await codec.EncryptionCodec(OLD).decode([tampered])
    # Nor can a payload be passed off under another key id of the ring.
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata[codec.KEY_ID] = b"twin"
    twins = codec.PayloadKeys({"old": OLD.keys["old"], "twin": OLD.keys["old"]}, "old")
    with pytest.raises(codec.PayloadKeyError, match="altered"):
        await codec.EncryptionCodec(twins).decode([relabelled])


async def test_payloads_written_before_encryption_pass_through() -> None:
    assert await codec.EncryptionCodec(OLD).decode([payload("plain")]) == [payload("plain")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nokey", r"entry 1: expected id:base64-key"),
        ("a b:AAAA", r"entry 1: expected id:base64-key"),
        ("k:not base64!", r"entry 1 \(k\): the key is not valid base64"),
        (f"k:{base64.b64encode(b'short').decode()}", r"5 bytes; AES-256 needs 32"),
        (f"{codec.new_key('k')},{codec.new_key('k')}", r"entry 2: key id 'k' appears twice"),
    ],
)
def test_malformed_keys_are_refused_naming_the_entry(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codec.PayloadKeys.parse(text)


async def test_failure_messages_travel_encrypted() -> None:
    converter = codec.data_converter(OLD)
    failure = Failure()
    await converter.encode_failure(RuntimeError("prompt 'a koi pond' broke it"), failure)
    assert failure.message == "Encoded failure"
    assert b"koi pond" not in failure.SerializeToString()
    decoded = await converter.decode_failure(failure)
    assert "koi pond" in str(decoded)


def test_the_development_payload_key_is_refused_outside_the_embedded_stack() -> None:
    assert any("VIDEOGEN_PAYLOAD_KEYS" in p for p in Settings().development_secrets())
    own = Settings(payload_keys=codec.new_key("prod"))
    assert not any("PAYLOAD" in p for p in own.development_secrets())


def test_videogen_key_payload_makes_an_entry_that_parses(capsys: pytest.CaptureFixture) -> None:
    cli.cmd_key_payload(argparse.Namespace(id="2026-12"))
    entry = capsys.readouterr().out.splitlines()[1]
    assert codec.PayloadKeys.parse(entry).active == "2026-12"
    with pytest.raises(cli.CliError, match="key id"):
        cli.cmd_key_payload(argparse.Namespace(id="no spaces"))


def test_the_embedded_web_ui_is_pointed_at_the_codec_endpoint(tmp_path: Path) -> None:
    stack = Stack(data_dir=tmp_path, api_port=8123, ui_port=8234)
    command = stack.dev_server().command()
    assert command[command.index("--ui-codec-endpoint") + 1] == "http://127.0.0.1:8123/codec"
    origins = stack.child_env()["VIDEOGEN_CODEC_CORS_ORIGINS"].split(",")
    assert "http://127.0.0.1:8234" in origins and "http://localhost:8234" in origins
    headless = Stack(data_dir=tmp_path, ui_port=None).dev_server().command()
    assert "--ui-codec-endpoint" not in headless


def _request(client: str, authorization: str | None = None) -> Request:
    headers = [(b"authorization", authorization.encode("latin-1"))] if authorization else []
    return Request({"type": "http", "headers": headers, "client": (client, 5000)})


def test_outside_the_embedded_stack_only_the_operator_key_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec_router, "is_embedded", lambda: False)
    with_key = Settings(admin_key="operator-key")
    codec_router._authorise(_request("10.0.0.7", "Bearer operator-key"), with_key)
    others = (_request("10.0.0.7"), _request("127.0.0.1"), _request("1.2.3.4", "Bearer x"))
    for req in (*others, _request("1.2.3.4", "Bearer op\xe9rator")):
        with pytest.raises(ApiError, match="operator key") as err:
            codec_router._authorise(req, with_key)
        assert err.value.status == 401
    with pytest.raises(NotFoundError, match="VIDEOGEN_ADMIN_KEY"):
        codec_router._authorise(_request("127.0.0.1"), Settings(admin_key=""))
    # On the embedded stack, loopback without a key (the dev server's UI cannot send one).
    monkeypatch.setattr(codec_router, "is_embedded", lambda: True)
    codec_router._authorise(_request("127.0.0.1"), Settings(admin_key=""))
    with pytest.raises(ApiError):
        codec_router._authorise(_request("10.0.0.7"), Settings(admin_key=""))


# --- on a stack --------------------------------------------------------------------------

UI_ORIGIN = "http://ui.example"
JOB = {"size": "64x64", "seconds": 1, "num_inference_steps": 3}


@pytest.fixture(scope="module")
def cstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ui_port = free_port()
    env = {
        "VIDEOGEN_TASK_QUEUE_PREFIX": f"codec-{uuid.uuid4().hex[:8]}",
        # The stack's own Web UI, and one more origin to tell granted from refused.
        "VIDEOGEN_CODEC_CORS_ORIGINS": f"http://127.0.0.1:{ui_port},{UI_ORIGIN}",
        "VIDEOGEN_API_KEYS": "vg-dev-key:dev:paid",
    }
    with private_stack(tmp_path_factory, "codec", env, ui_port=ui_port) as s:
        yield s


@pytest.fixture
def capi(cstack: Stack) -> Iterator[httpx.Client]:
    with api_client(cstack) as client:
        yield client


def completed_job(api: httpx.Client, prompt: str) -> str:
    r = api.post("/v1/videos", json={"prompt": prompt, **JOB})
    assert r.status_code == 200, r.text
    job = str(r.json()["id"])
    assert wait_for(api, job)["status"] == "completed"
    return job


async def raw_history(stack: Stack, job: str) -> WorkflowHistory:
    """The history as the server keeps it: a client without the codec decodes nothing."""
    plain = await Client.connect(f"127.0.0.1:{stack.temporal_port}")
    return await plain.get_workflow_handle(job).fetch_history()


def raw_bytes(history: WorkflowHistory) -> bytes:
    return b"".join(event.SerializeToString() for event in history.events)


def key_ids(history: WorkflowHistory) -> set[str]:
    started = history.events[0].workflow_execution_started_event_attributes
    return {p.metadata[codec.KEY_ID].decode() for p in started.input.payloads}


async def test_a_jobs_history_and_memo_hold_no_byte_of_its_prompt(
    cstack: Stack, capi: httpx.Client
) -> None:
    prompt = f"a zebra named {uuid.uuid4().hex} crossing a bridge"
    job = completed_job(capi, prompt)
    history = await raw_history(cstack, job)
    assert len(history.events) > 10
    assert prompt.encode() not in raw_bytes(history)
    assert b"zebra named" not in raw_bytes(history)
    plain = await Client.connect(f"127.0.0.1:{cstack.temporal_port}")
    desc = await plain.get_workflow_handle(job).describe()
    assert b"zebra" not in desc.raw_description.SerializeToString()
    # What the workers see (the same history through the codec) does hold it.
    client = await cstack.client()
    decoded = await client.get_workflow_handle(job).fetch_history()
    started = decoded.events[0].workflow_execution_started_event_attributes
    [request] = await client.data_converter.decode(started.input.payloads)
    assert request["prompt"] == prompt
    assert capi.get(f"/v1/videos/{job}").json()["prompt"] == prompt


async def test_the_codec_endpoint_decodes_for_operators_and_the_web_ui(
    cstack: Stack, capi: httpx.Client
) -> None:
    prompt = f"a lantern {uuid.uuid4().hex}"
    job = completed_job(capi, prompt)
    started = (await raw_history(cstack, job)).events[0].workflow_execution_started_event_attributes
    body = {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                "data": base64.b64encode(p.data).decode(),
            }
            for p in started.input.payloads
        ]
    }
    codec_url = f"{cstack.api_url}/codec"
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{codec_url}/decode", json=body, headers={"Origin": UI_ORIGIN})
        assert r.status_code == 200, r.text
        [plain] = r.json()["payloads"]
        assert prompt in base64.b64decode(plain["data"]).decode()
        assert r.headers["access-control-allow-origin"] == UI_ORIGIN
        # The UI's preflight; another origin gets no CORS grant.
        pre = http.options(f"{codec_url}/decode", headers={"Origin": UI_ORIGIN})
        assert pre.status_code == 204
        assert "x-namespace" in pre.headers["access-control-allow-headers"]
        other = http.post(f"{codec_url}/decode", json=body, headers={"Origin": "http://evil"})
        assert "access-control-allow-origin" not in other.headers
        # Encode then decode: the round trip an operator's tooling makes.
        sealed = http.post(f"{codec_url}/encode", json={"payloads": [plain]}).json()
        assert (
            sealed["payloads"][0]["metadata"]["encoding"]
            == base64.b64encode(codec.ENCODING).decode()
        )
        assert http.post(f"{codec_url}/decode", json=sealed).json()["payloads"] == [plain]
        bad = http.post(f"{codec_url}/decode", content=b"{not json")
        assert bad.status_code == 400 and "Payloads" in bad.json()["error"]["message"]
    # A user's API key is not an operator's.
    assert capi.post("/codec/decode", json=body).status_code == 401


async def test_the_temporal_web_ui_shows_the_prompt_through_the_codec(
    cstack: Stack, capi: httpx.Client
) -> None:
    prompt = f"a violet kite {uuid.uuid4().hex}"
    job = completed_job(capi, prompt)
    driver = chromium()
    try:
        driver.get(f"http://127.0.0.1:{cstack.ui_port}/namespaces/default/workflows/{job}")
        try:
            WebDriverWait(driver, 60, poll_frequency=0.25).until(lambda d: prompt in d.page_source)
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "temporal-web-ui.png"))
    finally:
        driver.quit()


def test_the_temporal_cli_shows_the_prompt_through_the_codec(
    cstack: Stack, capi: httpx.Client
) -> None:
    prompt = f"a copper bell {uuid.uuid4().hex}"
    job = completed_job(capi, prompt)
    show = [
        str(Path(sys.executable).parent / "temporal"),
        "workflow",
        "show",
        "--workflow-id",
        job,
        "--address",
        f"127.0.0.1:{cstack.temporal_port}",
        "--output",
        "json",
    ]
    plain = subprocess.run(show, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert prompt not in plain.stdout
    assert base64.b64encode(codec.ENCODING).decode() in plain.stdout  # metadata as base64
    codec_endpoint = ["--codec-endpoint", f"{cstack.api_url}/codec"]
    decoded = subprocess.run([*show, *codec_endpoint], capture_output=True, text=True, timeout=60)
    assert decoded.returncode == 0, decoded.stderr
    # Payloads are printed as protobuf JSON: the data of the decoded input, as base64.
    started = json.loads(decoded.stdout)["events"][0]["workflowExecutionStartedEventAttributes"]
    [request] = started["input"]["payloads"]
    assert prompt in base64.b64decode(request["data"]).decode()


def test_videogen_replay_replays_an_encrypted_history(
    cstack: Stack, capi: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = completed_job(capi, "a tide pool at dawn")
    path = tmp_path / "history.json"
    # Not in the test's event loop: the command runs one of its own, as from a shell.
    path.write_text(asyncio.run(raw_history(cstack, job)).to_json())
    args = argparse.Namespace(history=str(path), workflow_id=job)
    cli.cmd_replay(args)  # the stack's keys: this process's default, the development key
    monkeypatch.setenv("VIDEOGEN_PAYLOAD_KEYS", codec.new_key("other"))
    with pytest.raises(cli.CliError, match=r"key id\(s\) dev, which VIDEOGEN_PAYLOAD_KEYS"):
        cli.cmd_replay(args)


async def test_a_key_rotation_keeps_old_jobs_readable(cstack: Stack, capi: httpx.Client) -> None:
    before = completed_job(capi, "written under the old key")
    # Every process gets the new key first in its list; the old one stays for old jobs.
    cstack.env["VIDEOGEN_PAYLOAD_KEYS"] = f"{codec.new_key('2027-01')},{codec.DEV_PAYLOAD_KEYS}"
    for child in cstack.children:
        if child.name != "api" and child.process is not None:
            child.process.send_signal(signal.SIGTERM)
            child.process.wait(30)
    cstack.check()  # the workers come back with the new keys
    cstack.restart_api()
    cstack.wait_gpu_workers(1)
    assert capi.get(f"/v1/videos/{before}").json()["prompt"] == "written under the old key"
    after = completed_job(capi, "written under the new key")
    assert key_ids(await raw_history(cstack, before)) == {"dev"}
    assert key_ids(await raw_history(cstack, after)) == {"2027-01"}
    listed = {v["id"] for v in capi.get("/v1/videos").json()["data"]}
    assert {before, after} <= listed
