"""ErrorFormatMiddleware: every error below becomes SPEC's JSON; stamps x-request-id."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from itertools import chain

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axione_asgi.errors import (
    OPENAI_ENVELOPE,
    AxioneError,
    ErrorEnvelope,
    InvalidRequest,
    status_error,
)
from axione_asgi.openai_types import new_id
from axione_asgi.scope import DIALECT, REQUEST_ID, route_path, state_of

__all__ = ["MAX_HEADER_BYTES", "ErrorFormatMiddleware", "envelope_of", "send_error"]

logger = logging.getLogger("axione")

_JSON = b"application/json"
# Request headers larger than this, names and values together, are refused with 431.
MAX_HEADER_BYTES = 64 * 1024
_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    422: "invalid_value",
}


def envelope_of(scope: Scope | None) -> ErrorEnvelope:
    """The error envelope of the dialect of the route called (OpenAI's by default)."""
    if scope is None:
        return OPENAI_ENVELOPE
    envelope: ErrorEnvelope | None = state_of(scope).get(DIALECT)
    return envelope or OPENAI_ENVELOPE


async def send_error(
    send: Send,
    exc: AxioneError,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    *,
    scope: Scope | None = None,
) -> None:
    """Send `exc` as a whole JSON response, in the dialect of the route `scope` called."""
    envelope = envelope_of(scope)
    status = exc.status
    if exc.native is not None and exc.native[0] == envelope.dialect:
        _, status, body = exc.native  # the upstream's own answer, on pass-through
    else:
        body = envelope.render(exc)
    headers = [
        (b"content-type", _JSON),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in exc.headers.items()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ErrorFormatMiddleware:
    """The outermost layer: no error leaves the gateway in any other shape.

    Raised `AxioneError`s become their JSON; unexpected exceptions become a 500
    `api_error` naming the request id (the traceback goes to the log only);
    error responses from below that are not JSON (Starlette's 404 and 405, a
    host route's plain-text error) are rewritten into SPEC's JSON.

    `dialects` maps route paths (relative to the app's mount point) to the
    error envelope of the client dialect served there; the layers below read
    it from the scope (`envelope_of`), so every error a client of that route
    sees, a 401 included, is in its own dialect. Other paths get OpenAI's.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        dialects: Mapping[str, ErrorEnvelope] | None = None,
    ) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.dialects = dict(dialects or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        if self.dialects:
            envelope = self.dialects.get(route_path(scope))
            if envelope is not None:
                state[DIALECT] = envelope
        if REQUEST_ID in state:
            # An outer ErrorFormatMiddleware (a host's, or the standalone
            # server's) already owns this request.
            await self.app(scope, receive, send)
            return
        request_id = new_id("req").replace("-", "_", 1)
        state[REQUEST_ID] = request_id
        stamp = (b"x-request-id", request_id.encode())
        if self.max_header_bytes and _header_bytes(scope) > self.max_header_bytes:
            # uvicorn's httptools parser sets no limit of its own; Envoy's is 60 KiB.
            await send_error(send, _headers_too_large(self.max_header_bytes), [stamp], scope=scope)
            return
        started = False
        held: Message | None = None  # a non-JSON error start, kept until its body is read
        held_body = bytearray()

        async def send_wrapper(message: Message) -> None:
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                headers = message.setdefault("headers", [])
                if message["status"] >= 400 and not _is_json(headers):
                    held = message
                    return
                headers.append(stamp)
                await send(message)
            elif held is not None and message["type"] == "http.response.body":
                held_body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_rewritten(send, held, bytes(held_body), scope, stamp)
            else:
                await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except AxioneError as exc:
            if started:
                raise
            await send_error(send, exc, [stamp], scope=scope)
        except ClientDisconnect:
            # The client left while its body was read: nothing to log, no one
            # to answer. The 499 (dropped by the server, as a route's own 499
            # is) tells the layers outside why the request ended.
            if not started:
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.start", "status": 499, "headers": [stamp]})
                    await send({"type": "http.response.body", "body": b""})
        except Exception:
            logger.exception("unhandled error in request %s", request_id)
            if started:
                raise
            failure = AxioneError(f"The gateway failed unexpectedly; request id {request_id}")
            await send_error(send, failure, [stamp], scope=scope)


def _header_bytes(scope: Scope) -> int:
    # Summed in C: this runs on every request.
    return sum(map(len, chain.from_iterable(scope.get("headers", ()))))


def _headers_too_large(limit: int) -> AxioneError:
    return InvalidRequest(
        f"The request headers are over the limit of {limit} bytes",
        code="request_headers_too_large",
        status=431,
    )


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and _JSON in v for k, v in headers)


async def _send_rewritten(
    send: Send, start: Message, body: bytes, scope: Scope, stamp: tuple[bytes, bytes]
) -> None:
    status: int = start["status"]
    if status == 404:
        message = f"Unknown path: {scope.get('method', '')} {scope.get('path', '')}"
    elif status == 405:
        message = f"Method {scope.get('method', '')} is not allowed on {scope.get('path', '')}"
    else:
        message = body[:500].decode("utf-8", "replace").strip() or f"HTTP {status}"
    code = _CODES.get(status, "error" if status < 500 else "api_error")
    new_body = envelope_of(scope).render(status_error(status, message, code))
    kept = [
        (k, v)
        for k, v in start.get("headers", [])
        if k.lower() not in (b"content-type", b"content-length")
    ]
    headers = [
        *kept,
        (b"content-type", _JSON),
        (b"content-length", str(len(new_body)).encode()),
        stamp,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": new_body})
