"""The daily token limit holds by construction (SPEC 3), under concurrency and across workers.

A request reserves its prompt estimate plus every choice's output cap; a
client with no cap reserves the default, and one whose cap is more than the
day has left gets the upstream a cap of what is left. So 200 concurrent
requests can pass the day only by what the prompt estimate missed: the
estimate leans up (ASCII at 4 characters a token, any other character a
token), and with an upstream that counts so, they do not pass it at all.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import httpx2
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp
from axione_asgi.exchange.estimate import DEFAULT_OUTPUT_RESERVE, text_tokens
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
from tests.quota_app import forget_redis_keys, redis_uri

pytestmark = pytest.mark.anyio

LIMIT = 100_000
# What an upstream writes when it is given no cap: more than a small reservation.
UNCAPPED_ANSWER = 4_000


def true_prompt_tokens(request: ChatCompletionRequest) -> int:
    """The upstream's own count: a tokenizer that agrees with the estimate's rule."""
    return sum(text_tokens(m.text()) for m in request.messages)


class HonestUpstream:
    """Writes exactly its cap per choice (UNCAPPED_ANSWER without one), and says so."""

    def __init__(self) -> None:
        self.caps: list[int | None] = []

    def models(self) -> Sequence[str]:
        return ["m"]

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _usage(self, request: ChatCompletionRequest) -> Usage:
        self.caps.append(request.output_cap)
        per_choice = request.output_cap or UNCAPPED_ANSWER
        completion = per_choice * (request.n or 1)
        prompt = true_prompt_tokens(request)
        return Usage(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion)  # fmt: skip

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        await anyio.sleep(0.01)  # long enough for every request to be in flight at once
        choices = [
            Choice(index=i, message=ResponseMessage(content="x")) for i in range(request.n or 1)
        ]
        return ChatCompletion(choices=choices, usage=self._usage(request))

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        await anyio.sleep(0.01)
        yield ChatCompletionChunk(id="h", choices=[ChunkChoice(delta=Delta(content="x"))])
        yield ChatCompletionChunk(
            id="h", choices=[ChunkChoice(delta=Delta(), finish_reason="length")]
        )
        yield ChatCompletionChunk(id="h", usage=self._usage(request))


def config(counters: str) -> AxioneConfig:
    return AxioneConfig.model_validate(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", "counters": counters},
            "tiers": {"1": {"requests_per_day": 100_000, "tokens_per_day": LIMIT}},
            "providers": {},
            "retry": {"max_retries": 0},
        }
    )


KINDS: dict[str, dict[str, Any]] = {
    # 128 choices of 100 tokens each: 12,800 tokens a request.
    "n=128, max_tokens=100": {"n": 128, "max_tokens": 100, "content": "hello there"},
    # No cap: the upstream would write 4,000 tokens.
    "no max_tokens": {"content": "hello there"},
    # 4,000 CJK characters: 4,000 prompt tokens, not 1,000.
    "4,000 CJK characters": {"max_tokens": 10, "content": "漢" * 4000},
}


async def run(apps: list[AxioneApp], key: str, body: dict[str, Any], count: int, *,
              stream: bool = False) -> Counter[int]:  # fmt: skip
    statuses: Counter[int] = Counter()
    clients = [
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t")
        for app in apps
    ]
    payload = {
        "model": "honest/m",
        "messages": [{"role": "user", "content": body["content"]}],
        **{k: v for k, v in body.items() if k != "content"},
        **({"stream": True} if stream else {}),
    }

    async def one(i: int) -> None:
        answer = await clients[i % len(clients)].post(
            "/chat/completions", json=payload, headers={"authorization": f"Bearer {key}"}
        )
        if stream and answer.status_code == 200:
            assert answer.text.endswith("data: [DONE]\n\n")
        statuses[answer.status_code] += 1

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
    for client in clients:
        await client.aclose()
    return statuses


async def used_today(app: AxioneApp, key_id: str) -> int:
    record = await app.runtime.key_store.get(key_id)  # type: ignore[attr-defined]
    assert record is not None
    usage = await app.runtime.quota.usage(record)
    return int(usage["used"]["tokens"])


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("counters", ["memory", "redis"])
async def test_two_hundred_concurrent_requests_never_pass_the_day(kind: str, counters: str) -> None:
    store = MemoryKeyStore()
    record, key = await store.create("concurrent")
    upstream = HonestUpstream()
    uri = "memory://" if counters == "memory" else redis_uri()
    # Two workers sharing the counters (and the key store); one with memory counters.
    apps = [
        create_app(config(uri), providers={"honest": upstream}, key_store=store)
        for _ in range(1 if counters == "memory" else 2)
    ]
    try:
        for app in apps:
            await app.runtime.start()
        statuses = await run(apps, key, KINDS[kind], 200)
        used = await used_today(apps[0], record.id)
    finally:
        for app in apps:
            await app.runtime.stop()
        if counters == "redis":
            await forget_redis_keys(record.id)
    # The bound: the day plus what the prompt estimate missed, here nothing.
    assert used <= LIMIT, f"{kind}: {used} tokens of {LIMIT} ({used / LIMIT:.2f}x)"
    assert statuses[200] >= 1 and set(statuses) <= {200, 429}
    assert sum(statuses.values()) == 200
    # No answer was asked for more than the reservation held.
    assert all(
        cap is not None or DEFAULT_OUTPUT_RESERVE >= UNCAPPED_ANSWER for cap in upstream.caps
    )


async def test_a_cap_larger_than_what_is_left_is_cut_to_what_is_left() -> None:
    store = MemoryKeyStore()
    record, key = await store.create("one")
    upstream = HonestUpstream()
    app = create_app(config("memory://"), providers={"honest": upstream}, key_store=store)
    await app.runtime.start()
    try:
        first = await run([app], key, {"max_tokens": 90_000, "content": "a" * 400}, 1)
        second = await run([app], key, {"max_tokens": 90_000, "content": "a" * 400}, 1)
        used = await used_today(app, record.id)
    finally:
        await app.runtime.stop()
    assert first[200] == second[200] == 1
    assert upstream.caps[0] == 90_000
    # What was left after the first (100,000 - 90,100) less the second's prompt.
    assert upstream.caps[1] == LIMIT - 90_100 - 100 - 4
    assert used <= LIMIT


async def test_one_by_one_the_day_is_spent_exactly_and_then_refused() -> None:
    store = MemoryKeyStore()
    record, key = await store.create("serial")
    app = create_app(config("memory://"), providers={"honest": HonestUpstream()}, key_store=store)
    await app.runtime.start()
    try:
        statuses: Counter[int] = Counter()
        for _ in range(40):
            statuses += await run([app], key, {"max_tokens": 3_000, "content": "hello"}, 1)
        used = await used_today(app, record.id)
    finally:
        await app.runtime.stop()
    per_request = 3_000 + math.ceil(len("hello") / 4)
    assert statuses[200] == LIMIT // per_request + 1  # the last one gets what is left
    assert used <= LIMIT and LIMIT - used < per_request
