"""The opt-in response cache: what hits, what never does, what a hit costs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp
from axione_asgi.cache import cache_key
from axione_asgi.openai_types import ChatCompletionChunk, ChatCompletionRequest
from axione_asgi.providers.demo import DemoProvider
from axione_asgi.stores import MemoryKeyStore

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/11"


class CountingDemo(DemoProvider):
    """The demo model, counting how often the upstream is really asked."""

    def __init__(self) -> None:
        super().__init__("count")
        self.calls = 0

    async def chat(self, request: ChatCompletionRequest, model: str) -> Any:
        self.calls += 1
        return await super().chat(request, model)

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        self.calls += 1
        async for chunk in super().stream(request, model):
            yield chunk


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Gateway:
    app: AxioneApp
    http: httpx.AsyncClient
    provider: CountingDemo
    keys: list[str] = field(default_factory=list)

    async def chat(self, key_index: int = 0, headers: dict[str, str] | None = None,
                   **fields: Any) -> httpx.Response:  # fmt: skip
        body = {"model": "count/echo", "messages": [{"role": "user", "content": "hi there"}]}
        body.update(fields)
        return await self.http.post(
            "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {self.keys[key_index]}", **(headers or {})},
        )

    async def used(self, key_index: int = 0) -> dict[str, int]:
        answer = await self.http.get(
            "/usage", headers={"Authorization": f"Bearer {self.keys[key_index]}"}
        )
        used: dict[str, int] = answer.json()["used"]
        return used


def _config(**cache: Any) -> AxioneConfig:
    counters = cache.pop("counters", "memory://")
    return AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", "counters": counters},
            "cache": {"enabled": True, **cache},
        }
    )


async def _gateway(config: AxioneConfig, clock: Clock | None = None) -> AsyncIterator[Gateway]:
    store = MemoryKeyStore()
    provider = CountingDemo()
    app = create_app(config, providers={"count": provider}, key_store=store, clock=clock)
    keys = [(await store.create(f"k{i}"))[1] for i in range(2)]
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://axione") as http,
    ):
        yield Gateway(app, http, provider, keys)


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async for g in _gateway(_config()):
        yield g


async def test_second_identical_deterministic_request_is_a_hit(gw: Gateway) -> None:
    first = await gw.chat(temperature=0)
    second = await gw.chat(temperature=0)
    assert first.headers["x-axione-cache"] == "miss"
    assert second.headers["x-axione-cache"] == "hit"
    assert second.json() == first.json()
    assert gw.provider.calls == 1


async def test_a_hit_costs_one_request_and_no_tokens(gw: Gateway) -> None:
    await gw.chat(temperature=0)
    before = await gw.used()
    await gw.chat(temperature=0)
    after = await gw.used()
    assert after["requests"] == before["requests"] + 1
    assert after["tokens"] == before["tokens"]


async def test_a_hit_is_written_to_the_ledger_as_a_hit(gw: Gateway) -> None:
    await gw.chat(temperature=0)
    await gw.chat(temperature=0)
    await gw.app.runtime.quota.stop()  # flushes the ledger
    records = gw.app.runtime.quota.ledger.records()
    assert [r.cache_hit for r in records] == [False, True]
    assert records[1].prompt_tokens == records[1].completion_tokens == 0


async def test_non_deterministic_request_is_not_cached(gw: Gateway) -> None:
    await gw.chat(temperature=0.7)
    second = await gw.chat(temperature=0.7)
    assert "x-axione-cache" not in second.headers
    assert gw.provider.calls == 2


async def test_request_header_use_caches_a_non_deterministic_request(gw: Gateway) -> None:
    await gw.chat(temperature=0.7, headers={"x-axione-cache": "use"})
    second = await gw.chat(temperature=0.7, headers={"x-axione-cache": "use"})
    assert second.headers["x-axione-cache"] == "hit"


async def test_request_header_bypass_skips_the_cache(gw: Gateway) -> None:
    await gw.chat(temperature=0)
    second = await gw.chat(temperature=0, headers={"x-axione-cache": "bypass"})
    assert "x-axione-cache" not in second.headers
    assert gw.provider.calls == 2


async def test_streamed_request_is_never_served_from_the_cache(gw: Gateway) -> None:
    await gw.chat(temperature=0)
    streamed = await gw.chat(temperature=0, stream=True)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert "x-axione-cache" not in streamed.headers
    assert gw.provider.calls == 2


async def test_keys_never_share_entries_by_default(gw: Gateway) -> None:
    await gw.chat(0, temperature=0)
    other = await gw.chat(1, temperature=0)
    assert other.headers["x-axione-cache"] == "miss"
    assert gw.provider.calls == 2


async def test_keys_share_entries_when_the_operator_says_so() -> None:
    async for gw in _gateway(_config(shared_across_keys=True)):
        await gw.chat(0, temperature=0)
        other = await gw.chat(1, temperature=0)
        assert other.headers["x-axione-cache"] == "hit"


async def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    async for gw in _gateway(_config(ttl_s=60), clock):
        await gw.chat(temperature=0)
        clock.now += timedelta(seconds=59)
        assert (await gw.chat(temperature=0)).headers["x-axione-cache"] == "hit"
        clock.now += timedelta(seconds=2)
        assert (await gw.chat(temperature=0)).headers["x-axione-cache"] == "miss"
        assert gw.provider.calls == 2


async def test_mode_always_caches_every_non_streamed_request() -> None:
    async for gw in _gateway(_config(mode="always")):
        await gw.chat(temperature=1.3)
        assert (await gw.chat(temperature=1.3)).headers["x-axione-cache"] == "hit"


async def test_disabled_cache_answers_without_the_header() -> None:
    config = AxioneConfig.from_mapping({"storage": {"keys": "memory://", "ledger": "memory://"}})
    store = MemoryKeyStore()
    _, key = await store.create("k")
    app = create_app(config, key_store=store)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://axione") as http,
    ):
        answer = await http.post(
            "/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": "demo/echo",
                "temperature": 0,
                "messages": [{"role": "user", "content": "x"}],
            },
        )
    assert answer.status_code == 200
    assert "x-axione-cache" not in answer.headers


async def test_redis_cache_is_shared_by_two_workers() -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    await client.flushdb()
    await client.aclose()
    config = _config(counters=REDIS_URL, shared_across_keys=True)
    first_worker = _gateway(config)
    second_worker = _gateway(config)
    a = await anext(first_worker)
    b = await anext(second_worker)
    try:
        assert (await a.chat(temperature=0)).headers["x-axione-cache"] == "miss"
        hit = await b.chat(temperature=0)
        assert hit.headers["x-axione-cache"] == "hit"
        assert b.provider.calls == 0
    finally:
        for gen in (first_worker, second_worker):
            await gen.aclose()
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        await client.flushdb()
        await client.aclose()


# -- keys: what may and may not share an entry ---------------------------------------
_BASE: dict[str, Any] = {
    "model": "demo/echo",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0,
}

# Each entry changes one field that can change the answer.
_CHANGES: Sequence[tuple[str, Any]] = (
    ("model", "demo/lorem"),
    ("messages", [{"role": "user", "content": "hello!"}]),
    ("messages", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]),
    ("temperature", 0.5),
    ("top_p", 0.9),
    ("max_tokens", 5),
    ("max_completion_tokens", 5),
    ("stop", ["x"]),
    ("seed", 7),
    ("n", 2),
    ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "none"),
    ("frequency_penalty", 0.5),
)


def _key(body: dict[str, Any], scope: str = "key:a") -> str:
    return cache_key(ChatCompletionRequest.model_validate(body), scope)


@given(
    change=st.sampled_from(_CHANGES),
    text=st.text(max_size=40),
)
@settings(max_examples=150, deadline=None)
def test_requests_that_differ_in_an_answer_changing_field_never_share_a_key(
    change: tuple[str, Any], text: str
) -> None:
    base = json.loads(json.dumps(_BASE))
    base["messages"][0]["content"] = text
    changed = json.loads(json.dumps(base))
    name, value = change
    if name == "messages":
        value = json.loads(json.dumps(value))
        value[-1]["content"] = text + "!"
    changed[name] = value
    assert _key(base) != _key(changed)


@given(include_usage=st.booleans())
@settings(max_examples=10, deadline=None)
def test_fields_that_do_not_change_the_answer_share_a_key(include_usage: bool) -> None:
    # `user` is not one of them: end users behind one key get entries of their own.
    changed = {**_BASE, "stream_options": {"include_usage": include_usage}}
    assert _key(_BASE) == _key(changed)


def test_the_same_request_under_two_keys_has_two_entries() -> None:
    assert _key(_BASE, "key:a") != _key(_BASE, "key:b")
