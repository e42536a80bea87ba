"""The official openai SDK (async, streaming) against the gateway in-process, over a fake OpenAI."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai
import pytest

from axione_asgi import AxioneConfig, Provider, create_app
from axione_asgi.app import AxioneApp
from axione_asgi.config import ProviderConfig
from axione_asgi.providers.openai import OpenAIProvider
from axione_asgi.stores import MemoryKeyStore
from tests.fakes.openai_fake import FAKE_OPENAI_KEY, FakeOpenAI
from tests.helpers import assert_spec_error, closed_port, serve_in_thread

pytestmark = pytest.mark.anyio

MODEL = "openai/gpt-4o"
UPSTREAM_MODEL = "gpt-4o-2024-08-06"
USER = [{"role": "user", "content": "Say hello to Paris"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"input": {"type": "string"}},
            "required": ["input"],
        },
    },
}


def openai_provider(
    *,
    fake: FakeOpenAI | None = None,
    base_url: str = "http://fake/v1",
    api_key: str = FAKE_OPENAI_KEY,
    timeout_s: float = 30.0,
) -> OpenAIProvider:
    config = ProviderConfig(
        kind="openai", base_url=base_url, models={"gpt-4o": UPSTREAM_MODEL}, timeout_s=timeout_s
    )
    transport = httpx.ASGITransport(app=fake) if fake is not None else None
    return OpenAIProvider("openai", config, api_key=api_key, transport=transport)


@dataclass
class Gateway:
    app: AxioneApp
    store: MemoryKeyStore
    key: str
    key_id: str
    client: openai.AsyncOpenAI
    raw: httpx.AsyncClient

    def sdk(self, api_key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=api_key,
            base_url="http://gateway/",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.app)),
        )


@contextlib.asynccontextmanager
async def running_gateway(providers: Mapping[str, Provider]) -> AsyncIterator[Gateway]:
    store = MemoryKeyStore()
    record, key = await store.create("sdk-tests")
    # No retries: each test sees exactly one upstream answer, at once.
    config = AxioneConfig(
        storage={"keys": "memory://", "ledger": "memory://"}, retry={"max_retries": 0}
    )
    app = create_app(config, providers=providers, key_store=store)
    async with app.lifespan():
        raw = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {key}"},
        )
        gateway = Gateway(app, store, key, record.id, client=None, raw=raw)  # type: ignore[arg-type]
        gateway.client = gateway.sdk(key)
        try:
            yield gateway
        finally:
            await gateway.client.close()
            await raw.aclose()


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
async def gw(fake: FakeOpenAI) -> AsyncIterator[Gateway]:
    async with running_gateway({"openai": openai_provider(fake=fake)}) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def served_fake() -> Iterator[tuple[FakeOpenAI, str]]:
    """The fake on a real socket, for timeouts and connections cut mid-stream."""
    fake = FakeOpenAI()
    with serve_in_thread(fake) as url:
        yield fake, url


@pytest.fixture
def live_fake(served_fake: tuple[FakeOpenAI, str]) -> Iterator[tuple[FakeOpenAI, str]]:
    fake, url = served_fake
    fake.reset()
    yield fake, url
    fake.reset()


async def sse_events(response: httpx.Response) -> list[str]:
    """The `data` of every SSE event of a raw streamed response."""
    return [
        line.removeprefix("data: ")
        async for line in response.aiter_lines()
        if line.startswith("data: ")
    ]


# -- text and usage ---------------------------------------------------------------


async def test_sdk_chat_returns_the_upstream_text(gw: Gateway) -> None:
    completion = await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert completion.choices[0].message.content == "Say hello to Paris"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.object == "chat.completion"


async def test_sdk_chat_usage_equals_the_upstream_usage(gw: Gateway, fake: FakeOpenAI) -> None:
    completion = await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert fake.last_body is not None
    upstream = fake.completion(fake.last_body)["usage"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == upstream["prompt_tokens"]
    assert completion.usage.completion_tokens == upstream["completion_tokens"]
    assert completion.usage.total_tokens == upstream["total_tokens"]


async def test_response_model_is_the_public_id_while_upstream_gets_its_own(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    completion = await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert completion.model == MODEL
    assert fake.last_body is not None and fake.last_body["model"] == UPSTREAM_MODEL


async def test_upstream_receives_the_gateway_secret_not_the_client_key(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert fake.last_headers["authorization"] == f"Bearer {FAKE_OPENAI_KEY}"
    assert gw.key not in json.dumps(fake.last_headers)
    assert fake.last_path == "/v1/chat/completions"


async def test_unknown_fields_pass_through_to_the_openai_upstream(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    await gw.client.chat.completions.create(
        model=MODEL,
        messages=USER,
        logit_bias={"50256": -100},
        extra_body={"x_custom_field": {"nested": [1, 2, 3]}, "prediction_hint": "abc"},
    )
    assert fake.last_body is not None
    assert fake.last_body["x_custom_field"] == {"nested": [1, 2, 3]}
    assert fake.last_body["prediction_hint"] == "abc"
    assert fake.last_body["logit_bias"] == {"50256": -100}


async def test_stop_and_max_tokens_reach_the_upstream(gw: Gateway, fake: FakeOpenAI) -> None:
    completion = await gw.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "one two three four five"}],
        max_tokens=2,
        temperature=0.5,
        seed=7,
    )
    assert completion.choices[0].message.content == "one two "
    assert completion.choices[0].finish_reason == "length"
    assert fake.last_body is not None
    assert (fake.last_body["max_tokens"], fake.last_body["seed"]) == (2, 7)


# -- tool calls -----------------------------------------------------------------


async def test_tool_calls_pass_through_unstreamed(gw: Gateway, fake: FakeOpenAI) -> None:
    completion = await gw.client.chat.completions.create(
        model=MODEL, messages=USER, tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"input": "Say hello to Paris"}
    assert fake.last_body is not None
    assert (
        call.id == fake.completion(fake.last_body)["choices"][0]["message"]["tool_calls"][0]["id"]
    )
    assert fake.last_body["tools"] == [WEATHER_TOOL]


async def test_tool_result_message_reaches_the_upstream_and_gets_an_answer(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    first = await gw.client.chat.completions.create(
        model=MODEL, messages=USER, tools=[WEATHER_TOOL]
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    completion = await gw.client.chat.completions.create(
        model=MODEL,
        tools=[WEATHER_TOOL],
        messages=[
            *USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
        ],
    )
    assert completion.choices[0].message.content == "The tool answered: 18C and sunny"
    assert fake.last_body is not None
    assert fake.last_body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": "18C and sunny",
    }


async def test_tool_calls_pass_through_streamed_and_reassemble(gw: Gateway) -> None:
    unstreamed = await gw.client.chat.completions.create(
        model=MODEL, messages=USER, tools=[WEATHER_TOOL]
    )
    stream = await gw.client.chat.completions.create(
        model=MODEL, messages=USER, tools=[WEATHER_TOOL], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    expected = unstreamed.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert finish == "tool_calls"
    assert calls == {
        0: {"id": expected.id, "name": "get_weather", "arguments": expected.function.arguments}
    }


# -- streaming ------------------------------------------------------------------


async def test_sdk_stream_text_joins_to_the_whole_answer(gw: Gateway) -> None:
    stream = await gw.client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    pieces = []
    models = set()
    async for chunk in stream:
        models.add(chunk.model)
        pieces.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(pieces) == "Say hello to Paris"
    assert models == {MODEL}


async def test_stream_include_usage_true_ends_with_a_usage_chunk(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    stream = await gw.client.chat.completions.create(
        model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert fake.last_body is not None
    upstream = fake.completion(fake.last_body)["usage"]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        upstream["prompt_tokens"],
        upstream["completion_tokens"],
        upstream["total_tokens"],
    )
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_include_usage_false_sends_no_usage_chunk(gw: Gateway) -> None:
    stream = await gw.client.chat.completions.create(
        model=MODEL, messages=USER, stream=True, stream_options={"include_usage": False}
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


async def test_stream_without_stream_options_sends_no_usage_chunk(gw: Gateway) -> None:
    stream = await gw.client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks and all(c.usage is None for c in chunks)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_raw_stream_ends_with_done(gw: Gateway, include_usage: bool) -> None:
    body = {
        "model": MODEL,
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": include_usage},
    }
    async with gw.raw.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1 if not include_usage else -2]["choices"][0]["finish_reason"] == "stop"
    assert ("usage" in chunks[-1] and chunks[-1]["choices"] == []) is include_usage


async def test_stream_asks_the_upstream_for_usage_even_when_the_client_does_not(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    stream = await gw.client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    async for _ in stream:
        pass
    assert fake.last_body is not None
    assert fake.last_body["stream_options"] == {"include_usage": True}


# -- errors as the SDK's own classes -----------------------------------------------


async def test_no_key_raises_authentication_error(gw: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        await gw.client.chat.completions.create(
            model=MODEL, messages=USER, extra_headers={"Authorization": openai.omit}
        )
    assert info.value.status_code == 401
    assert info.value.code == "missing_api_key"


async def test_bad_key_raises_authentication_error(gw: Gateway) -> None:
    client = gw.sdk("sk-ax-not-a-real-key-000000000000")
    with pytest.raises(openai.AuthenticationError) as info:
        await client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.code == "invalid_api_key"
    assert info.value.type == "authentication_error"


async def test_revoked_key_raises_authentication_error(gw: Gateway) -> None:
    record, key = await gw.store.create("soon-revoked")
    await gw.store.revoke(record.id)
    with pytest.raises(openai.AuthenticationError) as info:
        await gw.sdk(key).chat.completions.create(model=MODEL, messages=USER)
    assert info.value.code == "invalid_api_key"


async def test_unknown_model_raises_not_found_error(gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await gw.client.chat.completions.create(model="openai/gpt-9", messages=USER)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


async def test_empty_messages_raise_bad_request_error(gw: Gateway, fake: FakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await gw.client.chat.completions.create(model=MODEL, messages=[])
    assert info.value.code == "invalid_value"
    assert info.value.param == "messages"
    assert fake.requests == []


async def test_invalid_role_raises_bad_request_error(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await gw.client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "wizard", "content": "hi"}],  # type: ignore[list-item]
        )
    assert info.value.param == "messages[0].role"


async def test_upstream_400_raises_bad_request_error(gw: Gateway, fake: FakeOpenAI) -> None:
    fake.fail_status = 400
    with pytest.raises(openai.BadRequestError) as info:
        await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.type == "invalid_request_error"


async def test_upstream_429_raises_rate_limit_error_with_retry_after(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    fake.fail_status, fake.retry_after = 429, "7"
    with pytest.raises(openai.RateLimitError) as info:
        await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 429
    assert info.value.type == "rate_limit_error"
    assert info.value.response.headers["retry-after"] == "7"


async def test_upstream_500_raises_api_status_error_502(gw: Gateway, fake: FakeOpenAI) -> None:
    fake.fail_status = 500
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_error"
    assert info.value.type == "upstream_error"


async def test_upstream_503_raises_api_status_error_503(gw: Gateway, fake: FakeOpenAI) -> None:
    fake.fail_status = 503
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 503


async def test_upstream_malformed_json_raises_api_status_error_502(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    fake.malformed = True
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 502


async def test_upstream_rejecting_the_gateway_key_is_502_upstream_auth_failed(
    fake: FakeOpenAI,
) -> None:
    provider = openai_provider(fake=fake, api_key="sk-wrong-upstream-key-0000000000")
    async with running_gateway({"openai": provider}) as gw:
        with pytest.raises(openai.APIStatusError) as info:
            await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_auth_failed"
    assert "sk-wrong-upstream-key" not in info.value.response.text


async def test_upstream_timeout_is_504(live_fake: tuple[FakeOpenAI, str]) -> None:
    fake, url = live_fake
    fake.delay_s = 1.0
    provider = openai_provider(base_url=f"{url}/v1", timeout_s=0.2)
    async with running_gateway({"openai": provider}) as gw:
        with pytest.raises(openai.APIStatusError) as info:
            await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"


async def test_streamed_upstream_timeout_is_504(live_fake: tuple[FakeOpenAI, str]) -> None:
    fake, url = live_fake
    fake.delay_s = 1.0
    provider = openai_provider(base_url=f"{url}/v1", timeout_s=0.2)
    async with running_gateway({"openai": provider}) as gw:
        with pytest.raises(openai.APIStatusError) as info:
            await gw.client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    assert info.value.status_code == 504


async def test_connection_refused_is_503() -> None:
    provider = openai_provider(base_url=f"http://127.0.0.1:{closed_port()}/v1")
    async with running_gateway({"openai": provider}) as gw:
        with pytest.raises(openai.APIStatusError) as info:
            await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 503
    assert info.value.code == "provider_unavailable"


async def test_real_socket_upstream_serves_text(live_fake: tuple[FakeOpenAI, str]) -> None:
    _, url = live_fake
    async with running_gateway({"openai": openai_provider(base_url=f"{url}/v1")}) as gw:
        completion = await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert completion.choices[0].message.content == "Say hello to Paris"


# -- failures in the middle of a stream -------------------------------------------


async def test_upstream_error_event_mid_stream_raises_api_error_in_the_sdk(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    fake.stream_error_after = 3
    stream = await gw.client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 3
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "upstream_error"


async def test_upstream_error_event_mid_stream_ends_with_an_error_event_and_no_done(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    fake.stream_error_after = 2
    body = {"model": MODEL, "messages": USER, "stream": True}
    async with gw.raw.stream("POST", "/chat/completions", json=body) as response:
        events = await sse_events(response)
    assert response.status_code == 200
    final = json.loads(events[-1])
    assert set(final) == {"error"}
    assert set(final["error"]) == {"type", "message", "code", "param"}
    assert final["error"]["type"] == "upstream_error"
    assert "[DONE]" not in events


async def test_connection_cut_mid_stream_raises_api_error_in_the_sdk(
    live_fake: tuple[FakeOpenAI, str],
) -> None:
    fake, url = live_fake
    fake.cut_stream_after = 3
    async with running_gateway({"openai": openai_provider(base_url=f"{url}/v1")}) as gw:
        stream = await gw.client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        received = []
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                received.append(chunk)
    assert len(received) == 3
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "upstream_error"


# -- no secret leaks, a request id everywhere --------------------------------------


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
async def test_upstream_secret_never_appears_in_an_error_body(
    gw: Gateway, fake: FakeOpenAI, status: int
) -> None:
    fake.fail_status = status
    fake.echo_key_in_errors = True
    response = await gw.raw.post("/chat/completions", json={"model": MODEL, "messages": USER})
    assert response.status_code >= 400
    assert FAKE_OPENAI_KEY not in response.text
    assert gw.key not in response.text
    assert_spec_error(response, response.status_code)


async def test_upstream_secret_never_appears_in_a_stream(gw: Gateway, fake: FakeOpenAI) -> None:
    fake.stream_error_after = 1
    fake.echo_key_in_errors = True
    body = {"model": MODEL, "messages": USER, "stream": True}
    async with gw.raw.stream("POST", "/chat/completions", json=body) as response:
        text = "".join(await sse_events(response))
    assert FAKE_OPENAI_KEY not in text


def _requests() -> dict[str, tuple[str, str, dict[str, Any] | None, bool]]:
    chat = {"model": MODEL, "messages": USER}
    return {
        "completion": ("POST", "/chat/completions", chat, True),
        "stream": ("POST", "/chat/completions", {**chat, "stream": True}, True),
        "models": ("GET", "/models", None, True),
        "no-key": ("POST", "/chat/completions", chat, False),
        "unknown-model": ("POST", "/chat/completions", {**chat, "model": "x/y"}, True),
        "unknown-path": ("GET", "/nowhere", None, True),
        "bad-json": ("POST", "/chat/completions", None, True),
    }


@pytest.mark.parametrize("case", list(_requests()))
async def test_every_response_has_a_request_id(gw: Gateway, case: str) -> None:
    method, path, body, with_key = _requests()[case]
    headers = {} if with_key else {"Authorization": ""}
    content = b"{nope" if case == "bad-json" else None
    response = await gw.raw.request(method, path, json=body, content=content, headers=headers)
    assert response.headers["x-request-id"].startswith("req_")


async def test_upstream_502_reaches_the_sdk_with_the_request_id(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    fake.fail_status = 500
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.request_id is not None
    assert info.value.request_id.startswith("req_")
