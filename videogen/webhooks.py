"""Webhooks: Standard Webhooks signing, per-user secrets, and the SSRF guard on target URLs.

Signing follows https://www.standardwebhooks.com: headers `webhook-id`, `webhook-timestamp`
and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
bytes of the user's `whsec_<base64>` secret. Each user's secret is derived from the server's
`VIDEOGEN_WEBHOOK_SECRET_KEY`, so API and workers agree without storing anything; a user reads
theirs at `GET /v1/webhook_secret`.

A webhook is a request the server makes on a user's behalf, so its target must not be the
server's own network: URLs that resolve to loopback, private, link-local (cloud metadata at
169.254.169.254), multicast or reserved addresses are refused unless explicitly allowed for
development (`VIDEOGEN_WEBHOOK_ALLOWED_HOSTS`). The check runs at submission and again before
every delivery (DNS can change).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

SECRET_PREFIX = "whsec_"
MAX_URL = 2048


class UnsafeWebhookURL(ValueError):
    """The URL is malformed or points somewhere a webhook must not go."""


def user_secret(master: str, user: str) -> str:
    """The user's signing secret, `whsec_<base64 of 24 bytes>`, derived from the master key."""
    raw = hmac.new(master.encode(), f"webhook-secret:{user}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(raw[:24]).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery attempt."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# IPv6 forms that carry an IPv4 address a gateway may route to (6to4 2002::/16 and Teredo
# 2001::/32 are told by `ipaddress` itself): refused whatever the IPv4 address, since which one
# is reached depends on relays outside our sight.
_EMBEDDING = (
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64, well-known prefix
    ipaddress.ip_network("64:ff9b:1::/48"),  # NAT64, local use
    ipaddress.ip_network("::/96"),  # IPv4-compatible ::a.b.c.d (deprecated)
)


def _blocked(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _blocked(ip.ipv4_mapped)
        embeds = ip.sixtofour is not None or ip.teredo is not None
        if embeds or (
            any(ip in n for n in _EMBEDDING) and not (ip.is_loopback or ip.is_unspecified)
        ):
            return "IPv4-embedding IPv6 (6to4, Teredo, NAT64 or IPv4-compatible)"
    for what, flag in (
        ("loopback", ip.is_loopback),
        ("link-local or metadata", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("unspecified", ip.is_unspecified),
    ):
        if flag:
            return what
    if not ip.is_global:
        return "non-public"
    return None


@dataclass(frozen=True)
class Target:
    """Where a checked webhook URL may be delivered: the vetted address to connect to."""

    url: str  # the URL with its host replaced by the vetted IP address
    host: str  # the original host: Host header and TLS server name
    ip: str


def check_url(url: str, *, allowed_hosts: frozenset[str] = frozenset()) -> Target:
    """Raise UnsafeWebhookURL unless `url` is an http(s) URL whose host resolves only to public
    addresses. Hosts in `allowed_hosts` (or any, with "*") may be private: for development,
    never in production. Blocks on DNS.

    Deliver to the returned `Target` (connect to its IP): resolving the name again at connect
    time would let a DNS record that changes in between (rebinding) bypass the check.
    """
    if len(url) > MAX_URL:
        raise UnsafeWebhookURL(f"longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError as err:
        raise UnsafeWebhookURL(f"is not a valid URL ({err})") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhookURL("must be an http:// or https:// URL")
    if not hostname:
        raise UnsafeWebhookURL("has no host")
    if parts.username or parts.password:
        raise UnsafeWebhookURL("must not carry credentials")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError) as err:
        raise UnsafeWebhookURL(f"host {hostname!r} does not resolve ({err})") from None
    allowed = hostname in allowed_hosts or "*" in allowed_hosts
    ips = [ipaddress.ip_address(info[4][0]) for info in infos]
    for ip in ips:
        why = _blocked(ip)
        if why and not allowed:
            raise UnsafeWebhookURL(
                f"host {hostname!r} resolves to {ip}, a {why} address; webhooks only go "
                "to public addresses"
            )
    ip = ips[0]
    netloc = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    return Target(url=urlunsplit(parts._replace(netloc=netloc)), host=hostname, ip=str(ip))
