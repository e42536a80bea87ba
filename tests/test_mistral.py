"""MistralProvider: fields Mistral rejects are dropped or renamed (SPEC section 8).

Every test on the `upstream` fixture (itself or through a provider fixture)
runs once per upstream client: in-process httpx, and httpx, aiohttp and
httptools over a real socket (tests/served_fakes.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import httpx2
import openai
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.config import ProviderConfig
from axione_asgi.errors import InvalidRequest
from axione_asgi.openai_types import ChatCompletionRequest
from axione_asgi.providers.openai import MistralProvider, OpenAIProvider
from axione_asgi.stores import MemoryKeyStore
from tests.fakes.openai_fake import FAKE_OPENAI_KEY, FakeOpenAI
from tests.served_fakes import Upstream, served_fakes, upstream

__all__ = ["served_fakes", "upstream"]  # fixtures used here

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "bonjour le monde"}]
MODELS = {"mistral-large": "mistral-large-latest"}
P = TypeVar("P", bound=OpenAIProvider)


def request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "mistral/mistral-large", "messages": USER, **fields}
    )


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI(flavor="mistral")


def make_provider(upstream: Upstream, fake: FakeOpenAI, cls: type[P]) -> P:
    """A `cls` provider on `fake`, through the client `upstream` names (tests/served_fakes.py)."""
    link = upstream.link(fake, "http://mistral/v1")
    config = ProviderConfig(
        kind="mistral",
        base_url=link.base_url,
        transport=link.transport,
        models=MODELS,
    )
    return cls("mistral", config, api_key=FAKE_OPENAI_KEY, transport=link.asgi)


@pytest.fixture
async def mistral(upstream: Upstream, fake: FakeOpenAI) -> AsyncIterator[MistralProvider]:
    provider = make_provider(upstream, fake, MistralProvider)
    await provider.open()
    yield provider
    await provider.aclose()


async def test_seed_is_sent_as_random_seed(mistral: MistralProvider, fake: FakeOpenAI) -> None:
    await mistral.chat(request(seed=42), "mistral-large")
    assert fake.last_body is not None
    assert fake.last_body["random_seed"] == 42
    assert "seed" not in fake.last_body


async def test_max_completion_tokens_is_sent_as_max_tokens(
    mistral: MistralProvider, fake: FakeOpenAI
) -> None:
    completion = await mistral.chat(request(max_completion_tokens=1), "mistral-large")
    assert fake.last_body is not None
    assert fake.last_body["max_tokens"] == 1
    assert "max_completion_tokens" not in fake.last_body
    assert completion.choices[0].finish_reason == "length"


async def test_explicit_max_tokens_wins_over_max_completion_tokens(
    mistral: MistralProvider, fake: FakeOpenAI
) -> None:
    await mistral.chat(request(max_tokens=5, max_completion_tokens=9), "mistral-large")
    assert fake.last_body is not None and fake.last_body["max_tokens"] == 5


async def test_developer_role_is_sent_as_system(mistral: MistralProvider, fake: FakeOpenAI) -> None:
    messages = [{"role": "developer", "content": "be brief"}, *USER]
    await mistral.chat(request(messages=messages), "mistral-large")
    assert fake.last_body is not None
    assert [m["role"] for m in fake.last_body["messages"]] == ["system", "user"]


async def test_fields_mistral_rejects_are_dropped(
    mistral: MistralProvider, fake: FakeOpenAI
) -> None:
    completion = await mistral.chat(
        request(user="u-1", logprobs=True, x_vendor=1, metadata={"a": "b"}), "mistral-large"
    )
    assert completion.choices[0].message.content == "bonjour le monde"
    assert fake.last_body is not None
    assert not {"user", "logprobs", "x_vendor", "metadata"} & set(fake.last_body)


async def test_stream_sends_no_stream_options(mistral: MistralProvider, fake: FakeOpenAI) -> None:
    chunks = [c async for c in mistral.stream(request(stream=True), "mistral-large")]
    assert fake.last_body is not None and "stream_options" not in fake.last_body
    assert any(c.usage is not None for c in chunks)


async def test_the_fake_rejects_unfiltered_openai_fields_like_mistral(
    upstream: Upstream, fake: FakeOpenAI
) -> None:
    # Why the filter exists: the same request sent unfiltered is refused.
    provider = make_provider(upstream, fake, OpenAIProvider)
    await provider.open()
    with pytest.raises(InvalidRequest):
        await provider.chat(request(seed=1), "mistral-large")
    await provider.aclose()


# -- through the gateway, with the SDK ------------------------------------------------------


@pytest.fixture
async def sdk(upstream: Upstream, fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    provider = make_provider(upstream, fake, MistralProvider)
    store = MemoryKeyStore()
    _, key = await store.create("mistral")
    app = create_app(
        AxioneConfig(storage={"keys": "memory://", "ledger": "memory://"}),
        providers={"mistral": provider},
        key_store=store,
    )
    async with (
        app.lifespan(),
        openai.AsyncOpenAI(
            api_key=key,
            base_url="http://gateway/",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
        ) as client,
    ):
        yield client


async def test_sdk_chat_through_mistral_echoes_the_public_model(
    sdk: openai.AsyncOpenAI, fake: FakeOpenAI
) -> None:
    completion = await sdk.chat.completions.create(
        model="mistral/mistral-large", messages=USER, seed=3
    )
    assert completion.model == "mistral/mistral-large"
    assert completion.choices[0].message.content == "bonjour le monde"
    assert fake.last_body is not None and fake.last_body["model"] == "mistral-large-latest"


async def test_sdk_stream_with_include_usage_ends_with_a_usage_only_chunk(
    sdk: openai.AsyncOpenAI,
) -> None:
    # Mistral puts usage on its finish chunk; SPEC wants a separate chunk with no choices.
    stream = await sdk.chat.completions.create(
        model="mistral/mistral-large",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert chunks[-2].choices[0].finish_reason == "stop"


async def test_sdk_stream_without_include_usage_has_no_usage(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="mistral/mistral-large", messages=USER, stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
