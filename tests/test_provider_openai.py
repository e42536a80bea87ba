"""OpenAIProvider against the fake OpenAI upstream, and the fake itself checked by the SDK.

Every test on the `upstream` fixture (itself or through a provider fixture)
runs once per upstream client: in-process httpx, and httpx, aiohttp and
httptools over a real socket (tests/served_fakes.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx2
import openai
import pytest

from axione_asgi.config import ProviderConfig
from axione_asgi.errors import (
    InvalidRequest,
    NotFound,
    ProviderUnavailable,
    RateLimited,
    UpstreamError,
)
from axione_asgi.openai_types import ChatCompletionRequest
from axione_asgi.providers.openai import OpenAIProvider
from tests.fakes.openai_fake import FAKE_OPENAI_KEY, FakeOpenAI
from tests.served_fakes import CLIENTS, Upstream, served_fakes, upstream

__all__ = ["served_fakes", "upstream"]  # fixtures used here

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "ping pong"}]
# For the tests that send nothing upstream: the in-process client, no server.
IN_PROCESS = Upstream("asgi", None)


def request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "openai/gpt-4o", "messages": USER, **fields}
    )


def make_provider(
    upstream: Upstream,
    fake: FakeOpenAI,
    *,
    kind: str = "openai",
    api_key: str | None = FAKE_OPENAI_KEY,
) -> OpenAIProvider:
    link = upstream.link(fake, "http://fake/v1")
    config = ProviderConfig(
        kind=kind,  # type: ignore[arg-type]
        base_url=link.base_url,
        transport=link.transport,
        models={"gpt-4o": "gpt-4o-2024-08-06"},
    )
    return OpenAIProvider("openai", config, api_key=api_key, transport=link.asgi)


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
async def provider(upstream: Upstream, fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    # Every test through this fixture runs once per client (tests/served_fakes.py).
    p = make_provider(upstream, fake)
    await p.open()
    yield p
    await p.aclose()


# -- the fake, checked with the official SDK pointed straight at it ----------------------


@pytest.fixture
async def sdk(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        api_key=FAKE_OPENAI_KEY,
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=fake)),
    ) as client:
        yield client


async def test_fake_answers_the_sdk_with_a_parsable_completion(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model="gpt-4o", messages=USER)
    assert completion.choices[0].message.content == "ping pong"
    assert completion.usage is not None and completion.usage.completion_tokens == 2


async def test_fake_streams_to_the_sdk_with_a_usage_chunk(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ping pong"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


async def test_fake_tool_call_stream_reassembles_in_the_sdk(sdk: openai.AsyncOpenAI) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    stream = await sdk.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        tools=[tool],  # type: ignore[list-item]
        stream=True,
    )
    args = ""
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            args += (call.function.arguments or "") if call.function else ""
    assert json.loads(args) == {"input": "ping pong"}


async def test_fake_rejects_a_wrong_key_as_openai_does(fake: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(
        api_key="sk-wrong-0000000000",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=fake)),
    ) as client:
        with pytest.raises(openai.AuthenticationError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.code == "invalid_api_key"


async def test_fake_validates_messages_as_openai_does(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="gpt-4o", messages=[])
    assert info.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "oracle", "content": "x"}],  # type: ignore[list-item]
        )
    assert info.value.param == "messages[0].role"


async def test_fake_429_is_a_rate_limit_error_with_retry_after(
    fake: FakeOpenAI, sdk: openai.AsyncOpenAI
) -> None:
    fake.fail_status, fake.retry_after = 429, "2"
    with pytest.raises(openai.RateLimitError) as info:
        await sdk.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.response.headers["retry-after"] == "2"


async def test_fake_mid_stream_error_raises_api_error_in_the_sdk(
    fake: FakeOpenAI, sdk: openai.AsyncOpenAI
) -> None:
    fake.stream_error_after = 1
    stream = await sdk.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


# -- the provider ----------------------------------------------------------------------


async def test_chat_sends_the_upstream_model_id_and_bearer_key(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    await provider.chat(request(), "gpt-4o")
    assert fake.last_body is not None and fake.last_body["model"] == "gpt-4o-2024-08-06"
    assert fake.last_headers["authorization"] == f"Bearer {FAKE_OPENAI_KEY}"
    assert fake.last_path == "/v1/chat/completions"


async def test_chat_returns_the_upstream_usage(provider: OpenAIProvider, fake: FakeOpenAI) -> None:
    completion = await provider.chat(request(), "gpt-4o")
    assert fake.last_body is not None
    expected = fake.completion(fake.last_body)["usage"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected["prompt_tokens"]
    assert completion.usage.completion_tokens == expected["completion_tokens"]


async def test_chat_does_not_send_stream_fields(provider: OpenAIProvider, fake: FakeOpenAI) -> None:
    await provider.chat(request(stream=False, stream_options={"include_usage": True}), "gpt-4o")
    assert fake.last_body is not None
    assert "stream" not in fake.last_body and "stream_options" not in fake.last_body


async def test_unknown_fields_are_sent_as_they_are(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    await provider.chat(request(logprobs=True, x_vendor={"a": 1}), "gpt-4o")
    assert fake.last_body is not None
    assert fake.last_body["logprobs"] is True
    assert fake.last_body["x_vendor"] == {"a": 1}


async def test_unset_fields_are_not_sent(provider: OpenAIProvider, fake: FakeOpenAI) -> None:
    await provider.chat(request(), "gpt-4o")
    assert fake.last_body is not None
    assert set(fake.last_body) == {"model", "messages"}


async def test_stream_always_asks_for_usage_and_ends_with_it(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    chunks = [c async for c in provider.stream(request(stream=True), "gpt-4o")]
    assert fake.last_body is not None
    assert fake.last_body["stream_options"] == {"include_usage": True}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ping pong"


async def test_upstream_401_is_upstream_auth_failed(upstream: Upstream, fake: FakeOpenAI) -> None:
    provider = make_provider(upstream, fake, api_key="sk-not-the-right-one-123456")
    await provider.open()
    with pytest.raises(UpstreamError) as info:
        await provider.chat(request(), "gpt-4o")
    await provider.aclose()
    assert (info.value.status, info.value.code) == (502, "upstream_auth_failed")
    assert "sk-not-the-right-one" not in info.value.message


async def test_upstream_429_is_rate_limited_with_retry_after(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    fake.fail_status, fake.retry_after = 429, "11"
    with pytest.raises(RateLimited) as info:
        await provider.chat(request(), "gpt-4o")
    assert info.value.headers == {"retry-after": "11"}


@pytest.mark.parametrize(
    ("status", "error", "http_status"),
    [(500, UpstreamError, 502), (503, UpstreamError, 503), (400, InvalidRequest, 400)],
)
async def test_upstream_status_maps_to_spec_error(
    provider: OpenAIProvider, fake: FakeOpenAI, status: int, error: type, http_status: int
) -> None:
    fake.fail_status = status
    with pytest.raises(error) as info:
        await provider.chat(request(), "gpt-4o")
    assert info.value.status == http_status


async def test_upstream_error_messages_are_scrubbed_of_the_key(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    fake.fail_status, fake.echo_key_in_errors = 500, True
    with pytest.raises(UpstreamError) as info:
        await provider.chat(request(), "gpt-4o")
    assert FAKE_OPENAI_KEY not in info.value.message


async def test_malformed_json_answer_is_upstream_error(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    fake.malformed = True
    with pytest.raises(UpstreamError):
        await provider.chat(request(), "gpt-4o")


async def test_error_event_mid_stream_raises_upstream_error(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    fake.stream_error_after = 2
    received = []
    with pytest.raises(UpstreamError):
        async for chunk in provider.stream(request(stream=True), "gpt-4o"):
            received.append(chunk)
    assert len(received) == 2


async def test_unknown_public_model_is_not_found(provider: OpenAIProvider) -> None:
    with pytest.raises(NotFound):
        await provider.chat(request(), "gpt-9")


async def test_openai_kind_without_a_key_is_provider_unavailable(
    upstream: Upstream, fake: FakeOpenAI
) -> None:
    provider = make_provider(upstream, fake, api_key=None)
    await provider.open()
    with pytest.raises(ProviderUnavailable):
        await provider.chat(request(), "gpt-4o")
    await provider.aclose()


async def test_openai_compatible_kind_works_without_a_key(
    upstream: Upstream, fake: FakeOpenAI
) -> None:
    # A local server (vLLM, Ollama) takes no key: the fake then answers 401 only
    # because the header is absent, which proves none was sent.
    provider = make_provider(upstream, fake, kind="openai-compatible", api_key=None)
    await provider.open()
    with pytest.raises(UpstreamError) as info:
        await provider.chat(request(), "gpt-4o")
    await provider.aclose()
    assert info.value.code == "upstream_auth_failed"
    assert "authorization" not in fake.last_headers


async def test_calls_before_open_are_provider_unavailable(fake: FakeOpenAI) -> None:
    with pytest.raises(ProviderUnavailable):
        await make_provider(IN_PROCESS, fake).chat(request(), "gpt-4o")


async def test_open_twice_keeps_one_pooled_client(upstream: Upstream, fake: FakeOpenAI) -> None:
    provider = make_provider(upstream, fake)
    await provider.open()
    first = provider.client
    await provider.open()
    assert provider.client is first
    await provider.aclose()
    with pytest.raises(ProviderUnavailable):
        _ = provider.client


# -- over a real socket only: what in-process httpx cannot show ---------------------------

# In process, an exception in the fake reaches the test as itself; over a socket
# it is what a real upstream does: uvicorn drops the connection mid-body.
SOCKET_CLIENTS = pytest.mark.parametrize("upstream", CLIENTS[1:], indirect=True)


@SOCKET_CLIENTS
async def test_connection_cut_mid_stream_raises_upstream_error_then_the_pool_recovers(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    fake.cut_stream_after = 1
    received = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(request(stream=True), "gpt-4o"):
            received.append(chunk)
    assert info.value.status == 502
    assert len(received) == 1  # what came before the cut was passed on
    # The broken connection is not pooled: the next call gets a sound one.
    fake.cut_stream_after = None
    completion = await provider.chat(request(), "gpt-4o")
    assert completion.choices[0].message.content == "ping pong"


@SOCKET_CLIENTS
async def test_calls_in_a_row_share_the_pool(provider: OpenAIProvider, fake: FakeOpenAI) -> None:
    # Whole answers and streams alternate on kept-alive connections: each
    # answer is read to its end and no byte of one leaks into the next.
    for n in range(3):
        completion = await provider.chat(request(), "gpt-4o")
        assert completion.choices[0].message.content == "ping pong"
        chunks = [c async for c in provider.stream(request(stream=True), "gpt-4o")]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "ping pong"
        )
        assert len(fake.requests) == 2 * (n + 1)


async def test_a_long_answer_in_many_scripts_arrives_whole(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    # Large enough that the client reads it in many socket reads, cut anywhere
    # (inside an event, inside a multi-byte character): every byte must survive.
    text = " ".join(f"mot{n} été 日本語 ✓" for n in range(1500))
    long = request(messages=[{"role": "user", "content": text}])
    completion = await provider.chat(long, "gpt-4o")
    assert completion.choices[0].message.content == text
    chunks = [c async for c in provider.stream(long.model_copy(update={"stream": True}), "gpt-4o")]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None
