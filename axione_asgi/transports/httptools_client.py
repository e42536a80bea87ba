"""A lean HTTP/1.1 upstream client: asyncio protocols, httptools' parser, a keep-alive pool.

A gateway makes one kind of call: POST a JSON body to a fixed origin and read
the answer, whole or as it arrives. aiohttp builds a request object, a URL, a
header multidict, a timer set and a response object for each call; under load
that was a quarter of the gateway's CPU. This client does that one call with
the parser uvicorn itself uses (httptools, installed with `uvicorn[standard]`):
the request head is prepared once per path, the answer is parsed straight
from `data_received`, and a connection goes back to the pool when its answer
is complete.

It is used only when a provider asks for it (`transport = "httptools"`):
the default is aiohttp, a well-kept client, and this one is the opt-in for
the last bit of CPU per request.

What it does not do, by design: proxies, redirects, cookies, compression
(it asks for `Accept-Encoding: identity`), HTTP/2. Choose
`transport = "aiohttp"` or `"httpx"` for an upstream that needs them.

What it does about an upstream that misbehaves:

- A request goes out once. It is sent again (once, on another connection)
  only when it provably never reached the server: a pooled connection is
  checked before it is written to, and one whose peer has closed it, reset
  it or sent anything since its last answer is dropped unwritten; and on a
  plain asyncio socket, a write whose first `send()` failed left no byte.
  A connection that closes after the request was written is an error, even
  on a pooled connection: the server may have read the request and acted
  on it (the keep-alive race this leaves is made rare by closing idle
  connections after `_IDLE_S`, or sooner when the server's `Keep-Alive:
  timeout=N` says it closes them sooner).
- Interim answers (`100 Continue`, `103 Early Hints`) are skipped; an
  unasked `101 Switching Protocols` is an error.
- Bytes after a complete answer (a second answer in the same packet, or
  any later) are no part of it: the connection is closed, never reused.
- Folded header lines (obs-fold, RFC 9112 5.2) are unfolded into one SP.
- An answer's heads (interim ones included) may hold `_MAX_HEAD_BYTES`
  (64 KiB) in all, and each `_MAX_HEADERS` (100) header fields; past that
  the call fails with an `UpstreamTransportError`, having buffered no more.
"""

from __future__ import annotations

import asyncio
import collections
import re
import select
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

import httptools

from axione_asgi.transports import (
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamTimeoutError,
    UpstreamTLSError,
    UpstreamTooLargeError,
    UpstreamTransportError,
    tls_context,
    tls_error,
)

__all__ = ["HttptoolsUpstream"]

# Reading pauses while this much of a streamed answer waits to be consumed.
_HIGH_WATER = 1 << 20
# An idle connection older than this is closed rather than reused. A server
# that closes one sooner (uvicorn after 5 s) is seen closing it before it is
# written to; one that closes it just as a request leaves fails that request
# (it is not sent again: the server may have read it). A server's announced
# `Keep-Alive: timeout=N` shortens this to N - 1 s.
_IDLE_S = 30.0
# Bounds on an answer's heads: bytes in all (interim heads included), and
# header fields (distinct names; a repeated one holds its last value) each.
_MAX_HEAD_BYTES = 64 * 1024
_MAX_HEADERS = 100

_HEAD_END = b"\r\n\r\n"
_OBS_FOLD = re.compile(rb"\r\n[ \t]+")
_KEEP_ALIVE_TIMEOUT = re.compile(r"(?:^|[,;\s])timeout\s*=\s*(\d+)", re.IGNORECASE)


class _BadAnswer(UpstreamTransportError):
    """An answer this client refuses (too large a head, too many headers, an unasked upgrade)."""


class _Unsolicited(Exception):
    """A second answer's head arrived after the answer was complete."""


def _folded(data: bytes, start: int, end: int) -> bool:
    """Whether `data[start:end]` holds a folded header line (CRLF, then SP or HTAB)."""
    return data.find(b"\r\n ", start, end) >= 0 or data.find(b"\r\n\t", start, end) >= 0


def _readable(fd: int) -> bool:
    """Whether `fd` has anything to read (bytes, an end, an error), without waiting."""
    if _poll is not None:
        poller = _poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # pragma: no cover - Windows
    return bool(readable)


_poll = getattr(select, "poll", None)


class _Exchange:
    """One request's answer as the parser delivers it."""

    __slots__ = (
        "body",
        "buffered",
        "complete",
        "error",
        "framed",
        "head_bytes",
        "headers",
        "headers_done",
        "interim",
        "keep_alive",
        "max_body",
        "status",
        "streaming",
        "unsent",
        "waiter",
    )

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        # Inside an interim (1xx) answer's head, which is skipped.
        self.interim = False
        # Bytes of the answer's heads so far, interim ones included.
        self.head_bytes = 0
        # Provably never sent: the connection was closing before the write,
        # or the write's first send() failed (no byte left).
        self.unsent = False
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        # A whole answer's bound (0: none); a streamed one is read as it comes.
        self.max_body = 0
        # Read as it arrives: only then may reading pause for a slow reader.
        self.streaming = False
        self.complete = False
        self.keep_alive = False
        # Whether the body's end is marked (length or chunked), not the close.
        self.framed = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self.idle_since = 0.0
        # How long it may stay idle (the server's Keep-Alive timeout may shorten it).
        self.idle_limit = _IDLE_S
        self.paused = False
        # An answer head begun in an earlier read and not yet parsed.
        self.head = bytearray()
        # Whether a write that fails does so in its first send(), before any
        # byte left: asyncio's own socket transport (not TLS's, not uvloop's).
        self.send_fails_whole = False
        # The client's bound on a whole answer (0: none).
        self.max_body = 0

    # -- asyncio.Protocol ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.send_fails_whole = type(transport).__module__ == "asyncio.selector_events"

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or exchange.complete:
            # Bytes nobody asked for: the connection cannot be trusted again.
            self.close()
            return
        try:
            if exchange.headers_done:
                self.parser.feed_data(data)
            else:
                self._feed_head(exchange, data)
        except _BadAnswer as exc:
            self._fail(exc)
            self.close()
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            cause = exc.__context__  # what a callback raised
            if isinstance(cause, _BadAnswer):
                self._fail(cause)
            elif not isinstance(cause, _Unsolicited):  # else the answer is whole already
                self._fail(UpstreamTransportError(f"invalid HTTP answer ({type(exc).__name__})"))
            self.close()

    def _feed_head(self, exchange: _Exchange, data: bytes) -> None:
        """Parse the answer's heads each whole, bounded and unfolded, then what follows."""
        head = self.head
        if not head:
            # Most often one read holds a whole final head (not 1xx), and then
            # body: parsed in one call. llhttp refuses a folded line; only then
            # is the head unfolded and parsed again, by a new parser.
            end = data.find(_HEAD_END)
            if 0 <= end <= _MAX_HEAD_BYTES - 4 - exchange.head_bytes and data[9:10] != b"1":
                try:
                    self.parser.feed_data(data)
                    return
                except httptools.HttpParserError:
                    if exchange.headers_done or not _folded(data, 0, end):
                        raise
                self.parser = httptools.HttpResponseParser(self)
                exchange.headers.clear()
        else:  # a head begun in an earlier read: is it whole now?
            scanned = max(0, len(head) - 3)
            head += data
            if head.find(_HEAD_END, scanned) < 0:
                if exchange.head_bytes + len(head) > _MAX_HEAD_BYTES:
                    raise _BadAnswer(_too_large())
                return
            data = bytes(head)
            head.clear()
        view = memoryview(data)
        start = 0
        while not exchange.headers_done:
            end = data.find(_HEAD_END, start)
            if end < 0:
                if exchange.head_bytes + len(data) - start > _MAX_HEAD_BYTES:
                    raise _BadAnswer(_too_large())
                head += view[start:]
                return
            end += 4
            exchange.head_bytes += end - start
            if exchange.head_bytes > _MAX_HEAD_BYTES:
                raise _BadAnswer(_too_large())
            piece = view[start:end]
            self.parser.feed_data(
                _OBS_FOLD.sub(b" ", piece) if _folded(data, start, end) else piece
            )
            start = end
        if start < len(data):
            self.parser.feed_data(view[start:] if start else data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is None or exchange.complete:
            return
        if exchange.headers_done and not exchange.framed and exc is None:
            # A body delimited by the connection's end: this is its end.
            exchange.complete = True
            exchange.wake()
            return
        self._fail(UpstreamTransportError("the upstream closed the connection"))

    # -- httptools callbacks -------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        if exchange.headers_done:
            return  # a chunked answer's trailer: not one of its headers
        exchange.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        if exchange.complete:
            raise _Unsolicited  # a second answer: it must not touch the first
        if len(exchange.headers) > _MAX_HEADERS:
            raise _BadAnswer(f"the upstream's answer has more than {_MAX_HEADERS} headers")
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                raise _BadAnswer("the upstream switched protocols unasked (101)")
            # An interim answer (100 Continue, 103 Early Hints): not the answer.
            exchange.headers.clear()
            exchange.interim = True
            return
        exchange.status = status
        headers = exchange.headers
        exchange.framed = "content-length" in headers or "transfer-encoding" in headers
        exchange.headers_done = True
        exchange.wake()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.body.append(body)
        exchange.buffered += len(body)
        if exchange.max_body and not exchange.streaming and exchange.buffered > exchange.max_body:
            # Not read further: the connection goes, and with it the rest of the answer.
            self._fail(UpstreamTooLargeError(f"the answer is over {exchange.max_body} bytes"))
            self.close()
            return
        if (
            exchange.streaming
            and exchange.buffered > _HIGH_WATER
            and not self.paused
            and self.transport is not None
        ):
            self.paused = True
            self.transport.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        if exchange.interim:
            exchange.interim = False
            return
        exchange.keep_alive = self.parser.should_keep_alive()
        exchange.complete = True
        exchange.wake()

    # -- use -----------------------------------------------------------------
    def start(self, request: bytes) -> _Exchange:
        transport = self.transport
        assert transport is not None
        exchange = self.exchange = _Exchange()
        exchange.max_body = self.max_body
        self.head.clear()
        if transport.is_closing():
            exchange.unsent = True  # a closing transport writes nothing
            return exchange
        whole = self.send_fails_whole and not transport.get_write_buffer_size()
        transport.write(request)
        if whole and transport.is_closing():
            # The first send() failed (a reset): asyncio sent nothing and gave up.
            exchange.unsent = True
        return exchange

    def quiet(self) -> bool:
        """Whether an idle connection is still open and its peer has sent nothing since.

        A peer that closed it (a FIN), reset it or sent bytes unasked makes
        it readable, before the loop may have read that: such a connection
        is not written to.
        """
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        sock = transport.get_extra_info("socket")
        try:
            fd = sock.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        return fd >= 0 and not _readable(fd)

    def consumed(self, exchange: _Exchange, size: int) -> None:
        exchange.buffered -= size
        if self.paused and exchange.buffered <= _HIGH_WATER // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def reusable(self) -> bool:
        exchange = self.exchange
        return (
            not self.closed
            and exchange is not None
            and exchange.complete
            and exchange.keep_alive
            and exchange.error is None
        )

    def _fail(self, error: BaseException) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.error is None and not exchange.complete:
            exchange.error = error
            exchange.wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Stream:
    """An answer whose body is read as it arrives (`UpstreamStream`)."""

    def __init__(self, client: HttptoolsUpstream, conn: _Connection, exchange: _Exchange) -> None:
        self._client = client
        self._conn = conn
        self._exchange = exchange
        self.status = exchange.status
        self.headers: Mapping[str, str] = exchange.headers

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        exchange, conn, client = self._exchange, self._conn, self._client
        body = exchange.body
        while True:
            if body:
                if len(body) == 1:
                    data = body.popleft()
                else:
                    data = b"".join(body)
                    body.clear()
                conn.consumed(exchange, len(data))
                yield data
                continue
            if exchange.complete:
                return
            await client._wait(exchange)


class HttptoolsUpstream:
    """One origin's keep-alive pool of HTTP/1.1 connections (`UpstreamClient`).

    `timeout_s` bounds each wait for the upstream's next bytes (as aiohttp's
    `sock_read`), `connect_timeout_s` each connection attempt. At most
    `max_connections` are open at once; further calls wait for one.
    """

    def __init__(
        self,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int,
        ca_file: str | None = None,
        max_response_bytes: int = 0,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        self._host = url.hostname
        self._tls = url.scheme == "https"
        self._port = url.port or (443 if self._tls else 80)
        self._prefix = url.path.rstrip("/")
        default_port = self._port == (443 if self._tls else 80)
        host_header = url.hostname if default_port else f"{url.hostname}:{self._port}"
        if ":" in url.hostname and not default_port:  # an IPv6 literal
            host_header = f"[{url.hostname}]:{self._port}"
        # No Accept-Encoding at all would allow any coding (RFC 9110): ask for none.
        self._fixed_lines = [
            f"Host: {host_header}",
            "Content-Type: application/json",
            "Accept-Encoding: identity",
        ]
        self._headers = _checked_headers(headers)
        self._head_tail = _head_lines(self._fixed_lines, self._headers)
        self._heads: dict[str, bytes] = {}
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max(1, max_connections)
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None
        self._ca_file = ca_file
        self._max_body = max_response_bytes
        self._tls_logged: set[str] = set()
        self._closed = False

    # -- the UpstreamClient interface ----------------------------------------
    async def post(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        conn, exchange = await self._send(path, body, params, headers)
        try:
            while not exchange.complete:
                await self._wait(exchange)
        except BaseException:
            self._release(conn, reuse=False)
            raise
        chunks = exchange.body
        content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._release(conn, reuse=conn.reusable())
        return UpstreamResponse(exchange.status, exchange.headers, content)

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[_Stream]:
        conn, exchange = await self._send(path, body, params, headers)
        exchange.streaming = True
        try:
            yield _Stream(self, conn, exchange)
        finally:
            # A fully read answer gives its connection back; a half-read one
            # (a cancelled stream) is closed, so the upstream stops at once.
            self._release(conn, reuse=conn.reusable() and not exchange.body)

    async def aclose(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError("client closed"))
        self._waiters.clear()

    @property
    def is_closed(self) -> bool:
        return self._closed

    # -- requests ------------------------------------------------------------
    def _request(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        target = self._prefix + path
        if params:
            target = f"{target}?{urlencode(params)}"
        if any(c in target for c in " \r\n"):
            raise UpstreamTransportError("invalid request path")
        if headers:
            # Per-request headers (a client's own, on pass-through) replace the
            # pool's of the same name; such heads are not cached.
            try:
                extra = _checked_headers(headers)
            except ValueError as exc:
                raise UpstreamTransportError(str(exc)) from None
            names = {n.lower() for n in extra}
            merged = {n: v for n, v in self._headers.items() if n.lower() not in names}
            tail = _head_lines(self._fixed_lines, {**merged, **extra})
            head = f"POST {target} HTTP/1.1\r\n".encode("latin-1") + tail
            return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        cached = self._heads.get(target)
        if cached is not None:
            head = cached
        else:
            head = f"POST {target} HTTP/1.1\r\n".encode("latin-1") + self._head_tail
            if len(self._heads) < 1024:
                self._heads[target] = head
        return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)

    async def _send(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[_Connection, _Exchange]:
        """Send on a pooled connection and wait for the answer's head.

        Sent again, once, only when it provably never left (`_Exchange.unsent`);
        a connection that closes after the request went out fails the call.
        """
        request = self._request(path, body, params, headers)
        again = True
        while True:
            conn = await self._acquire()
            exchange = conn.start(request)
            if exchange.unsent:
                self._release(conn, reuse=False)
                if again:
                    again = False
                    continue
                raise UpstreamTransportError("the upstream closed the connection")
            try:
                while not exchange.headers_done:
                    await self._wait(exchange)
            except BaseException:
                self._release(conn, reuse=False)
                raise
            return conn, exchange

    async def _wait(self, exchange: _Exchange) -> None:
        """Until the parser delivers more of `exchange`, or the read timeout."""
        if exchange.error is not None:
            raise exchange.error
        waiter = exchange.waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._timeout_s):
                await waiter
        except TimeoutError:
            raise UpstreamTimeoutError("the upstream sent nothing in time") from None
        finally:
            exchange.waiter = None
        if exchange.error is not None:
            raise exchange.error

    # -- the pool ------------------------------------------------------------
    async def _acquire(self) -> _Connection:
        loop = asyncio.get_running_loop()
        now = loop.time()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < conn.idle_limit and conn.quiet():
                return conn
            conn.close()
            self._open -= 1
        while self._open >= self._max_connections:
            if self._closed:
                raise UpstreamConnectError("client closed")
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken and cancelled at once: pass the turn on
                waiter.cancel()
                raise
            if idle:
                conn = idle.pop()
                if loop.time() - conn.idle_since < conn.idle_limit and conn.quiet():
                    return conn
                conn.close()
                self._open -= 1
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self) -> _Connection:
        if self._closed:
            raise UpstreamConnectError("client closed")
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        try:
            if self._tls:
                kwargs = {"ssl": self._ssl_context(), "server_hostname": self._host}
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    _Connection, self._host, self._port, **kwargs
                )
        except TimeoutError:
            raise UpstreamTimeoutError("connecting to the upstream timed out") from None
        except OSError as exc:  # ssl.SSLError is one
            failed = tls_error(exc, f"{self._host}:{self._port}", self._tls_logged)
            raise (failed or UpstreamConnectError(type(exc).__name__)) from None
        except UpstreamTLSError as exc:  # the CA file cannot be read
            raise tls_error(exc, f"{self._host}:{self._port}", self._tls_logged) or exc from None
        conn.max_body = self._max_body
        return conn

    def _release(self, conn: _Connection, *, reuse: bool) -> None:
        exchange = conn.exchange
        conn.exchange = None if reuse else exchange
        if reuse and not self._closed:
            conn.idle_since = asyncio.get_running_loop().time()
            announced = exchange.headers.get("keep-alive") if exchange is not None else None
            if announced is not None:
                conn.idle_limit = _idle_limit(announced, conn.idle_limit)
            self._idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = tls_context(self._ca_file)
        return self._ssl


_FIXED = ("host", "content-length", "content-type", "accept-encoding")


def _too_large() -> str:
    return f"the upstream's answer head is larger than {_MAX_HEAD_BYTES} bytes"


def _idle_limit(keep_alive: str, current: float) -> float:
    """How long a connection may idle, given the server's `Keep-Alive` header.

    A second less than the server's `timeout=N`, so that a request does not
    leave just as the server closes the connection.
    """
    found = _KEEP_ALIVE_TIMEOUT.search(keep_alive)
    if found is None:
        return current
    return min(current, max(0.0, int(found.group(1)) - 1.0))


def _checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers the client may send as given: no line breaks, none of the fixed ones."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() in _FIXED:
            continue
        if any(c in f"{name}{value}" for c in "\r\n"):
            raise ValueError(f"header {name!r} holds a line break")
        kept[name] = value
    return kept


def _head_lines(fixed: list[str], headers: Mapping[str, str]) -> bytes:
    lines = [*fixed, *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")
