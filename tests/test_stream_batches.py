"""Streamed chunks that arrive together leave together: one write per upstream read, no wait."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.errors import UpstreamError
from axione_asgi.openai_types import ChatCompletionRequest
from axione_asgi.providers.base import BatchStreamingProvider
from axione_asgi.providers.openai import OpenAIProvider
from axione_asgi.transports import UpstreamResponse

pytestmark = pytest.mark.anyio

KEY = "sk-axione-test-batches-000000000000"


def event(i: int) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": {"content": f"t{i} "}}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


USAGE = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"up",'
    b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}\n\n'
)
DONE = b"data: [DONE]\n\n"


class _Stream:
    status = 200
    headers: Mapping[str, str] = {"content-type": "text/event-stream"}

    def __init__(self, blocks: list[bytes]) -> None:
        self._blocks = blocks

    async def read(self) -> bytes:
        return b""

    async def chunks(self) -> AsyncIterator[bytes]:
        for block in self._blocks:
            yield block


class BlockUpstream:
    """An upstream client whose streamed answer arrives in the given network reads."""

    is_closed = False

    def __init__(self, blocks: list[bytes]) -> None:
        self.blocks = blocks

    async def post(
        self, path: str, body: bytes, params: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        raise AssertionError("only streams here")

    @asynccontextmanager
    async def stream(
        self, path: str, body: bytes, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[_Stream]:
        yield _Stream(self.blocks)

    async def aclose(self) -> None:
        pass


def config() -> AxioneConfig:
    return AxioneConfig.model_validate(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", "counters": "memory://"},
            "access_log": {"enabled": False},
            "providers": {
                "openai": {
                    "kind": "openai-compatible",
                    "base_url": "http://127.0.0.1:9/v1",
                    "models": {"m": "up"},
                }
            },
            "keys": [{"name": "t", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        }
    )


async def stream_through_gateway(blocks: list[bytes]) -> list[bytes]:
    """The body messages the gateway sends for one streamed chat, upstream reads as given."""
    app = create_app(config())
    body = json.dumps(
        {"model": "openai/m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    sent: list[dict[str, Any]] = []
    request = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if request:
            return request.pop()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {KEY}".encode())],
    }
    async with app.lifespan():
        app.runtime.registry.providers["openai"]._client = BlockUpstream(blocks)  # type: ignore[attr-defined]
        await app(scope, receive, send)
    assert sent[0]["status"] == 200
    return [m["body"] for m in sent[1:] if m["type"] == "http.response.body" and m["body"]]


async def test_chunks_that_arrive_in_one_read_are_sent_in_one_write() -> None:
    upstream = b"".join(event(i) for i in range(5)) + USAGE + DONE
    writes = await stream_through_gateway([upstream])
    assert len(writes) == 2  # the five chunks, then [DONE]
    assert writes[0].count(b"data: ") == 5
    assert writes[-1] == DONE


async def test_chunks_that_arrive_apart_are_sent_apart() -> None:
    writes = await stream_through_gateway([event(i) for i in range(5)] + [USAGE, DONE])
    assert len(writes) == 6
    assert all(w.count(b"data: ") == 1 for w in writes)


async def test_batching_changes_the_writes_not_the_events() -> None:
    events = [event(i) for i in range(5)] + [USAGE, DONE]
    together = b"".join(await stream_through_gateway([b"".join(events)]))
    apart = b"".join(await stream_through_gateway(events))
    # Cut mid-event too: an event split over two reads is one event.
    raw = b"".join(events)
    ragged = b"".join(await stream_through_gateway([raw[:37], raw[37:300], raw[300:]]))
    assert together == apart == ragged
    assert together.count(b"data: ") == 6  # five chunks and [DONE]; usage not asked for


async def test_the_openai_provider_streams_in_batches() -> None:
    assert isinstance(OpenAIProvider.__new__(OpenAIProvider), BatchStreamingProvider)


async def test_chunks_before_a_malformed_one_in_the_same_read_are_still_delivered() -> None:
    provider = OpenAIProvider("openai", config().providers["openai"], api_key=None, transport=None)
    provider._client = BlockUpstream([event(0) + event(1) + b"data: {not json\n\n"])
    request = ChatCompletionRequest.model_validate(
        {"model": "openai/m", "messages": [{"role": "user", "content": "hi"}]}
    )
    got = []
    with pytest.raises(UpstreamError):
        async for batch in provider.stream_batches(request, "m"):
            got.extend(batch)
    assert [c.choices[0].delta.content for c in got] == ["t0 ", "t1 "]
