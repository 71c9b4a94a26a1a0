"""Temporal remote codec endpoint: `POST /codec/decode` and `POST /codec/encode`.

With PAYLOAD_KEYS set, workflow inputs and results are stored in Temporal sealed with
AES-256-GCM (app/codec.py). The Temporal Web UI and the `temporal` CLI cannot read them on
their own; they send the payloads here (Temporal's remote codec protocol: proto3 JSON
`{"payloads": [{"metadata": {...base64...}, "data": "base64"}]}` in and out, the
operation being the last path segment) and show what comes back.

- decode needs the `viewer` role: it reveals addresses and payment ids, like GET
  /orders/{id}/status does;
- encode needs `operator`: it produces input for workflows (`temporal workflow signal`,
  start from the UI), an operator's act.

Without keys configured the codec is the identity (payloads are plain JSON already).
A payload that cannot be decoded (unknown key id, tampered or truncated ciphertext) is a
400, as the protocol specifies; a body that is not Payloads JSON is a 422 like everywhere
else in this API.

The Web UI calls the endpoint from the browser, so it needs CORS: `CodecCorsMiddleware`
answers preflights and adds the CORS headers on /codec only, for the origins in
CODEC_CORS_ORIGINS (default: the origin of TEMPORAL_UI_URL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from fastapi.types import DecoratedCallable
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from app.api.deps import AppSettings, Operator, Viewer, error_responses, kept_on_app
from app.api.errors import error_response
from app.api.schemas import ErrorResponse
from app.platform.codec import CodecConfigError
from app.platform.settings import Settings
from app.platform.temporal import data_converter

PREFIX = "/codec"
# What the Web UI sends (X-Namespace always; Authorization with "pass access token")
# and what the CLI sends (--codec-auth / --codec-header).
ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-API-Key", "X-Namespace"]

router = APIRouter(prefix=PREFIX, tags=["codec"])


# Base64 as proto3 JSON writes bytes (standard or URL-safe alphabet, padding optional):
# checked here, so the schema says what is accepted (the protobuf parser itself skips
# characters outside the alphabet and refuses some lengths).
BASE64 = Annotated[
    str,
    Field(pattern=r"^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}(?:==)?|[A-Za-z0-9+/_-]{3}=?)?$"),
]


class PayloadJson(BaseModel):
    """One `temporal.api.common.v1.Payload` in proto3 JSON (bytes as base64): what the
    Web UI and the CLI send. Other fields are refused (422)."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, BASE64] = Field(
        default_factory=dict, description="Metadata values, base64", examples=[{}]
    )
    data: BASE64 = Field(default="", description="Payload bytes, base64")


class PayloadsJson(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "payloads": [
                        {
                            "metadata": {"encoding": "anNvbi9wbGFpbg=="},
                            "data": "eyJvcmRlcl9pZCI6ICJvcmRlci0xMjMifQ==",
                        }
                    ]
                }
            ]
        },
    )

    payloads: list[PayloadJson]


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A payload cannot be decoded"},
    **error_responses(401, 403, 413, 422, 500),
}


class _Codecs:
    """The app's payload codec, built once from its settings (None: no keys)."""

    def __init__(self) -> None:
        self._built: tuple[Settings, PayloadCodec | None] | None = None

    def of(self, settings: Settings) -> PayloadCodec | None:
        if self._built is None or self._built[0] is not settings:
            self._built = (settings, data_converter(settings).payload_codec)
        return self._built[1]


Codecs = Annotated[_Codecs, Depends(kept_on_app("payload_codecs", _Codecs))]


def _operation(path: str, summary: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    return router.post(path, summary=summary, response_model=PayloadsJson, responses=_RESPONSES)


class _InvalidPayload(Exception):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.field = f"payloads[{index}]"


def _parse(body: PayloadsJson) -> list[Payload]:
    out = []
    for n, item in enumerate(body.payloads):
        try:
            out.append(json_format.ParseDict(item.model_dump(), Payload()))
        except json_format.ParseError as err:
            raise _InvalidPayload(n, str(err)) from None
    return out


def _answer(payloads: Sequence[Payload]) -> JSONResponse:
    return JSONResponse({"payloads": [json_format.MessageToDict(p) for p in payloads]})


async def _convert(
    body: PayloadsJson, codecs: _Codecs, settings: Settings, *, decode: bool
) -> JSONResponse:
    try:
        payloads = _parse(body)
    except _InvalidPayload as err:
        return error_response(
            422, "invalid_input", f"{err.field} is not a valid payload", err.field
        )
    # Built here, after the body is judged: a key that cannot be loaded is a 500 then.
    codec = codecs.of(settings)
    if codec is None:
        return _answer(payloads)
    try:
        out = await (codec.decode(payloads) if decode else codec.encode(payloads))
    except (CodecConfigError, InvalidTag, DecodeError, ValueError) as err:
        # Which payload and why stays vague on purpose: no oracle for crafted ciphertext.
        reason = str(err) if isinstance(err, CodecConfigError) else "authentication failed"
        return error_response(
            400, "undecodable_payload", f"a payload cannot be decoded: {reason}", None
        )
    return _answer(out)


@_operation("/decode", "Decode payloads (Temporal remote codec)")
async def decode(
    body: PayloadsJson, _caller: Viewer, settings: AppSettings, codecs: Codecs
) -> JSONResponse:
    """Decrypt payloads sealed with PAYLOAD_KEYS, for the Temporal Web UI and CLI
    (`--codec-endpoint http://HOST:PORT/codec`). Payloads that are not encrypted come
    back unchanged."""
    return await _convert(body, codecs, settings, decode=True)


@_operation("/encode", "Encode payloads (Temporal remote codec)")
async def encode(
    body: PayloadsJson, _caller: Operator, settings: AppSettings, codecs: Codecs
) -> JSONResponse:
    """Seal payloads with the active key, as workers and the API do (used by the CLI and
    the UI to send input to workflows)."""
    return await _convert(body, codecs, settings, decode=False)


# --- CORS for the Web UI ---------------------------------------------------------------


def cors_origins(settings: Settings) -> list[str]:
    """CODEC_CORS_ORIGINS, or the origin of TEMPORAL_UI_URL when it is empty."""
    configured = [o.strip().rstrip("/") for o in settings.codec_cors_origins.split(",")]
    origins = [o for o in configured if o]
    if origins:
        return origins
    url = urlsplit(settings.temporal_ui_url)
    return [f"{url.scheme}://{url.netloc}"] if url.scheme and url.netloc else []


class CodecCorsMiddleware:
    """Starlette's CORS handling, on /codec only: the rest of the API is not meant to be
    called from other origins' pages."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["POST"],
            allow_headers=ALLOWED_HEADERS,
            # The UI's "include cross-origin credentials" option sends cookies along; never
            # for any origin (`*`, which production refuses), or every site could use them.
            allow_credentials="*" not in origins,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == PREFIX or path.startswith(PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
