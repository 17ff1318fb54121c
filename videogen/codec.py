"""Encrypted Temporal payloads: what Temporal stores of a job is ciphertext.

Every client and worker of videogen encodes payloads with `EncryptionCodec` (AES-256-GCM): the
workflow and activity inputs and results, the memo, signals, queries, heartbeat details, and
failures (their messages and stack traces travel as encoded attributes, so the server and the
Web UI see "Encoded failure"). A prompt never reaches Temporal's database in the clear; search
attributes stay plaintext and hold no prompt (docs/security.md).

Keys come from `VIDEOGEN_PAYLOAD_KEYS`: `id:base64-key` pairs, comma-separated, each key 32
random bytes (`videogen key payload` makes one). The first encrypts; all of them decrypt, so a
rotation adds the new key, then moves it first, and keeps the old ones for as long as jobs
written with them are kept (docs/security.md). Each encrypted payload names its key id in its
metadata, and the id is bound to the ciphertext (as associated data), so a payload cannot be
passed off under another key.

A payload that is not encrypted is passed through as it is: histories recorded before
encryption was turned on still replay and read.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The embedded stack's key: public, so refused outside it (Settings.development_secrets).
DEV_KEY_ID = "dev"
DEV_PAYLOAD_KEYS = (
    f"{DEV_KEY_ID}:"
    + base64.b64encode(hashlib.sha256(b"videogen development payload key").digest()).decode()
)
SETTING = "VIDEOGEN_PAYLOAD_KEYS"


class PayloadKeyError(ValueError):
    """A payload that cannot be decrypted with the keys given: unknown key id, or tampered."""


@dataclass(frozen=True)
class PayloadKeys:
    """The keys by id; `active` is the one new payloads are encrypted with."""

    keys: dict[str, bytes]
    active: str

    @classmethod
    def parse(cls, text: str) -> PayloadKeys:
        """`id:base64-key,...` (the first one active); ValueError saying what is wrong."""
        keys: dict[str, bytes] = {}
        for n, item in enumerate(part.strip() for part in text.split(",")):
            kid, sep, encoded = item.partition(":")
            where = f"{SETTING}, entry {n + 1}"
            if not sep or not _KEY_ID.fullmatch(kid):
                raise ValueError(
                    f"{where}: expected id:base64-key, the id of 1-64 letters, digits, "
                    "'_', '.' or '-' (`videogen key payload` makes one)"
                )
            if kid in keys:
                raise ValueError(f"{where}: key id {kid!r} appears twice")
            try:
                key = base64.b64decode(encoded, validate=True)
            except ValueError:
                raise ValueError(f"{where} ({kid}): the key is not valid base64") from None
            if len(key) != KEY_BYTES:
                raise ValueError(
                    f"{where} ({kid}): the key is {len(key)} bytes; AES-256 needs {KEY_BYTES}"
                )
            keys[kid] = key
        return cls(keys, next(iter(keys)))


def new_key(kid: str) -> str:
    """A fresh `id:base64-key` entry for VIDEOGEN_PAYLOAD_KEYS."""
    if not _KEY_ID.fullmatch(kid):
        raise ValueError("key id: 1-64 letters, digits, '_', '.' or '-'")
    return f"{kid}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole payload (its metadata and data), a fresh nonce each."""

    def __init__(self, keys: PayloadKeys) -> None:
        self._keys = keys
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        kid = self._keys.active
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(nonce, payload.SerializeToString(), kid.encode())
        return Payload(metadata={"encoding": ENCODING, KEY_ID: kid.encode()}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before encryption was on
        kid = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise PayloadKeyError(
                f"payload encrypted with key id {kid!r}, which {SETTING} does not hold "
                f"(it holds {', '.join(self._ciphers)}): add that key back, after the active one"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            return Payload.FromString(cipher.decrypt(nonce, sealed, kid.encode()))
        except InvalidTag:
            raise PayloadKeyError(
                f"payload under key id {kid!r} does not decrypt: altered, or another key of that id"
            ) from None


def key_ids(messages: Iterable[Message]) -> set[str]:
    """The key ids of every encrypted payload in these protobuf messages (history events, say),
    wherever in them it is."""
    found: set[str] = set()
    stack: list[Message] = list(messages)
    while stack:
        message = stack.pop()
        if isinstance(message, Payload):
            if message.metadata.get("encoding") == ENCODING:
                found.add(message.metadata.get(KEY_ID, b"").decode(errors="replace"))
            continue
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            if field.message_type.GetOptions().map_entry:
                stack.extend(v for v in value.values() if isinstance(v, Message))
            elif field.is_repeated:
                stack.extend(value)
            else:
                stack.append(value)
    return found


def data_converter(keys: PayloadKeys) -> DataConverter:
    """The SDK's default converter with the codec, and failures carried encoded."""
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
