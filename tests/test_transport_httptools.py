"""HttptoolsUpstream against real loopback servers: framing, keep-alive pool, errors, TLS.

Every test talks to a raw `asyncio.start_server` HTTP/1.1 server on 127.0.0.1,
scripted per test (`serve(script)`): the script reads the requests and writes
whatever bytes the test needs, and the server records the connections it
accepts, how many are open at once, and the requests it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from axione_asgi import transports
from axione_asgi.transports import (
    UpstreamConnectError,
    UpstreamTimeoutError,
    UpstreamTLSError,
    UpstreamTransportError,
    auto_transport,
    open_upstream,
)
from axione_asgi.transports import httptools_client as httptools_module
from axione_asgi.transports.aiohttp_client import AiohttpUpstream
from axione_asgi.transports.httptools_client import HttptoolsUpstream
from axione_asgi.transports.httpx_client import HttpxUpstream

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

JSON_OK = b'{"ok":true}'


# -- a scriptable raw HTTP/1.1 server ------------------------------------------


@dataclass
class Request:
    """One request as it arrived on the wire."""

    request_line: str
    headers: list[tuple[str, str]]  # in order, names as sent
    body: bytes
    raw: bytes

    @property
    def target(self) -> str:
        return self.request_line.split(" ")[1]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class Peer:
    """The server's side of one accepted connection."""

    def __init__(
        self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.index = len(server.peers)
        self.requests: list[Request] = []
        self.eof = asyncio.Event()  # set once the client closed this connection

    async def read_request(self) -> Request | None:
        """The next request, or None once the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof.set()
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        headers = [(n.strip(), v.strip()) for n, v in (line.split(":", 1) for line in lines[1:])]
        length = int(next((v for n, v in headers if n.lower() == "content-length"), "0"))
        body = await self.reader.readexactly(length)
        request = Request(lines[0], headers, body, head + body)
        self.requests.append(request)
        self.server.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_eof(self) -> None:
        """Until the client closes the connection; whatever it sends meanwhile is dropped."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.eof.set()


Script = Callable[[Peer], Awaitable[None]]


class Server:
    """Accepts connections and runs `script` on each; records what it sees."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.peers: list[Peer] = []
        self.requests: list[Request] = []
        self.open_now = 0
        self.max_open = 0
        self.port = 0
        self.scheme = "http"
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.peers)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        peer = Peer(self, reader, writer)
        self.peers.append(peer)
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            await self.script(peer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly (teardown), not as a logged error
        finally:
            self.open_now -= 1
            writer.close()
            self.tasks.discard(task)


@contextlib.asynccontextmanager
async def serve(script: Script, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(script)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    server.scheme = "https" if tls is not None else "http"
    try:
        yield server
    finally:
        listener.close()
        for peer in server.peers:
            peer.writer.close()
        pending = list(server.tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.wait_closed(), 1.0)


@contextlib.asynccontextmanager
async def upstream(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 2.0,
    connect_timeout_s: float = 2.0,
    max_connections: int = 8,
) -> AsyncIterator[HttptoolsUpstream]:
    client = HttptoolsUpstream(
        base_url=url,
        headers=headers or {},
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
        max_connections=max_connections,
    )
    try:
        yield client
    finally:
        await client.aclose()


# -- answers and scripts -------------------------------------------------------


def answer(
    status: int = 200, body: bytes = JSON_OK, headers: Iterable[str] = (), reason: str = "OK"
) -> bytes:
    """An answer framed by Content-Length."""
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", *headers]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def chunked_head(headers: Iterable[str] = ()) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", *headers]
    head.append("Transfer-Encoding: chunked")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def chunked_answer(parts: Iterable[bytes]) -> bytes:
    return chunked_head() + b"".join(chunk(p) for p in parts) + LAST_CHUNK


def keep_alive(
    reply: Callable[[Request], bytes] = lambda _: answer(), delay_s: float = 0
) -> Script:
    """Answer every request on the connection, after `delay_s`, until the client closes."""

    async def script(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            if delay_s:
                await asyncio.sleep(delay_s)
            await peer.send(reply(request))

    return script


def never_answer() -> Script:
    """Read the request, then say nothing until the client gives up."""

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.wait_eof()

    return script


async def eventually(condition: Callable[[], bool], within_s: float = 1.0) -> None:
    """Wait (bounded) until `condition()` holds."""
    async with asyncio.timeout(within_s):
        while not condition():
            await asyncio.sleep(0.005)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a whole answer via post() -------------------------------------------------


async def test_post_returns_the_status_lowercased_headers_and_the_whole_body() -> None:
    body = b'{"data":"' + b"x" * 300_000 + b'"}'  # several reads' worth
    reply = answer(201, body, ["X-Request-ID: req-42", "OpenAI-Model: gpt-4o"], "Created")
    async with serve(keep_alive(lambda _: reply)) as srv, upstream(srv.url) as up:
        response = await up.post("/chat/completions", b"{}")
    assert response.status == 201
    assert response.headers["x-request-id"] == "req-42"
    assert response.headers["openai-model"] == "gpt-4o"
    assert response.headers["content-length"] == str(len(body))
    assert all(name == name.lower() for name in response.headers)
    assert response.body == body


async def test_request_is_a_post_to_the_base_path_with_json_headers_and_the_exact_body() -> None:
    body = '{"model":"gpt-4o","messages":[{"role":"user","content":"héllo ☃"}]}'.encode()
    async with serve(keep_alive()) as srv:
        headers = {"Authorization": "Bearer sk-test", "X-Org": "acme"}
        async with upstream(f"{srv.url}/v1/", headers=headers) as up:
            await up.post("/chat/completions", body)
    [request] = srv.requests
    assert request.request_line == "POST /v1/chat/completions HTTP/1.1"
    assert request.header("Host") == f"127.0.0.1:{srv.port}"
    assert request.header("Content-Type") == "application/json"
    assert request.header("Content-Length") == str(len(body))
    assert request.header("Authorization") == "Bearer sk-test"
    assert request.header("X-Org") == "acme"
    assert request.body == body


async def test_params_are_url_encoded_into_the_query_string() -> None:
    async with serve(keep_alive()) as srv, upstream(f"{srv.url}/v1beta") as up:
        await up.post("/models/gemini:generate", b"{}", params={"alt": "sse", "q": "a b&c"})
    assert srv.requests[0].target == "/v1beta/models/gemini:generate?alt=sse&q=a+b%26c"


async def test_request_asks_for_no_compression() -> None:
    async with serve(keep_alive()) as srv, upstream(srv.url) as up:
        await up.post("/x", b"{}")
    # Without the header any coding is acceptable (RFC 9110, 12.5.3): say identity.
    assert srv.requests[0].header("Accept-Encoding") == "identity"


async def test_configured_host_and_framing_headers_do_not_duplicate_the_clients_own() -> None:
    headers = {"Host": "evil.example", "Content-Length": "999", "content-type": "text/plain"}
    async with serve(keep_alive()) as srv, upstream(srv.url, headers=headers) as up:
        await up.post("/x", b"{}")
    [request] = srv.requests
    assert request.header_values("Host") == [f"127.0.0.1:{srv.port}"]
    assert request.header_values("Content-Length") == ["2"]
    assert request.header_values("Content-Type") == ["application/json"]


def test_a_configured_header_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        HttptoolsUpstream(
            base_url="http://127.0.0.1:1",
            headers={"X-Bad": "a\r\nX-Injected: 1"},
            timeout_s=1,
            connect_timeout_s=1,
            max_connections=1,
        )


@pytest.mark.parametrize("base_url", ["ftp://127.0.0.1/", "127.0.0.1:8000", "http:///path"])
def test_a_base_url_that_is_not_http_or_https_is_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        HttptoolsUpstream(
            base_url=base_url, headers={}, timeout_s=1, connect_timeout_s=1, max_connections=1
        )


async def test_an_answer_arriving_one_byte_at_a_time_is_parsed_the_same() -> None:
    reply = answer(200, b'{"choices":[]}', ["X-Long-Header-Name: some-long-value"])

    async def script(peer: Peer) -> None:
        await peer.read_request()
        for i in range(len(reply)):
            await peer.send(reply[i : i + 1])
            await asyncio.sleep(0)
        await peer.wait_eof()

    async with serve(script) as srv, upstream(srv.url) as up:
        response = await up.post("/x", b"{}")
    assert response.status == 200
    assert response.headers["x-long-header-name"] == "some-long-value"
    assert response.body == b'{"choices":[]}'


# -- chunked and close-delimited bodies ----------------------------------------

PARTS = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]


async def test_post_dechunks_a_chunked_answer() -> None:
    async with serve(keep_alive(lambda _: chunked_answer(PARTS))) as srv, upstream(srv.url) as up:
        response = await up.post("/x", b"{}")
    assert response.status == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.body == b"".join(PARTS)


async def test_stream_chunks_yield_the_dechunked_body() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(chunked_head())
        for part in PARTS:
            await peer.send(chunk(part))
            await asyncio.sleep(0.01)
        await peer.send(LAST_CHUNK)
        await peer.wait_eof()

    async with serve(script) as srv, upstream(srv.url) as up, up.stream("/x", b"{}") as stream:
        assert stream.status == 200
        received = [block async for block in stream.chunks()]
    assert b"".join(received) == b"".join(PARTS)


async def test_stream_yields_the_first_block_before_the_answer_is_complete() -> None:
    go_on = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(chunked_head() + chunk(b"first"))
        await go_on.wait()
        await peer.send(chunk(b"second") + LAST_CHUNK)
        await peer.wait_eof()

    async with serve(script) as srv, upstream(srv.url) as up, up.stream("/x", b"{}") as stream:
        blocks = stream.chunks()
        assert await anext(blocks) == b"first"
        go_on.set()
        assert b"".join([block async for block in blocks]) == b"second"


async def test_post_reads_a_close_delimited_body_whole() -> None:
    body = b"no length, no chunks: " + b"z" * 100_000

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
        # returning closes the connection: that is the end of the body

    async with serve(script) as srv, upstream(srv.url) as up:
        response = await up.post("/x", b"{}")
    assert response.status == 200
    assert response.body == body


async def test_stream_reads_a_close_delimited_body_whole() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"part one, ")
        await asyncio.sleep(0.01)
        await peer.send(b"part two")

    async with serve(script) as srv, upstream(srv.url) as up, up.stream("/x", b"{}") as stream:
        assert await stream.read() == b"part one, part two"


async def test_a_streamed_answer_larger_than_the_read_buffer_arrives_whole() -> None:
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB: reading pauses and resumes on the way

    async with serve(keep_alive(lambda _: answer(body=body))) as srv, upstream(srv.url) as up:
        async with up.stream("/x", b"{}") as stream:
            await asyncio.sleep(0.05)  # let more than the high-water mark pile up
            received = [block async for block in stream.chunks()]
        assert b"".join(received) == body
    assert srv.connections == 1


# -- the keep-alive pool -------------------------------------------------------


async def test_sequential_posts_reuse_one_connection() -> None:
    async with serve(keep_alive()) as srv, upstream(srv.url) as up:
        for _ in range(5):
            assert (await up.post("/x", b"{}")).body == JSON_OK
    assert srv.connections == 1
    assert len(srv.requests) == 5


async def test_an_answer_with_connection_close_is_not_reused() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer(headers=["Connection: close"]))

    async with serve(script) as srv, upstream(srv.url) as up:
        assert (await up.post("/x", b"{}")).status == 200
        assert (await up.post("/x", b"{}")).status == 200
    assert srv.connections == 2


async def test_a_close_delimited_answer_leaves_the_next_post_a_new_connection() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")

    async with serve(script) as srv, upstream(srv.url) as up:
        assert (await up.post("/x", b"{}")).body == b"until the end"
        assert (await up.post("/x", b"{}")).body == b"until the end"
    assert srv.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced_transparently() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer())  # a keep-alive answer, then the server closes anyway

    async with serve(script) as srv, upstream(srv.url) as up:
        assert (await up.post("/x", b"{}")).status == 200
        await eventually(lambda: srv.open_now == 0)
        await asyncio.sleep(0.02)  # the client's side sees the close
        assert (await up.post("/x", b"{}")).status == 200
    assert srv.connections == 2
    assert len(srv.requests) == 2


async def test_a_kept_alive_connection_closed_after_the_server_read_the_request_is_not_resent() -> (
    None
):
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer())
        await peer.read_request()  # the server read it: it may have acted on it

    async with serve(script) as srv, upstream(srv.url) as up:
        assert (await up.post("/x", b"{}")).status == 200
        with pytest.raises(UpstreamTransportError, match="closed the connection"):
            await up.post("/x", b'{"n":2}')
    assert srv.connections == 1
    assert [r.body for r in srv.requests] == [b"{}", b'{"n":2}']


async def test_an_idle_connection_older_than_the_idle_limit_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httptools_module, "_IDLE_S", 0.05)
    async with serve(keep_alive()) as srv, upstream(srv.url) as up:
        await up.post("/x", b"{}")
        await asyncio.sleep(0.1)
        await up.post("/x", b"{}")
        assert srv.connections == 2
        await asyncio.wait_for(srv.peers[0].eof.wait(), 1.0)


async def test_max_connections_bounds_how_many_are_open_at_once() -> None:
    async with serve(keep_alive(delay_s=0.05)) as srv, upstream(srv.url, max_connections=2) as up:
        responses = await asyncio.gather(*(up.post(f"/n/{i}", b"{}") for i in range(6)))
    assert [r.status for r in responses] == [200] * 6
    assert srv.max_open <= 2
    assert srv.connections <= 2
    assert sorted(r.target for r in srv.requests) == [f"/n/{i}" for i in range(6)]


# -- errors --------------------------------------------------------------------


async def test_a_refused_connection_is_an_upstream_connect_error() -> None:
    async with upstream(f"http://127.0.0.1:{free_port()}") as up:
        with pytest.raises(UpstreamConnectError):
            await up.post("/x", b"{}")


@contextlib.contextmanager
def full_listen_queue() -> Iterator[int]:
    """A port whose accept queue is full: new connections hang in the handshake."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            filler = socket.socket()
            fillers.append(filler)
            filler.settimeout(0.05)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:  # pragma: no cover - the kernel kept accepting
            pytest.skip("could not fill the listen queue")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_connection_attempt_slower_than_the_connect_timeout_is_a_timeout_error() -> None:
    with full_listen_queue() as port:
        async with upstream(f"http://127.0.0.1:{port}", connect_timeout_s=0.2) as up:
            start = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamTimeoutError):
                await up.post("/x", b"{}")
            assert asyncio.get_running_loop().time() - start < 1.0


async def test_an_upstream_that_never_answers_is_a_timeout_error() -> None:
    async with serve(never_answer()) as srv, upstream(srv.url, timeout_s=0.2) as up:
        start = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeoutError):
            await up.post("/x", b"{}")
        elapsed = asyncio.get_running_loop().time() - start
        await asyncio.wait_for(srv.peers[0].eof.wait(), 1.0)  # the client hung up
    assert 0.15 <= elapsed < 1.0


async def test_a_stream_that_stalls_mid_body_is_a_timeout_error_from_chunks() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(chunked_head() + chunk(b"data: partial\n\n"))
        await peer.wait_eof()

    async with serve(script) as srv, upstream(srv.url, timeout_s=0.2) as up:
        async with up.stream("/x", b"{}") as stream:
            received = []
            with pytest.raises(UpstreamTimeoutError):
                async for block in stream.chunks():
                    received.append(block)
        assert b"".join(received) == b"data: partial\n\n"
        await asyncio.wait_for(srv.peers[0].eof.wait(), 1.0)


async def test_the_read_timeout_bounds_each_wait_not_the_whole_answer() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(chunked_head())
        for i in range(5):
            await asyncio.sleep(0.05)
            await peer.send(chunk(b"%d" % i))
        await peer.send(LAST_CHUNK)
        await peer.wait_eof()

    async with serve(script) as srv, upstream(srv.url, timeout_s=0.15) as up:
        response = await up.post("/x", b"{}")  # 0.25 s in all, never 0.15 s without bytes
    assert response.body == b"01234"


async def test_a_connection_dropped_mid_body_is_a_transport_error_from_post() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    async with serve(script) as srv, upstream(srv.url) as up:
        with pytest.raises(UpstreamTransportError) as caught:
            await up.post("/x", b"{}")
    assert type(caught.value) is UpstreamTransportError


async def test_a_connection_dropped_mid_stream_is_a_transport_error_from_chunks() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(chunked_head() + chunk(b"data: one\n\n"))
        await asyncio.sleep(0.02)

    async with serve(script) as srv, upstream(srv.url) as up, up.stream("/x", b"{}") as stream:
        received = []
        with pytest.raises(UpstreamTransportError) as caught:
            async for block in stream.chunks():
                received.append(block)
    assert b"".join(received) == b"data: one\n\n"
    assert type(caught.value) is UpstreamTransportError


async def test_a_fresh_connection_closed_before_any_answer_is_a_transport_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()

    async with serve(script) as srv, upstream(srv.url) as up:
        with pytest.raises(UpstreamTransportError) as caught:
            await up.post("/x", b"{}")
    assert not isinstance(caught.value, (UpstreamConnectError, UpstreamTimeoutError))
    assert len(srv.requests) == 1  # a new connection's failure is not retried


async def test_garbage_instead_of_an_http_answer_is_a_transport_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"NOT HTTP AT ALL\r\n\r\n")
        await peer.wait_eof()

    async with serve(script) as srv, upstream(srv.url) as up:
        with pytest.raises(UpstreamTransportError) as caught:
            await up.post("/x", b"{}")
        await asyncio.wait_for(srv.peers[0].eof.wait(), 1.0)  # the connection is dropped
    assert type(caught.value) is UpstreamTransportError


async def test_error_statuses_are_answers_not_exceptions() -> None:
    error = b'{"error":{"message":"boom","type":"server_error"}}'

    def reply(request: Request) -> bytes:
        if request.target == "/limited":
            return answer(429, b"{}", ["Retry-After: 7"], "Too Many Requests")
        return answer(500, error, reason="Internal Server Error")

    async with serve(keep_alive(reply)) as srv, upstream(srv.url) as up:
        limited = await up.post("/limited", b"{}")
        failed = await up.post("/failed", b"{}")
    assert (limited.status, limited.headers["retry-after"], limited.body) == (429, "7", b"{}")
    assert (failed.status, failed.headers["content-type"], failed.body) == (
        500,
        "application/json",
        error,
    )
    assert srv.connections == 1  # and the connection stays in the pool


async def test_stream_read_returns_the_body_of_an_error_answer() -> None:
    error = b'{"error":{"message":"overloaded"}}'
    reply = answer(503, error, ["Retry-After: 2"], "Service Unavailable")
    async with (
        serve(keep_alive(lambda _: reply)) as srv,
        upstream(srv.url) as up,
        up.stream("/x", b"{}") as stream,
    ):
        assert stream.status == 503
        assert stream.headers["retry-after"] == "2"
        assert await stream.read() == error


# -- streams and the pool ------------------------------------------------------


def partial_or_whole(request: Request) -> bytes:
    if request.target == "/partial":
        return chunked_head() + chunk(b"data: one\n\n")  # and never the rest
    return answer()


async def test_leaving_a_stream_before_its_end_closes_that_connection() -> None:
    async with serve(keep_alive(partial_or_whole)) as srv, upstream(srv.url) as up:
        async with up.stream("/partial", b"{}") as stream:
            async for block in stream.chunks():
                assert block == b"data: one\n\n"
                break
        await asyncio.wait_for(srv.peers[0].eof.wait(), 0.5)
        assert (await up.post("/whole", b"{}")).status == 200
    assert srv.connections == 2


async def test_leaving_a_stream_without_reading_its_body_closes_that_connection() -> None:
    async with serve(keep_alive(partial_or_whole)) as srv, upstream(srv.url) as up:
        async with up.stream("/partial", b"{}") as stream:
            assert stream.status == 200
        await asyncio.wait_for(srv.peers[0].eof.wait(), 0.5)
        assert (await up.post("/whole", b"{}")).status == 200
    assert srv.connections == 2


async def test_a_fully_read_stream_gives_its_connection_back() -> None:
    def reply(request: Request) -> bytes:
        return chunked_answer(PARTS) if request.target == "/stream" else answer()

    async with serve(keep_alive(reply)) as srv, upstream(srv.url) as up:
        async with up.stream("/stream", b"{}") as stream:
            assert b"".join([block async for block in stream.chunks()]) == b"".join(PARTS)
        assert (await up.post("/whole", b"{}")).status == 200
    assert srv.connections == 1


# -- aclose --------------------------------------------------------------------


async def test_aclose_marks_the_client_closed_and_closes_idle_connections() -> None:
    async with serve(keep_alive()) as srv, upstream(srv.url) as up:
        await up.post("/x", b"{}")
        assert not up.is_closed
        await up.aclose()
        assert up.is_closed
        await asyncio.wait_for(srv.peers[0].eof.wait(), 0.5)


async def test_a_post_after_aclose_is_a_connect_error() -> None:
    async with serve(keep_alive()) as srv, upstream(srv.url) as up:
        await up.post("/x", b"{}")
        await up.aclose()
        with pytest.raises(UpstreamConnectError):
            await up.post("/x", b"{}")
    assert srv.connections == 1


async def test_aclose_fails_the_calls_waiting_for_a_connection() -> None:
    go_on = asyncio.Event()

    async def script(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await go_on.wait()
            await peer.send(answer())

    async with serve(script) as srv, upstream(srv.url, max_connections=1) as up:
        first = asyncio.create_task(up.post("/first", b"{}"))
        second = asyncio.create_task(up.post("/second", b"{}"))
        try:
            await eventually(lambda: len(srv.requests) == 1)
            await asyncio.sleep(0.02)  # `second` now waits for the only connection
            await up.aclose()
            with pytest.raises(UpstreamConnectError):
                await asyncio.wait_for(second, 1.0)
            go_on.set()
            assert (await asyncio.wait_for(first, 1.0)).status == 200  # in flight: it finishes
            await asyncio.wait_for(srv.peers[0].eof.wait(), 0.5)  # and is not pooled
        finally:
            for task in (first, second):
                task.cancel()
            await asyncio.gather(first, second, return_exceptions=True)
    assert [r.target for r in srv.requests] == ["/first"]


# -- choosing the transport ----------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY"])
def test_auto_transport_is_httpx_when_a_proxy_is_set(variable: str) -> None:
    assert auto_transport({variable: "http://proxy.internal:3128"}) == "httpx"


def test_auto_transport_is_aiohttp_without_a_proxy() -> None:
    # httptools is installed here (uvicorn[standard]) and still not chosen: it is opt-in.
    assert auto_transport({"PATH": "/usr/bin"}) == "aiohttp"


def test_auto_transport_ignores_an_empty_proxy_variable() -> None:
    assert auto_transport({"HTTPS_PROXY": ""}) == "aiohttp"


def test_auto_transport_is_httpx_where_aiohttp_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transports, "aiohttp_available", lambda: False)
    assert auto_transport({"PATH": "/usr/bin"}) == "httpx"


OPTIONS = {
    "base_url": "http://127.0.0.1:1",
    "headers": {},
    "timeout_s": 1.0,
    "connect_timeout_s": 1.0,
    "max_connections": 2,
}


async def test_open_upstream_with_an_explicit_httpx_transport_is_the_httpx_client() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    client = open_upstream("auto", **OPTIONS, transport=transport)  # type: ignore[arg-type]
    try:
        assert isinstance(client, HttpxUpstream)
    finally:
        await client.aclose()


async def test_open_upstream_httptools_is_the_httptools_client() -> None:
    client = open_upstream("httptools", **OPTIONS)  # type: ignore[arg-type]
    try:
        assert isinstance(client, HttptoolsUpstream)
    finally:
        await client.aclose()


async def test_open_upstream_auto_without_a_proxy_is_the_aiohttp_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in transports._PROXY_VARIABLES:  # the ones auto_transport reads
        monkeypatch.delenv(name, raising=False)
    client = open_upstream("auto", **OPTIONS)  # type: ignore[arg-type]
    try:
        assert isinstance(client, AiohttpUpstream)
    finally:
        await client.aclose()


async def test_open_upstream_auto_with_a_proxy_is_the_httpx_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    client = open_upstream("auto", **OPTIONS)  # type: ignore[arg-type]
    try:
        assert isinstance(client, HttpxUpstream)
    finally:
        await client.aclose()


# -- TLS -----------------------------------------------------------------------


@dataclass
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made now with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:  # pragma: no cover
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return Certificate(cert, key)


async def test_post_over_https_trusts_the_ca_file_named_by_ssl_cert_file(
    certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))
    async with (
        serve(keep_alive(), tls=certificate.server_context()) as srv,
        upstream(f"{srv.url}/v1") as up,
    ):
        assert srv.url.startswith("https://")
        first = await up.post("/chat/completions", b'{"tls":true}')
        second = await up.post("/chat/completions", b'{"tls":true}')
    assert (first.status, first.body, second.body) == (200, JSON_OK, JSON_OK)
    assert srv.requests[0].request_line == "POST /v1/chat/completions HTTP/1.1"
    assert srv.requests[0].body == b'{"tls":true}'
    assert srv.connections == 1


async def test_an_untrusted_certificate_is_a_connect_error(
    certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    async with (
        serve(keep_alive(), tls=certificate.server_context()) as srv,
        upstream(srv.url) as up,
    ):
        with pytest.raises(UpstreamTLSError, match="TLS certificate verification failed"):
            await up.post("/x", b"{}")
    assert srv.requests == []


# -- what must not happen: a request sent twice, a stall, a header overwritten --


async def test_a_read_timeout_on_a_kept_alive_connection_does_not_resend_the_request() -> None:
    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.send(answer())
        await never_answer()(peer)

    async with serve(script) as srv, upstream(srv.url, timeout_s=0.2) as up:
        await up.post("/x", b"{}")
        start = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeoutError):
            await up.post("/slow", b"{}")
        elapsed = asyncio.get_running_loop().time() - start
    assert [r.target for r in srv.requests] == ["/x", "/slow"]
    assert srv.connections == 1
    assert elapsed < 0.35


async def test_an_invalid_answer_on_a_kept_alive_connection_does_not_resend_the_request() -> None:
    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.send(answer())
        await peer.read_request()
        await peer.send(b"NOT HTTP AT ALL\r\n\r\n")
        await peer.wait_eof()

    async with serve(script) as srv, upstream(srv.url) as up:
        await up.post("/x", b"{}")
        with pytest.raises(UpstreamTransportError):
            await up.post("/garbled", b"{}")
    assert [r.target for r in srv.requests] == ["/x", "/garbled"]


async def test_post_reads_a_whole_answer_larger_than_the_read_buffer() -> None:
    body = bytes(range(256)) * (2 * 4096)  # 2 MiB, e.g. a large embeddings answer
    async with (
        serve(keep_alive(lambda _: answer(body=body))) as srv,
        upstream(srv.url, timeout_s=0.3) as up,
    ):
        response = await up.post("/embeddings", b"{}")
    assert response.body == body


async def test_trailers_of_a_chunked_answer_do_not_overwrite_its_headers() -> None:
    reply = chunked_head() + chunk(b"hi") + b"0\r\nContent-Type: text/evil\r\n\r\n"
    async with serve(keep_alive(lambda _: reply)) as srv, upstream(srv.url) as up:
        response = await up.post("/x", b"{}")
    assert response.body == b"hi"
    assert response.headers["content-type"] == "text/event-stream"


# -- hardening (issue 17): re-sends, interim answers, framing, header bounds ----


class ThreadedServer:
    """A blocking HTTP/1.1 server in a thread that closes its first connection when told.

    While the event loop's thread blocks, the server closes that connection:
    the client's socket then holds the close (a FIN, or a reset) that its
    loop has not read yet, the state a pooled connection is in when the
    server closes it just before the client reuses it.
    """

    def __init__(self, *, reset: bool) -> None:
        self.reset = reset
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.targets: list[str] = []
        self.close_now = threading.Event()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                return False
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += conn.recv(65536)
        self.targets.append(head.split(b" ")[1].decode())
        return True

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            first, _ = self.listener.accept()
            self._read_request(first)
            first.sendall(answer())
            self.close_now.wait(5)
            if self.reset:  # SO_LINGER 0: close with a reset, not a FIN
                first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            first.close()
            self.closed.set()
            second, _ = self.listener.accept()
            with second:
                while self._read_request(second):
                    second.sendall(answer())

    def close_first_connection(self) -> None:
        """Close the first connection while blocking the caller's thread (and its loop)."""
        self.close_now.set()
        assert self.closed.wait(2)
        time.sleep(0.05)  # the close reaches the client's socket; the loop cannot read it

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_now.set()
        self.listener.close()
        self.thread.join(2)


def count_starts(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every request the client writes (or means to write) on a connection."""
    original = httptools_module._Connection.start
    starts: list[bytes] = []

    def start(conn: httptools_module._Connection, request: bytes) -> object:
        starts.append(request)
        return original(conn, request)

    monkeypatch.setattr(httptools_module._Connection, "start", start)
    return starts


async def test_a_request_the_server_read_and_dropped_goes_once_not_once_per_pooled_connection() -> (
    None
):
    dropping = False

    async def script(peer: Peer) -> None:
        while await peer.read_request() is not None:
            if dropping:
                return  # read, then closed unanswered: it may have been acted on
            await asyncio.sleep(0.05)  # so that eight calls open eight connections
            await peer.send(answer())

    async with serve(script) as srv, upstream(srv.url, max_connections=8) as up:
        await asyncio.gather(*(up.post("/warm", b"{}") for _ in range(8)))
        assert srv.connections == 8
        dropping = True
        with pytest.raises(UpstreamTransportError):
            await up.post("/once", b'{"n":1}')
    # Before: 9 (each of the 8 pooled connections, then a new one).
    assert [r.target for r in srv.requests].count("/once") == 1


async def test_an_idle_connection_whose_close_is_not_read_yet_is_not_written_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starts = count_starts(monkeypatch)
    with ThreadedServer(reset=False) as srv:
        async with upstream(srv.url) as up:
            assert (await up.post("/first", b"{}")).status == 200
            srv.close_first_connection()
            assert (await up.post("/second", b"{}")).status == 200
    assert srv.targets == ["/first", "/second"]
    # Before: 3, the second request written on the closed connection, then again.
    assert len(starts) == 2


async def test_a_send_refused_before_any_byte_left_is_sent_again_on_a_new_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Skip the idle check, so the request meets the reset in send() itself.
    monkeypatch.setattr(httptools_module._Connection, "quiet", lambda conn: True)
    starts = count_starts(monkeypatch)
    with ThreadedServer(reset=True) as srv:
        async with upstream(srv.url) as up:
            assert (await up.post("/first", b"{}")).status == 200
            srv.close_first_connection()
            assert (await up.post("/second", b"{}")).status == 200
    assert srv.targets == ["/first", "/second"]
    assert len(starts) == 3


async def test_a_request_that_could_not_be_sent_is_sent_again_at_most_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = httptools_module._Connection.start
    starts: list[bytes] = []

    def start(conn: httptools_module._Connection, request: bytes) -> object:
        starts.append(request)
        assert conn.transport is not None
        conn.transport.abort()  # the connection is gone before a byte of it is written
        return original(conn, request)

    monkeypatch.setattr(httptools_module._Connection, "start", start)
    async with serve(keep_alive()) as srv, upstream(srv.url) as up:
        with pytest.raises(UpstreamTransportError):
            await up.post("/x", b"{}")
    assert len(starts) == 2
    assert srv.requests == []


INTERIM = {
    "100": b"HTTP/1.1 100 Continue\r\n\r\n",
    "103": b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    "several": b"HTTP/1.1 100 Continue\r\n\r\n"
    + b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" * 3,
}


@pytest.mark.parametrize("interim", list(INTERIM))
@pytest.mark.parametrize("together", [True, False], ids=["one-packet", "two-packets"])
async def test_unsolicited_interim_answers_are_skipped(interim: str, together: bool) -> None:
    async def script(peer: Peer) -> None:
        while await peer.read_request() is not None:
            if together:
                await peer.send(INTERIM[interim] + answer())
                continue
            await peer.send(INTERIM[interim])
            await asyncio.sleep(0.005)
            await peer.send(answer())

    async with serve(script) as srv, upstream(srv.url) as up:
        for _ in range(10):  # before: some answered with the interim status and no body
            response = await up.post("/x", b"{}")
            assert (response.status, response.body) == (200, JSON_OK)
            assert "link" not in response.headers
        async with up.stream("/x", b"{}") as stream:
            assert stream.status == 200
            assert "link" not in stream.headers
            assert await stream.read() == JSON_OK
    assert srv.connections == 1


async def test_an_unasked_switch_of_protocols_is_a_transport_error() -> None:
    reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(reply)
        await peer.wait_eof()

    async with serve(script) as srv, upstream(srv.url) as up:
        with pytest.raises(UpstreamTransportError, match="switch"):
            await up.post("/x", b"{}")
        await asyncio.wait_for(srv.peers[0].eof.wait(), 1.0)


SECOND = answer(500, b'{"error":"second"}', reason="Internal Server Error")


async def test_a_second_answer_in_the_same_packet_does_not_replace_the_first() -> None:
    async with serve(keep_alive(lambda _: answer() + SECOND)) as srv, upstream(srv.url) as up:
        first = await up.post("/x", b"{}")
        await asyncio.wait_for(srv.peers[0].eof.wait(), 1.0)  # that connection is dropped
        second = await up.post("/x", b"{}")
    assert (first.status, first.body) == (200, JSON_OK)  # before: 500, and both bodies
    assert (second.status, second.body) == (200, JSON_OK)
    assert srv.connections == 2


async def test_a_second_answer_after_a_streamed_one_is_not_part_of_it() -> None:
    reply = chunked_answer(PARTS) + SECOND
    async with serve(keep_alive(lambda _: reply)) as srv, upstream(srv.url) as up:
        async with up.stream("/x", b"{}") as stream:
            assert stream.status == 200
            assert await stream.read() == b"".join(PARTS)
        await asyncio.wait_for(srv.peers[0].eof.wait(), 1.0)
        assert (await up.post("/x", b"{}")).status == 200
    assert srv.connections == 2


FOLDED = (
    b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n two\r\n\t three\r\nContent-Type: application/json\r\n"
    b"Content-Length: 11\r\n\r\n" + JSON_OK
)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])
async def test_obs_folded_header_lines_are_unfolded(bytewise: bool) -> None:
    async def script(peer: Peer) -> None:
        while await peer.read_request() is not None:
            if not bytewise:
                await peer.send(FOLDED)
                continue
            for i in range(len(FOLDED)):
                await peer.send(FOLDED[i : i + 1])
                await asyncio.sleep(0)

    async with serve(script) as srv, upstream(srv.url) as up:
        response = await up.post("/x", b"{}")
        again = await up.post("/x", b"{}")
    # RFC 9112, 5.2: a recipient may replace each obs-fold with SP.
    assert response.headers["x-folded"] == "one two three"
    assert (response.status, response.body, again.body) == (200, JSON_OK, JSON_OK)
    assert srv.connections == 1


@pytest.mark.parametrize(("fields", "accepted"), [(100, True), (101, False)])
async def test_an_answer_with_more_than_100_header_fields_is_refused(
    fields: int, accepted: bool
) -> None:
    extra = [f"X-Header-{i}: value" for i in range(fields - 2)]  # answer() adds two
    async with (
        serve(keep_alive(lambda _: answer(headers=extra))) as srv,
        upstream(srv.url) as up,
    ):
        if accepted:
            assert len((await up.post("/x", b"{}")).headers) == 100
            return
        with pytest.raises(UpstreamTransportError, match="more than 100 headers"):
            await up.post("/x", b"{}")
        await asyncio.wait_for(srv.peers[0].eof.wait(), 1.0)


@pytest.mark.parametrize(("size", "accepted"), [(60 * 1024, True), (64 * 1024, False)])
async def test_an_answer_head_larger_than_64_kib_is_refused(size: int, accepted: bool) -> None:
    big = "X-Big: " + "a" * size
    async with serve(keep_alive(lambda _: answer(headers=[big]))) as srv, upstream(srv.url) as up:
        if accepted:
            assert len((await up.post("/x", b"{}")).headers["x-big"]) == size
            return
        with pytest.raises(UpstreamTransportError, match="larger than 65536 bytes"):
            await up.post("/x", b"{}")


async def test_an_endless_answer_head_is_cut_off_at_the_limit_not_buffered() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(1024):  # 16 MiB of one header line, if nobody stops it
                await peer.send(b"a" * 16384)
        await peer.wait_eof()

    async with serve(script) as srv, upstream(srv.url) as up:
        with pytest.raises(UpstreamTransportError, match="larger than 65536 bytes"):
            await up.post("/x", b"{}")
        await asyncio.wait_for(srv.peers[0].eof.wait(), 2.0)


async def test_endless_interim_answers_count_toward_the_head_limit() -> None:
    flood = INTERIM["103"] * 2000  # about 120 KB of interim heads

    async def script(peer: Peer) -> None:
        await peer.read_request()
        with contextlib.suppress(ConnectionError):
            await peer.send(flood + answer())
        await peer.wait_eof()

    async with serve(script) as srv, upstream(srv.url) as up:
        with pytest.raises(UpstreamTransportError, match="larger than 65536 bytes"):
            await up.post("/x", b"{}")


@pytest.mark.parametrize(
    ("announced", "connections"), [("timeout=1", 2), ("timeout=30, max=100", 1), ("junk", 1)]
)
async def test_the_keep_alive_timeout_the_server_announces_is_honoured(
    announced: str, connections: int
) -> None:
    reply = answer(headers=[f"Keep-Alive: {announced}"])
    async with serve(keep_alive(lambda _: reply)) as srv, upstream(srv.url) as up:
        await up.post("/x", b"{}")
        await up.post("/x", b"{}")
    # A server that keeps a connection 1 s is not sent a request on it just as it closes.
    assert srv.connections == connections
