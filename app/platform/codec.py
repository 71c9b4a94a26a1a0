"""Payload encryption: AES-256-GCM with a key id in each payload, so keys can rotate.

Workflow inputs hold addresses and payment ids; with a key configured, Temporal stores them
encrypted, and only holders of the key (workers, API, the codec endpoint for the UI) read
them. New payloads use the active key; old payloads name the key they were sealed with,
so a retired key stays usable for decoding until its histories expire.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
_NONCE_BYTES = 12


class CodecConfigError(ValueError):
    """Keys that cannot be used (wrong length, bad base64, unknown active key id)."""


def parse_keys(spec: str) -> dict[str, bytes]:
    """`kid1:base64key,kid2:base64key` -> {kid: 32-byte key}."""
    keys: dict[str, bytes] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kid, sep, b64 = part.partition(":")
        if not sep or not kid:
            raise CodecConfigError("encryption keys must look like 'key-id:base64key'")
        try:
            key = base64.b64decode(b64, validate=True)
        except ValueError:
            raise CodecConfigError(f"encryption key {kid!r} is not valid base64") from None
        if len(key) != 32:
            raise CodecConfigError(f"encryption key {kid!r} must be 32 bytes (AES-256)")
        keys[kid] = key
    return keys


def load_keys(spec: str = "", key_file: Path | None = None) -> dict[str, bytes]:
    """Keys from a file (same format, one or more lines) and/or the settings string."""
    text = spec
    if key_file is not None:
        text = ",".join([key_file.read_text().replace("\n", ","), spec])
    return parse_keys(text)


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: dict[str, bytes], active_key_id: str) -> None:
        if active_key_id not in keys:
            raise CodecConfigError(f"active encryption key {active_key_id!r} is not configured")
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self._active = active_key_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            kid = self._active.encode()
            sealed = self._aead[self._active].encrypt(nonce, p.SerializeToString(), kid)
            out.append(
                Payload(
                    metadata={"encoding": ENCODING, "encryption-key-id": kid},
                    data=nonce + sealed,
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)  # written before encryption was turned on
                continue
            kid = p.metadata.get("encryption-key-id", b"").decode()
            aead = self._aead.get(kid)
            if aead is None:
                raise CodecConfigError(f"payload sealed with unknown key id {kid!r}")
            plain = aead.decrypt(p.data[:_NONCE_BYTES], p.data[_NONCE_BYTES:], kid.encode())
            decoded = Payload()
            decoded.ParseFromString(plain)
            out.append(decoded)
        return out
