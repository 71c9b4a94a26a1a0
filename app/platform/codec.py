"""Payload encryption: AES-256-GCM with a key id in each payload, so keys can rotate.

Workflow inputs hold addresses and payment ids; with a key configured, Temporal stores them
encrypted, and only holders of the key (workers, API, the codec endpoint for the UI) read
them. New payloads use the active key; old payloads name the key they were sealed with,
so a retired key stays usable for decoding until its histories expire.

Failures are sealed too (`SealedFailures`): their message and stack trace travel in the
failure's encoded attributes, through the same codec, and Temporal's database keeps only
"Encoded failure" (a refusal names payment ids and orders). `open_failure` unseals a
failure read raw from Temporal (describe, history) before it is shown.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

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


# The failure converter of an encrypted data converter: message and stack trace go into
# the encoded attributes, which the payload codec seals.
SealedFailures = DefaultFailureConverterWithEncodedAttributes


async def open_failure(converter: DataConverter, failure: Failure) -> None:
    """Unseal a failure read raw from Temporal, in place (its causes too): payloads
    decoded, message and stack trace back from the encoded attributes. A failure that was
    never sealed is left as it is; one this process cannot open keeps "Encoded failure"."""
    if converter.payload_codec is not None:
        try:
            await converter.payload_codec.decode_failure(failure)
        except Exception:
            return
    node: Failure | None = failure
    while node is not None:
        if node.HasField("encoded_attributes"):
            try:
                [attrs] = converter.payload_converter.from_payloads([node.encoded_attributes])
            except Exception:
                attrs = None
            if isinstance(attrs, dict):
                if isinstance(attrs.get("message"), str):
                    node.message = attrs["message"]
                if isinstance(attrs.get("stack_trace"), str):
                    node.stack_trace = attrs["stack_trace"]
        node = node.cause if node.HasField("cause") else None
