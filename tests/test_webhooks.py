"""Webhook signing against the Standard Webhooks test vector, and the SSRF guard."""

from __future__ import annotations

import pytest

from videogen import webhooks


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    # From the Standard Webhooks reference libraries' tests.
    sig = webhooks.sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                        1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_user_secrets_are_stable_and_distinct() -> None:
    a = webhooks.user_secret("master", "alice")
    assert a == webhooks.user_secret("master", "alice") and a.startswith("whsec_")
    assert a != webhooks.user_secret("master", "bob")
    assert a != webhooks.user_secret("other-master", "alice")


@pytest.mark.parametrize(("url", "fragment"), [
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
])
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
