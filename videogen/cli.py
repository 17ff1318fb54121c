"""The `videogen` command: run the stack or its parts, and use the API from a terminal.

Process commands: `up`, `demo`, `temporal`, `api`, `worker gpu|cpu`.
Client commands (over HTTP, `VIDEOGEN_API_URL` / `VIDEOGEN_API_KEY`): `submit`, `watch`,
`status`, `cancel`, `download`, `list`. Operator commands: `replay` (a history through the
workflow code), `key new` (a random API key and its line for a hashed keys file). Model
commands: `model list` (the catalog: versions and warm queues), `model lock FILE` (write each
catalog model's version into it), `model fake-wan` (a Wan directory with random weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from videogen.settings import DEV_API_KEY
from videogen.wan_variants import SHARD_SIZE, VARIANTS

if TYPE_CHECKING:
    from videogen.settings import Settings
    from videogen.stack import Stack

DEFAULT_API_URL = "http://127.0.0.1:8000"


class CliError(Exception):
    pass


# --- HTTP client commands -------------------------------------------------------------------


def _client(args: argparse.Namespace) -> httpx.Client:
    return httpx.Client(
        base_url=args.api_url,
        headers={"Authorization": f"Bearer {args.api_key}"},
        timeout=httpx.Timeout(30.0),
    )


def _call(http: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response:
    try:
        resp = http.request(method, path, **kw)
    except httpx.HTTPError as err:
        raise _unreachable(http, err) from None
    _raise_for_error(resp)
    return resp


def _unreachable(http: httpx.Client, err: Exception) -> CliError:
    return CliError(
        f"cannot reach the API at {http.base_url}: {err}. Is it running "
        "(`videogen up`)? Set VIDEOGEN_API_URL for another address."
    )


def _raise_for_error(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    resp.read()  # a streamed response has no body loaded yet
    try:
        msg = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = resp.text[:500]
    raise CliError(f"HTTP {resp.status_code}: {msg}")


def _line(v: dict[str, Any]) -> str:
    extra = ""
    if v["status"] == "in_progress":
        extra = f" {v['phase']} step {v['step']}/{v['total_steps']} attempt {v['attempt']}"
    if v.get("error"):
        extra = f" {v['error']['code']}: {v['error']['message']}"
    return f"{v['id']}  {v['status']:<11} {v['progress']:>3}%{extra}  {v['prompt'][:50]!r}"


def iter_events(http: httpx.Client, video_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, Video object) from the job's server-sent events until it ends; reconnects with
    Last-Event-ID if the connection drops."""
    last_id: str | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with http.stream(
                "GET",
                f"/v1/videos/{video_id}/events",
                headers=headers,
                timeout=httpx.Timeout(30, read=None),
            ) as resp:
                _raise_for_error(resp)
                event, data = "message", list[str]()
                for line in resp.iter_lines():
                    if line.startswith(":"):
                        continue  # keep-alive
                    if line == "":
                        if data:
                            yield event, json.loads("\n".join(data))
                            if event != "progress":
                                return
                        event, data = "message", []
                        continue
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)
                    elif field == "id":
                        last_id = value
            return  # the server closed the stream after the final event
        except httpx.TransportError:
            time.sleep(1)  # dropped: resume where we were


def wait_with_progress(http: httpx.Client, video_id: str, quiet: bool = False) -> dict[str, Any]:
    """Follow the job's event stream until it ends, drawing a progress bar (phase, step,
    attempt, and where a resumed attempt continued from)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    v: dict[str, Any] = {}
    with Progress(*columns, transient=False, disable=quiet) as bar:
        task = bar.add_task("queued", total=100)
        for _, v in iter_events(http, video_id):
            desc = v["phase"]
            if v["phase"] == "denoising":
                desc = f"denoising step {v['step']}/{v['total_steps']}"
            if v.get("resumed_from_step") is not None:
                desc += f" (resumed from step {v['resumed_from_step']})"
            if v["attempt"] > 1:
                desc += f" attempt {v['attempt']}"
            bar.update(task, completed=v["progress"], description=desc)
    if not v:  # the stream ended without an event: ask once
        v = _call(http, "GET", f"/v1/videos/{video_id}").json()
    return v


def cmd_submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"prompt": args.prompt}
    for name in ("model", "size", "seconds", "seed", "negative_prompt"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.steps is not None:
        body["num_inference_steps"] = args.steps
    with _client(args) as http:
        v = _call(http, "POST", "/v1/videos", json=body).json()
        print(v["id"])
        if not args.wait:
            return 0
        v = wait_with_progress(http, v["id"])
        print(_line(v))
        if v["status"] != "completed":
            return 1
        if args.output:
            _download(http, v["id"], "video", Path(args.output))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as http:
        v = wait_with_progress(http, args.id)
    print(_line(v))
    return 0 if v["status"] == "completed" else 1


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as http:
        v = _call(http, "GET", f"/v1/videos/{args.id}").json()
    print(json.dumps(v, indent=2) if args.json else _line(v))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as http:
        print(_line(_call(http, "POST", f"/v1/videos/{args.id}/cancel").json()))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as http:
        page = _call(http, "GET", "/v1/videos", params={"limit": args.limit}).json()
    for v in page["data"]:
        print(_line(v))
    return 0


def _download(http: httpx.Client, video_id: str, variant: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        with http.stream(
            "GET", f"/v1/videos/{video_id}/content", params={"variant": variant}
        ) as resp:
            _raise_for_error(resp)
            with open(tmp, "wb") as f:
                for chunk in resp.iter_bytes():
                    f.write(chunk)
    except httpx.HTTPError as err:
        raise _unreachable(http, err) from None
    tmp.replace(out)
    return out


def cmd_download(args: argparse.Namespace) -> int:
    ext = {"video": "mp4", "thumbnail": "png", "spritesheet": "jpg"}[args.variant]
    out = Path(args.output or f"{args.id}.{ext}")
    with _client(args) as http:
        print(_download(http, args.id, args.variant, out))
    return 0


# --- process commands -----------------------------------------------------------------------


def _settings() -> Settings:
    # Imported lazily: client commands start fast and need no settings.
    from videogen.settings import Settings

    return Settings()


# On SIGTERM the API ends its event streams at once (api.app.ApiServer); other requests get
# this long to finish before they are cut, well inside a pod's 30 s grace period.
API_SHUTDOWN_TIMEOUT_S = 8


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import ApiServer, create_app
    from videogen import logs, tracing

    logs.configure(service="api", worker_id=logs.worker_id())
    tracing.setup("videogen-api")
    settings = _settings()
    app = create_app(settings)
    # log_config=None: uvicorn's loggers go through videogen's structured logging.
    config = uvicorn.Config(
        app,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level="warning",
        log_config=None,
        timeout_graceful_shutdown=API_SHUTDOWN_TIMEOUT_S,
    )
    ApiServer(config, app).run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from videogen import logs, tracing

    settings = _settings()
    static = {"service": f"worker-{args.kind}", "worker_id": logs.worker_id()}
    if args.kind == "gpu":
        static["model"] = settings.served_model.ref
    logs.configure(**static)
    tracing.setup(f"videogen-worker-{args.kind}")
    try:
        if args.kind == "gpu":
            from worker_gpu.main import run as run_gpu

            # Non-zero (EXIT_POISONED) asks the supervisor for a restart with a fresh model.
            return asyncio.run(run_gpu(settings))
        from worker_cpu.main import run as run_cpu

        asyncio.run(run_cpu(settings))
        return 0
    finally:
        tracing.shutdown()


def cmd_temporal(args: argparse.Namespace) -> int:
    from videogen.devserver import DevServer

    data_dir = Path(args.data_dir)
    server = DevServer(
        db_file=data_dir / "temporal.db",
        port=args.temporal_port,
        ui_port=args.ui_port,
        log_file=data_dir / "temporal.log",
    ).start()
    print(f"Temporal at {server.address}, Web UI at {server.ui_url}; Ctrl-C stops it")
    try:
        assert server.process is not None
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _stack(args: argparse.Namespace, log_dir: Path | None) -> Stack:
    from videogen.stack import Stack

    return Stack(
        data_dir=Path(args.data_dir),
        api_port=args.api_port,
        temporal_port=args.temporal_port,
        ui_port=args.ui_port,
        gpu_workers=args.gpu_workers,
        log_dir=log_dir,
    )


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop a stack we started (also when started in the background,
    where SIGINT arrives ignored)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def cmd_up(args: argparse.Namespace) -> int:
    _stop_on_signals()
    stack = _stack(args, None)
    stack.start()
    print(
        f"\nvideogen is up:\n  web page   {stack.api_url}/  (sign in with the key)\n"
        f"  API        {stack.api_url}  (key: {DEV_API_KEY})\n"
        f"  Temporal   127.0.0.1:{args.temporal_port}\n"
        f"  Temporal UI http://127.0.0.1:{args.ui_port}\n  data       {stack.data_dir}\n"
        "Ctrl-C stops everything.",
        file=sys.stderr,
    )
    try:
        while True:
            stack.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping...", file=sys.stderr)
    finally:
        stack.stop()
    return 0


DEMO_PROMPT = "a red ball bouncing on a wooden floor"


def cmd_demo(args: argparse.Namespace) -> int:
    from activities.media import probe_mp4

    _stop_on_signals()
    data_dir = Path(args.data_dir)
    stack = _stack(args, data_dir / "logs")
    print(f"starting the embedded stack (logs in {data_dir / 'logs'}) ...")
    stack.start()
    try:
        http = httpx.Client(
            base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {DEV_API_KEY}"}
        )
        body: dict[str, Any] = {"prompt": args.prompt}
        if args.seed is not None:
            body["seed"] = args.seed
        v = _call(http, "POST", "/v1/videos", json=body).json()
        print(
            f"submitted {v['id']}: {v['size']}, {v['seconds']} s, "
            f"{v['total_steps']} steps, seed {v['seed']}"
        )
        print(
            f"watch it in the Temporal Web UI: http://127.0.0.1:{args.ui_port}"
            f"/namespaces/default/workflows/{v['id']}"
        )
        v = wait_with_progress(http, v["id"])
        if v["status"] != "completed":
            raise CliError(f"the job ended {v['status']}: {v.get('error')}")
        out = _download(http, v["id"], "video", Path(args.output_dir) / f"{v['id']}.mp4")
        info = probe_mp4(out.read_bytes())
        print(
            f"wrote {out.resolve()}: {info.frames} frames, {info.width}x{info.height}, "
            f"{info.fps:g} fps, {info.codec}/{info.pix_fmt}, {out.stat().st_size} bytes"
        )
        sheet = _download(
            http, v["id"], "spritesheet", Path(args.output_dir) / f"{v['id']}-frames.jpg"
        )
        print(f"wrote {sheet.resolve()}: a contact sheet of its frames")
        # Equal for every run of this prompt and seed on this kind of machine
        # (docs/checkpoints.md, "Determinism: what gives the same bytes").
        print(f"frames_sha256 {v['frames_sha256']}")
    finally:
        stack.stop()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from temporalio.client import WorkflowHistory
    from temporalio.worker import Replayer

    from videogen import codec
    from videogen.settings import Settings
    from videogen.temporal import connect, data_converter
    from workflows.video import VideoGeneration

    keys = Settings().payload_keyring

    async def run() -> None:
        # Encrypted histories decode with VIDEOGEN_PAYLOAD_KEYS; plaintext ones pass through.
        replayer = Replayer(workflows=[VideoGeneration], data_converter=data_converter(keys))
        if args.history:
            text = Path(args.history).read_text()
            history = WorkflowHistory.from_json(args.workflow_id or "replayed", text)
        else:
            client = await connect(keys=keys)
            history = await client.get_workflow_handle(args.workflow_id).fetch_history()
        missing = codec.key_ids(history.events) - set(keys.keys)
        if missing:
            raise CliError(
                f"the history is encrypted with key id(s) {', '.join(sorted(missing))}, which "
                f"{codec.SETTING} does not hold: add them (after the active key) to replay it"
            )
        await replayer.replay_workflow(history)

    try:
        asyncio.run(run())
    except CliError:
        raise
    except Exception as err:
        raise CliError(f"replay failed: {type(err).__name__}: {err}") from None
    print("replay ok: the workflow code reproduces the recorded history")
    return 0


def cmd_fake_wan(args: argparse.Namespace) -> int:
    # Imported lazily: torch and diffusers take seconds to import.
    from diffusers.utils import logging as diffusers_logging

    from videogen import fake_wan

    diffusers_logging.disable_progress_bar()
    try:
        built = fake_wan.build(
            args.variant,
            args.out,
            args.layers,
            text_layers=args.text_layers,
            vocab_size=args.vocab_size,
            seed=args.seed,
            max_shard_size=args.max_shard_size,
            weights=not args.configs_only,
        )
    except ValueError as err:
        raise CliError(str(err)) from None
    counts = ", ".join(f"{k} {v:,}" for k, v in built.parameters.items())
    what = "configs only" if not built.weights else "random weights"
    print(f"wrote {built.path} ({built.variant}, {what}) in {built.seconds:.1f} s")
    print(f"parameters: {counts}")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from videogen import registry

    settings = _settings()
    try:
        reg = registry.load(settings.models, settings.model, settings.model_name)
    except ValueError as err:
        raise CliError(str(err)) from None
    for m in reg.models.values():
        mark = " (default)" if m.name == reg.default else ""
        print(f"{m.ref}{mark}  queue {settings.warm_queue(m)}  source {m.source}")
    for alias in reg.aliases.values():
        routes = ", ".join(f"{name} {weight}" for name, weight in alias.weights)
        mark = " (default)" if alias.name == reg.default else ""
        print(f"{alias.name}{mark}  alias: {routes}")
    return 0


def cmd_model_lock(args: argparse.Namespace) -> int:
    from videogen import registry

    try:
        versions = registry.lock(args.catalog)
    except ValueError as err:
        raise CliError(str(err)) from None
    for name, version in versions.items():
        print(f"{name}@{version[:12]}  {version}")
    print(f"wrote {args.catalog}")
    return 0


def cmd_key_new(args: argparse.Namespace) -> int:
    import hashlib
    import secrets

    from videogen.settings import Settings

    key = "vg-" + secrets.token_urlsafe(32)
    line = f"{hashlib.sha256(key.encode()).hexdigest()}:{args.user}:{args.tier}"
    try:  # the line must load as VIDEOGEN_API_KEYS_FILE reads it
        Settings(api_keys="")._key_entry(line, "the new entry")
    except ValueError as err:
        raise CliError(str(err)) from None
    print(f"key (give it to {args.user}; it is not stored anywhere): {key}")
    print(f"line for VIDEOGEN_API_KEYS_FILE: {line}")
    return 0


def cmd_key_payload(args: argparse.Namespace) -> int:
    from videogen import codec

    try:
        entry = codec.new_key(args.id)
    except ValueError as err:
        raise CliError(str(err)) from None
    print(f"entry for {codec.SETTING} (keep it secret; losing it loses the jobs written with it):")
    print(entry)
    print(
        "rotation: first add it after the active key everywhere, then, once every process has "
        "it, move it first"
    )
    return 0


def _key_commands(sub: Any) -> None:
    sp = sub.add_parser("key", help="API keys and payload encryption keys")
    keys = sp.add_subparsers(dest="key_command", required=True)
    new = keys.add_parser("new", help="a new random API key and its hashed keys-file line")
    new.add_argument("--user", required=True)
    new.add_argument("--tier", required=True, help="a tier of VIDEOGEN_TIERS")
    new.set_defaults(func=cmd_key_new)
    payload = keys.add_parser(
        "payload", help="a new key for encrypting Temporal payloads (VIDEOGEN_PAYLOAD_KEYS)"
    )
    payload.add_argument("id", help="its key id: letters, digits, '_', '.', '-' (e.g. 2026-12)")
    payload.set_defaults(func=cmd_key_payload)


def _model_commands(sub: Any) -> None:
    sp = sub.add_parser("model", help="the model catalog; make model directories")
    models = sp.add_subparsers(dest="model_command", required=True)
    ls = models.add_parser("list", help="the models served (VIDEOGEN_MODELS or VIDEOGEN_MODEL)")
    ls.set_defaults(func=cmd_model_list)
    lk = models.add_parser(
        "lock", help="compute each catalog model's version and write it into the catalog file"
    )
    lk.add_argument("catalog", help="the JSON catalog file (VIDEOGEN_MODELS)")
    lk.set_defaults(func=cmd_model_lock)
    fw = models.add_parser(
        "fake-wan",
        help="write a published Wan variant's diffusers layout and configs with random weights",
    )
    fw.add_argument("--variant", required=True, choices=list(VARIANTS))
    fw.add_argument("--out", required=True, help="directory to create (absent or empty)")
    fw.add_argument("--layers", type=int, help="transformer blocks (default: as published)")
    fw.add_argument("--text-layers", type=int, help="text-encoder layers (default: --layers)")
    fw.add_argument("--vocab-size", type=int, help="text-encoder embedding rows (default: 256384)")
    fw.add_argument("--seed", type=int, default=0)
    fw.add_argument("--max-shard-size", default=SHARD_SIZE, help="safetensors shard size")
    fw.add_argument("--configs-only", action="store_true", help="write no weight files")
    fw.set_defaults(func=cmd_fake_wan)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="videogen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def client_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--api-url", default=os.environ.get("VIDEOGEN_API_URL", DEFAULT_API_URL))
        sp.add_argument("--api-key", default=os.environ.get("VIDEOGEN_API_KEY", DEV_API_KEY))
        return sp

    def stack_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-dir", default=os.environ.get("VIDEOGEN_DATA_DIR", ".data"))
        sp.add_argument("--api-port", type=int, default=8000)
        sp.add_argument("--temporal-port", type=int, default=7233)
        sp.add_argument("--ui-port", type=int, default=8233)
        sp.add_argument("--gpu-workers", type=int, default=1)

    sp = sub.add_parser("up", help="run the whole embedded stack in the foreground")
    stack_args(sp)
    sp.set_defaults(func=cmd_up)

    sp = sub.add_parser("demo", help="start the stack, generate one video, stop")
    stack_args(sp)
    # Something the built-in model can draw (README, "The built-in model").
    sp.add_argument("--prompt", default=DEMO_PROMPT)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--output-dir", default="out")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("temporal", help="run only the embedded Temporal dev server")
    sp.add_argument("--data-dir", default=os.environ.get("VIDEOGEN_DATA_DIR", ".data"))
    sp.add_argument("--temporal-port", type=int, default=7233)
    sp.add_argument("--ui-port", type=int, default=8233)
    sp.set_defaults(func=cmd_temporal)

    sp = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.set_defaults(func=cmd_api)

    sp = sub.add_parser("worker", help="run a worker process")
    sp.add_argument("kind", choices=["gpu", "cpu"])
    sp.set_defaults(func=cmd_worker)

    sp = client_cmd("submit", "submit a prompt")
    sp.add_argument("prompt")
    sp.add_argument("--model")
    sp.add_argument("--size", help="WIDTHxHEIGHT")
    sp.add_argument("--seconds", type=int)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--steps", type=int, help="num_inference_steps")
    sp.add_argument("--negative-prompt")
    sp.add_argument("--wait", action="store_true", help="show progress until the job ends")
    sp.add_argument("-o", "--output", help="with --wait: write the MP4 here")
    sp.set_defaults(func=cmd_submit)

    sp = client_cmd("watch", "follow a job live (server-sent events) until it ends")
    sp.add_argument("id")
    sp.set_defaults(func=cmd_watch)

    sp = client_cmd("status", "show a job")
    sp.add_argument("id")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)

    sp = client_cmd("cancel", "cancel a queued or running job")
    sp.add_argument("id")
    sp.set_defaults(func=cmd_cancel)

    sp = client_cmd("download", "download a finished video (or its thumbnail/spritesheet)")
    sp.add_argument("id")
    sp.add_argument("--variant", choices=["video", "thumbnail", "spritesheet"], default="video")
    sp.add_argument("-o", "--output")
    sp.set_defaults(func=cmd_download)

    sp = client_cmd("list", "list your jobs, newest first")
    sp.add_argument("--limit", type=int, default=20)
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("replay", help="replay a workflow history against the current code")
    sp.add_argument("history", nargs="?", help="JSON from `temporal workflow show -o json`")
    sp.add_argument("--workflow-id", help="fetch this workflow's history from Temporal")
    sp.set_defaults(func=cmd_replay)

    _model_commands(sub)
    _key_commands(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "replay" and not (args.history or args.workflow_id):
        build_parser().error("replay needs a history file or --workflow-id")
    try:
        code = args.func(args)
    except CliError as err:
        print(f"videogen: {err}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    # The Temporal SDK can abort at interpreter exit in short-lived processes (sdk-python #300);
    # leave without running finalizers so a finished command never ends in a crash message.
    os._exit(code)


if __name__ == "__main__":
    main()
