"""Upstream answers are bounded: a whole one by `max_response_bytes`, one event by
`max_event_bytes`, each a 502 "answer too large" that is not retried (issue: a 200 MB body
raised RSS to 1 GB and was read three times; one 100 MB SSE line cost 177 s of CPU)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.stores import MemoryKeyStore
from tests.helpers import free_port

pytestmark = pytest.mark.anyio

BIG = 4 * 1024 * 1024  # what the upstream sends: past the 1 MiB / 64 KiB bounds set below


class Upstream:
    """A raw HTTP server on 127.0.0.1 that answers every POST with one huge answer."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.requests = 0
        self.sent = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            self.requests += 1
            if self.kind == "whole":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % (BIG + 2)
                )
                writer.write(b'"')
                for _ in range(BIG // 65536):
                    writer.write(b"a" * 65536)
                    self.sent += 65536
                    await writer.drain()
                writer.write(b'"')
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                line = b"data: " + b"a" * 65536
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                for _ in range(BIG // 65536):
                    piece = b"b" * 65536
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.sent += 65536
                    await writer.drain()
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture(params=["httptools", "aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


async def ask(upstream: Upstream, transport: str, stream: bool) -> tuple[httpx.Response, Upstream]:
    port = free_port()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port)
    config = AxioneConfig.model_validate(
        {
            "storage": {"keys": "memory://", "ledger": "memory://"},
            "retry": {"max_retries": 2, "backoff_s": 0},
            "providers": {
                "up": {
                    "kind": "openai-compatible",
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "models": {"m": "m"},
                    "transport": transport,
                    "max_response_bytes": 1024 * 1024,
                    "max_event_bytes": 65536,
                }
            },
        }
    )
    store = MemoryKeyStore()
    _, key = await store.create("bounds")
    app = create_app(config, key_store=store)
    try:
        async with (
            app.lifespan(),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as client,
        ):
            answer = await client.post(
                "/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={
                    "model": "up/m",
                    "stream": stream,
                    "messages": [{"role": "user", "content": "x"}],
                },
            )
    finally:
        server.close()
        await server.wait_closed()
    return answer, upstream


async def test_a_whole_answer_past_its_bound_is_a_502_read_once(transport: str) -> None:
    answer, upstream = await ask(Upstream("whole"), transport, stream=False)
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_answer_too_large"
    assert upstream.requests == 1  # not retried: asked again, it would be as large
    if transport == "httptools":
        # Its connection closes at the bound; the others' sockets may take in the rest.
        assert upstream.sent < BIG


async def test_one_event_past_its_bound_ends_the_stream_as_too_large(transport: str) -> None:
    answer, upstream = await ask(Upstream("event"), transport, stream=True)
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_answer_too_large"
    assert upstream.requests == 1
