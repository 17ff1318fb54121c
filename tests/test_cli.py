"""The `videogen` command against the session's stack, and the embedded server's persistence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from activities.media import probe_mp4
from videogen import contracts as c
from videogen.devserver import DevServer, free_port, temporal_binary
from videogen.settings import DEV_API_KEY
from videogen.stack import Stack


def _videogen(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "VIDEOGEN_API_URL": stack.api_url,
        "VIDEOGEN_API_KEY": DEV_API_KEY,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "videogen.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_submit_wait_download_status(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    res = _videogen(
        stack,
        "submit",
        "a tiny boat",
        "--size",
        "64x64",
        "--seconds",
        "1",
        "--steps",
        "2",
        "--seed",
        "9",
        "--wait",
        "-o",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    video_id = res.stdout.splitlines()[0]
    assert probe_mp4(out.read_bytes()).frames == 9

    status = _videogen(stack, "status", video_id, "--json")
    assert json.loads(status.stdout)["status"] == "completed"
    thumb = tmp_path / "t.png"
    got = _videogen(stack, "download", video_id, "--variant", "thumbnail", "-o", str(thumb))
    assert got.returncode == 0 and thumb.read_bytes()[:4] == b"\x89PNG"
    assert video_id in _videogen(stack, "list").stdout


def test_watch_follows_a_job_to_its_end(stack: Stack) -> None:
    submitted = _videogen(
        stack, "submit", "a kite", "--size", "64x64", "--seconds", "1", "--steps", "20"
    )
    video_id = submitted.stdout.strip()
    watched = _videogen(stack, "watch", video_id)
    assert watched.returncode == 0, watched.stderr
    assert video_id in watched.stdout and "completed" in watched.stdout


def test_client_errors_are_one_clear_line(stack: Stack, tmp_path: Path) -> None:
    missing = _videogen(stack, "download", "video_nope", "-o", str(tmp_path / "x.mp4"))
    assert missing.returncode == 1
    assert "HTTP 404" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "x.mp4").exists()
    bad = _videogen(stack, "submit", "x", "--size", "1x1")
    assert bad.returncode == 1 and "size" in bad.stderr and "Traceback" not in bad.stderr
    down = subprocess.run(
        [
            sys.executable,
            "-m",
            "videogen.cli",
            "status",
            "video_x",
            "--api-url",
            f"http://127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1 and "cannot reach the API" in down.stderr


@pytest.mark.stack  # its own dev server
def test_dev_server_keeps_workflows_across_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "temporal.db"
    server = DevServer(db_file=db, port=free_port(), ui_port=None, log_file=tmp_path / "log")
    cli = [temporal_binary(), "workflow"]
    try:
        server.start()
        subprocess.run(
            [
                *cli,
                "start",
                "--address",
                server.address,
                "--type",
                "Anything",
                "--task-queue",
                "nobody",
                "--workflow-id",
                "survivor",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    finally:
        server.stop()
    try:
        server.start()
        desc = subprocess.run(
            [*cli, "describe", "--address", server.address, "--workflow-id", "survivor"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        server.stop()
    assert desc.returncode == 0, desc.stderr  # not found would be an error
    assert "survivor" in desc.stdout and "Anything" in desc.stdout


@pytest.mark.stack  # its own dev server
def test_an_older_database_gets_the_new_search_attributes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A .data/temporal.db made by an older version lacks newer search attributes (the
    server's --search-attribute flag only applies to a new database): start adds them."""
    from videogen import devserver

    db = tmp_path / "temporal.db"
    server = DevServer(db_file=db, port=free_port(), ui_port=None, log_file=tmp_path / "log")
    old = {c.SA_USER: "Keyword"}
    monkeypatch.setattr(devserver, "SEARCH_ATTRIBUTES", old)
    try:
        server.start()
    finally:
        server.stop()
    monkeypatch.setattr(devserver, "SEARCH_ATTRIBUTES", c.SEARCH_ATTRIBUTES)
    try:
        server.start()
        listed = subprocess.run(
            [
                temporal_binary(),
                "operator",
                "search-attribute",
                "list",
                "--address",
                server.address,
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    finally:
        server.stop()
    assert set(c.SEARCH_ATTRIBUTES) <= set(json.loads(listed.stdout)["customAttributes"])
