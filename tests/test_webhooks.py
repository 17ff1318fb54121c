"""Webhook signing against the Standard Webhooks test vector, and the SSRF guard."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.webhooks import WebhookActivities
from videogen import contracts as c
from videogen import webhooks


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    # From the Standard Webhooks reference libraries' tests.
    sig = webhooks.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_user_secrets_are_stable_and_distinct() -> None:
    a = webhooks.user_secret("master", "alice")
    assert a == webhooks.user_secret("master", "alice") and a.startswith("whsec_")
    assert a != webhooks.user_secret("master", "bob")
    assert a != webhooks.user_secret("other-master", "alice")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://127.0.0.1/h", "loopback"),
        ("http://localhost:8080/h", "loopback"),
        ("http://10.0.0.1/h", "private"),
        ("http://192.168.0.10/h", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local or metadata"),
        ("http://[::1]/h", "loopback"),
        ("http://[::ffff:10.0.0.1]/h", "private"),
        ("http://[fd00::1]/h", "private"),
        ("http://0.0.0.0/h", "address"),  # 0.0.0.0 is both "private" and "unspecified"
        ("http://224.0.0.1/h", "multicast"),
        ("gopher://example/h", "http"),
        ("http://user:pw@1.1.1.1/h", "credentials"),
        ("http://[::1", "not a valid URL"),
        # IPv6 forms that embed an IPv4 address (here loopback, or a public one: refused alike).
        ("http://[2002:7f00:1::1]/h", "IPv4-embedding"),  # 6to4 of 127.0.0.1
        ("http://[2002:0101:0101::1]/h", "IPv4-embedding"),  # 6to4 of 1.1.1.1
        ("http://[64:ff9b::7f00:1]/h", "IPv4-embedding"),  # NAT64 of 127.0.0.1
        ("http://[64:ff9b::a9fe:a9fe]/h", "IPv4-embedding"),  # NAT64 of the metadata address
        ("http://[64:ff9b:1::a00:1]/h", "IPv4-embedding"),  # local-use NAT64 of 10.0.0.1
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/h", "IPv4-embedding"),  # Teredo
        ("http://[::7f00:1]/h", "loopback|IPv4-embedding"),  # IPv4-compatible ::127.0.0.1
        ("http://[::a9fe:a9fe]/h", "IPv4-embedding"),  # IPv4-compatible ::169.254.169.254
    ],
)
def test_unsafe_urls_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(webhooks.UnsafeWebhookURL, match=fragment):
        webhooks.check_url(url)


def test_delivery_goes_to_the_vetted_address() -> None:
    # Connecting to the IP that passed the check: a second DNS answer cannot redirect it.
    target = webhooks.check_url("http://1.1.1.1:8443/hook?x=1")
    assert target.url == "http://1.1.1.1:8443/hook?x=1" and target.host == "1.1.1.1"
    dev = webhooks.check_url("http://localhost:9/h", allowed_hosts=frozenset({"localhost"}))
    assert dev.host == "localhost" and dev.ip in ("127.0.0.1", "::1")
    assert dev.url in ("http://127.0.0.1:9/h", "http://[::1]:9/h")


@pytest.fixture
def answering() -> Iterator[Callable[[int], str]]:
    """A loopback HTTP server answering every POST with the status its path names
    (`/status/302`), a redirect pointing at a path that would answer 200."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            status = int(self.path.rsplit("/", 1)[-1])
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("location", "/status/200")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield lambda status: f"http://127.0.0.1:{server.server_port}/status/{status}"
    server.shutdown()


async def _deliver(url: str) -> int:
    acts = WebhookActivities("key", allowed_hosts=frozenset({"127.0.0.1"}))
    inp = c.WebhookInput(
        job_id="video_x",
        user="u",
        url=url,
        event="video.completed",
        webhook_id="msg_x",
        body="{}",
        cpu_task_queue="q",
    )
    return await ActivityEnvironment().run(acts.deliver_webhook, inp)


@pytest.mark.parametrize(
    ("status", "error_type", "final"),
    [
        (302, c.ErrorCode.WEBHOOK_REDIRECT, True),  # never followed, even to a 200
        (410, c.ErrorCode.WEBHOOK_GONE, True),  # the receiver asks us to stop
        (500, "WebhookRejected", False),  # retried (for up to a day)
    ],
)
async def test_delivery_outcomes_by_status(
    answering: Callable[[int], str], status: int, error_type: str, final: bool
) -> None:
    assert await _deliver(answering(200)) == 200
    with pytest.raises(ApplicationError) as err:
        await _deliver(answering(status))
    assert err.value.type == error_type and err.value.non_retryable is final
    assert error_type in c.WEBHOOK_NON_RETRYABLE or not final


async def test_each_delivery_attempt_checks_the_url_again(answering: Callable[[int], str]) -> None:
    # Accepted at submission (say the host was public then), refused at delivery time: the
    # delivery ends at once, without a request.
    acts = WebhookActivities("key", allowed_hosts=frozenset())
    inp = c.WebhookInput(
        job_id="video_x",
        user="u",
        url=answering(200),
        event="video.completed",
        webhook_id="msg_x",
        body="{}",
        cpu_task_queue="q",
    )
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(acts.deliver_webhook, inp)
    assert err.value.type == c.ErrorCode.WEBHOOK_UNSAFE and err.value.non_retryable
    assert "loopback" in err.value.message or "private" in err.value.message
