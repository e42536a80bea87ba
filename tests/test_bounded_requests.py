"""Work per request is bounded: retries and fallbacks share a budget, streams end, usage is checked.

Each case is an upstream that would otherwise hold or mislead the gateway:
a `models` list of failing upstreams, a stream of keep-alive comments only,
an endless stream past `max_tokens`, and counts no tokenizer could produce.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.errors import UpstreamError
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ResponseMessage,
    Usage,
)
from axione_asgi.stores import MemoryKeyStore

pytestmark = pytest.mark.anyio


class Upstream:
    """A provider whose behaviour each test picks."""

    def __init__(self, mode: str, usage: Usage | None = None) -> None:
        self.mode = mode
        self.usage = usage or Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
        self.calls = 0
        self.sent = 0

    def models(self) -> Sequence[str]:
        return [f"m{i}" for i in range(16)]

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        self.calls += 1
        if self.mode == "failing":
            raise UpstreamError("down")
        return ChatCompletion(
            choices=[Choice(message=ResponseMessage(content="ok"))], usage=self.usage
        )

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        self.calls += 1
        yield ChatCompletionChunk(id="s", choices=[ChunkChoice(delta=Delta(content="go"))])
        if self.mode == "silent":
            await asyncio.sleep(60)  # only keep-alive comments would reach the parser
        while self.mode == "endless":
            self.sent += 1
            yield ChatCompletionChunk(id="s", choices=[ChunkChoice(delta=Delta(content=" w"))])
            await asyncio.sleep(0)


def config(**providers: Any) -> AxioneConfig:
    return AxioneConfig.model_validate(
        {
            "storage": {"keys": "memory://", "ledger": "memory://"},
            "retry": {"max_retries": 2, "backoff_s": 0, "backoff_max_s": 0, "max_attempts": 6},
            "providers": {"up": {"kind": "openai-compatible", "base_url": "http://x", **providers}},
        }
    )


async def call(upstream: Upstream, body: dict[str, Any], **providers: Any) -> tuple[Any, Any]:
    store = MemoryKeyStore()
    record, key = await store.create("b")
    app = create_app(config(**providers), providers={"up": upstream}, key_store=store)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        answer = await client.post(
            "/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"messages": [{"role": "user", "content": "hi"}], **body},
        )
        usage = await app.runtime.quota.usage(record)
    return answer, usage


async def test_retries_and_fallbacks_share_one_attempt_budget() -> None:
    upstream = Upstream("failing")
    models = [f"up/m{i}" for i in range(1, 16)]
    answer, usage = await call(upstream, {"model": "up/m0", "models": models})
    assert answer.status_code == 502
    assert upstream.calls == 6  # 16 models x 3 tries would have been 48
    assert usage["used"]["requests"] == 1


async def test_a_silent_stream_ends_with_an_error_event_after_the_idle_timeout() -> None:
    answer, _ = await call(
        Upstream("silent"), {"model": "up/m0", "stream": True}, stream_idle_timeout_s=0.2
    )
    assert answer.status_code == 200
    last = answer.text.strip().splitlines()[-1]
    assert '"upstream_timeout"' in last and "sent nothing for 0.2 seconds" in last


async def test_an_endless_stream_is_ended_at_the_cap_it_was_sent() -> None:
    upstream = Upstream("endless")
    answer, _ = await call(upstream, {"model": "up/m0", "stream": True, "max_tokens": 5})
    events = [line for line in answer.text.splitlines() if line.startswith("data: {")]
    contents = [e for e in events if '"content"' in e]
    assert len(contents) <= 5 + 8 + 1  # the cap, the slack, and the first
    assert '"finish_reason":"length"' in events[-1]
    assert answer.text.endswith("data: [DONE]\n\n")
    assert upstream.sent < 40  # the upstream stream was closed, not drained


@pytest.mark.parametrize(
    "usage",
    [
        Usage(prompt_tokens=10**23, completion_tokens=1, total_tokens=10**23 + 1),
        Usage(prompt_tokens=-5, completion_tokens=3, total_tokens=-2),
        Usage(prompt_tokens=3, completion_tokens=10**9, total_tokens=10**9 + 3),
    ],
    ids=["huge", "negative", "far past the cap"],
)
async def test_implausible_usage_is_estimated_and_the_key_keeps_its_day(usage: Usage) -> None:
    answer, day = await call(Upstream("ok", usage), {"model": "up/m0", "max_tokens": 50})
    assert answer.status_code == 200
    assert 0 < day["used"]["tokens"] <= 50 + 10  # the estimate: prompt and cap
    assert day["remaining"]["tokens"] > 0


async def test_the_ledger_counts_every_attempt_of_a_request() -> None:
    store = MemoryKeyStore()
    _, key = await store.create("b")
    upstream = Upstream("failing")
    app = create_app(config(), providers={"up": upstream}, key_store=store)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        for models in ([], ["up/m1", "up/m2"]):
            await client.post(
                "/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={
                    "model": "up/m0",
                    "models": models,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
        await app.runtime.quota.writer.stop()
        records = app.runtime.quota.ledger.records()
    assert [r.attempts for r in records] == [3, 6]  # 1 model x 3 tries; the budget of 6
