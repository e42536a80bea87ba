"""uvicorn's httptools protocol with the connection limits `[server]` sets (see standalone)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from axione_asgi.config import ServerConfig
from axione_asgi.errors import error_body

__all__ = ["GuardedHttpToolsProtocol"]


def _answer(status: int, phrase: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, its body SPEC's error JSON."""
    body = error_body(status, message, code)
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, phrase.encode(), len(body), body)
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the limits `[server]` sets and uvicorn lacks.

    A connection past `max_connections` is answered 503 and closed at once
    (uvicorn's `limit_concurrency` answers only once a request head is in,
    so idle connections piled up to the file-descriptor limit). A request
    head not complete `header_timeout_s` after the connection opened (its
    first request) or after its first byte (the next ones) is answered 408
    and closed; one still incomplete past `max_header_bytes` is answered 431
    and closed, before more of it is buffered. Neither parser uvicorn ships
    has a header timeout, and httptools no size limit.
    """

    # When a refused connection was last logged: a flood logs one line a minute.
    _refusal_logged: ClassVar[float] = -60.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ServerConfig,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._refused = False
        # Whether the bytes arriving belong to a request head, and how many did.
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            transport.write(
                _answer(503, "Service Unavailable", "Too many connections", "too_many_connections")
            )
            transport.close()
            now = time.monotonic()
            if now - GuardedHttpToolsProtocol._refusal_logged >= 60:
                GuardedHttpToolsProtocol._refusal_logged = now
                self.logger.warning(
                    "Refusing connections: %d are open, the limit ([server] max_connections)",
                    len(self.connections),
                )
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._close_head(
                431,
                "Request Header Fields Too Large",
                f"The request headers are over the limit of {self.limits.max_header_bytes} bytes",
                "request_headers_too_large",
            )

    # httptools' callbacks: where a head begins and ends.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what comes next is the next request's head

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._close_head(
                408,
                "Request Timeout",
                f"The request headers were not received within {self.limits.header_timeout_s:g}"
                " seconds",
                "request_timeout",
            )

    def _close_head(self, status: int, phrase: str, message: str, code: str) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        # Answered, unless nothing of a head came (an idle connection) or a
        # response is under way on the connection.
        if self._head_bytes and (self.cycle is None or self.cycle.response_complete):
            transport.write(_answer(status, phrase, message, code))
        transport.close()
