"""Anthropic and Gemini seen through the official openai SDK, end to end, over their strict fakes.

Every test runs for both translated providers: the SDK talks to the gateway
in-process (async), the gateway to `FakeAnthropic` or `GeminiFake`; the last
two tests use the sync SDK against the gateway served by uvicorn on 127.0.0.1.
The usage the client sees is compared with what the fake itself reported.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp
from axione_asgi.config import ProviderConfig
from axione_asgi.providers.anthropic import AnthropicProvider
from axione_asgi.providers.gemini import GeminiProvider
from axione_asgi.stores import MemoryKeyStore
from tests.fakes.anthropic_fake import FAKE_API_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.gemini_fake import FAKE_KEY as GEMINI_KEY
from tests.fakes.gemini_fake import GeminiFake
from tests.helpers import serve_in_thread

pytestmark = pytest.mark.anyio

PROVIDERS = ["anthropic", "gemini"]
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# -- the two backends, behind one face ---------------------------------------------
@dataclass
class Backend:
    """One translated provider and its fake, with what the tests need to ask the fake."""

    kind: str
    fake: Any

    @property
    def provider_name(self) -> str:
        return "anthropic" if self.kind == "anthropic" else "google"

    @property
    def model(self) -> str:
        return "anthropic/claude-3.5-sonnet" if self.kind == "anthropic" else "google/gemini-flash"

    def provider(self) -> AnthropicProvider | GeminiProvider:
        transport = httpx.ASGITransport(app=self.fake)
        if self.kind == "anthropic":
            config = ProviderConfig(
                kind="anthropic",
                base_url="http://anthropic.test",
                models={"claude-3.5-sonnet": "claude-3-5-sonnet-latest"},
            )
            return AnthropicProvider(
                "anthropic", config, api_key=ANTHROPIC_KEY, transport=transport
            )
        config = ProviderConfig(
            kind="gemini",
            base_url="http://gemini.test",
            models={"gemini-flash": "gemini-2.5-flash"},
        )
        return GeminiProvider("google", config, api_key=GEMINI_KEY, transport=transport)

    def reported_usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens as the fake reported them for its last answer."""
        if self.kind == "anthropic":
            usage = self.fake.answers[-1]["usage"]
            prompt = (
                usage["input_tokens"]
                + usage["cache_creation_input_tokens"]
                + usage["cache_read_input_tokens"]
            )
            return prompt, usage["output_tokens"]
        fake: GeminiFake = self.fake
        body = fake.validate(fake.last_body, fake.last.model)
        meta = fake.answer(body, fake.last.model)[-1]["usageMetadata"]
        return meta["promptTokenCount"], meta["candidatesTokenCount"] + meta["thoughtsTokenCount"]

    def sent_images(self) -> list[tuple[str, str]]:
        """(media type, base64 data) of every image the fake received last."""
        if self.kind == "anthropic":
            blocks = self.fake.last_request["messages"][-1]["content"]
            return [
                (b["source"]["media_type"], b["source"]["data"])
                for b in blocks
                if b["type"] == "image"
            ]
        parts = self.fake.last_body["contents"][-1]["parts"]
        return [
            (p["inlineData"]["mimeType"], p["inlineData"]["data"])
            for p in parts
            if "inlineData" in p
        ]

    def fail_with(self, failure: str) -> None:
        """Make the next call fail: `overloaded`, `rate_limited` or `server_error`."""
        if self.kind == "anthropic":
            status, etype = {
                "overloaded": (529, "overloaded_error"),
                "rate_limited": (429, "rate_limit_error"),
                "server_error": (500, "api_error"),
            }[failure]
            self.fake.fail_next(status, etype, f"fake {etype}")
        else:
            self.fake.fail_status = {"overloaded": 503, "rate_limited": 429, "server_error": 500}[
                failure
            ]

    def break_stream(self, how: str) -> None:
        """Make the next stream end mid-way: with an `error` event, or `cut` short."""
        if self.kind == "anthropic":
            if how == "error":
                self.fake.stream_error_after = 4  # after message_start and a few deltas
            else:
                self.fake.cut_stream_after = 4
        elif how == "error":
            self.fake.error_mid_stream = True
        else:
            self.fake.cut_stream = True


def new_backend(kind: str) -> Backend:
    if kind == "anthropic":
        return Backend(kind, FakeAnthropic(cache_read_input_tokens=11))
    return Backend(kind, GeminiFake(thoughts_tokens=3))


@contextlib.asynccontextmanager
async def gateway(backend: Backend) -> AsyncIterator[tuple[AxioneApp, str]]:
    store = MemoryKeyStore()
    _, key = await store.create("e2e")
    app = create_app(
        _config(), providers={backend.provider_name: backend.provider()}, key_store=store
    )
    async with app.lifespan():
        yield app, key


def _config() -> AxioneConfig:
    # No retries: each test sees exactly the fake's one answer.
    return AxioneConfig.model_validate(
        {"storage": {"keys": "memory://", "ledger": "memory://"}, "retry": {"max_retries": 0}}
    )


@dataclass
class E2E:
    backend: Backend
    client: openai.AsyncOpenAI

    @property
    def model(self) -> str:
        return self.backend.model

    async def chat(self, messages: list[Any], **fields: Any) -> Any:
        return await self.client.chat.completions.create(
            model=self.model, messages=messages, **fields
        )

    async def stream(self, messages: list[Any], **fields: Any) -> list[Any]:
        chunks: Any = await self.client.chat.completions.create(
            model=self.model, messages=messages, stream=True, **fields
        )
        return [chunk async for chunk in chunks]


@pytest.fixture(params=PROVIDERS)
async def e2e(request: pytest.FixtureRequest) -> AsyncIterator[E2E]:
    backend = new_backend(request.param)
    async with gateway(backend) as (app, key):
        client = openai.AsyncOpenAI(
            api_key=key,
            base_url="http://gateway/",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
        )
        try:
            yield E2E(backend, client)
        finally:
            await client.close()


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finishes(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


# -- chat and streaming ---------------------------------------------------------------
async def test_chat_returns_the_upstream_answer(e2e: E2E) -> None:
    completion = await e2e.chat(user("Bonjour from the gateway test"))
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Bonjour from the gateway test"
    assert completion.choices[0].finish_reason == "stop"


async def test_response_model_is_the_public_id(e2e: E2E) -> None:
    completion = await e2e.chat(user("hello"))
    chunks = await e2e.stream(user("hello"))
    assert completion.model == e2e.model
    assert {c.model for c in chunks} == {e2e.model}


async def test_streamed_text_reassembles_to_the_non_streamed_text(e2e: E2E) -> None:
    messages = user("one two three four five six seven eight nine")
    completion = await e2e.chat(messages)
    chunks = await e2e.stream(messages)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    assert text_of(chunks) == completion.choices[0].message.content
    assert finishes(chunks) == ["stop"]


# -- tools ------------------------------------------------------------------------------
async def test_tool_call_round_trip_reaches_a_final_answer(e2e: E2E) -> None:
    messages = user("What is the weather in Paris?")
    first = await e2e.chat(messages, tools=[WEATHER])
    assert first.choices[0].finish_reason == "tool_calls"
    calls = first.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp_c": 21}'},
    ]
    final = await e2e.chat(messages, tools=[WEATHER])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.tool_calls is None
    assert '"temp_c": 21' in (final.choices[0].message.content or "")


async def test_streamed_tool_call_matches_the_non_streamed_one(e2e: E2E) -> None:
    messages = user("What is the weather in Paris?")
    whole = await e2e.chat(messages, tools=[WEATHER])
    chunks = await e2e.stream(messages, tools=[WEATHER])
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    expected = whole.choices[0].message.tool_calls
    assert expected is not None
    assert json.loads(arguments) == json.loads(expected[0].function.arguments)
    assert finishes(chunks) == ["tool_calls"]


# -- images, stop, length ------------------------------------------------------------------
async def test_data_url_image_reaches_the_upstream_as_base64(e2e: E2E) -> None:
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
    ]
    completion = await e2e.chat([{"role": "user", "content": content}])
    assert e2e.backend.sent_images() == [("image/png", PNG_B64)]
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.choices[0].message.content or "").startswith("What is in this picture?")


async def test_stop_sequence_ends_the_answer_with_finish_stop(e2e: E2E) -> None:
    completion = await e2e.chat(user("alpha beta gamma delta"), stop=["gamma"])
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.choices[0].message.content or "").split() == ["alpha", "beta"]


async def test_output_cap_ends_the_answer_with_finish_length(e2e: E2E) -> None:
    completion = await e2e.chat(user("one two three four five"), max_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert (completion.choices[0].message.content or "").split() == ["one", "two"]


async def test_streamed_output_cap_ends_with_finish_length(e2e: E2E) -> None:
    chunks = await e2e.stream(user("one two three four five"), max_completion_tokens=2)
    assert finishes(chunks) == ["length"]
    assert text_of(chunks).split() == ["one", "two"]


# -- usage ---------------------------------------------------------------------------------
async def test_usage_equals_what_the_upstream_reported(e2e: E2E) -> None:
    completion = await e2e.chat(user("count these few words please"))
    prompt, output = e2e.backend.reported_usage()
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, output)
    assert completion.usage.total_tokens == prompt + output


async def test_streamed_usage_chunk_equals_what_the_upstream_reported(e2e: E2E) -> None:
    chunks = await e2e.stream(
        user("count these few words please"), stream_options={"include_usage": True}
    )
    prompt, output = e2e.backend.reported_usage()
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (prompt, output)
    assert last.usage.total_tokens == prompt + output
    assert all(c.usage is None for c in chunks[:-1])


async def test_no_usage_chunk_unless_asked(e2e: E2E) -> None:
    chunks = await e2e.stream(user("count these few words please"))
    assert all(c.choices and c.usage is None for c in chunks)


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failure", "error", "status", "code"),
    [
        ("overloaded", openai.InternalServerError, 503, "upstream_overloaded"),
        ("rate_limited", openai.RateLimitError, 429, "upstream_rate_limited"),
        ("server_error", openai.InternalServerError, 502, "upstream_error"),
    ],
)
async def test_upstream_failure_maps_to_the_sdk_exception(
    e2e: E2E, failure: str, error: type[openai.APIStatusError], status: int, code: str
) -> None:
    e2e.backend.fail_with(failure)
    with pytest.raises(error) as caught:
        await e2e.chat(user("hello"))
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == code


@pytest.mark.parametrize("how", ["error", "cut"])
async def test_mid_stream_failure_raises_api_error_while_iterating(e2e: E2E, how: str) -> None:
    e2e.backend.break_stream(how)
    stream: Any = await e2e.client.chat.completions.create(
        model=e2e.model, messages=user("one two three four five six seven eight nine"), stream=True
    )
    received: list[Any] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            received.append(chunk)
    assert text_of(received)  # the failure came after some text
    assert not finishes(received)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "upstream_error"


# -- the sync SDK over a real socket ------------------------------------------------------
@pytest.fixture(params=PROVIDERS)
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Backend, openai.OpenAI]]:
    backend = new_backend(request.param)
    store = MemoryKeyStore()
    _, key = asyncio.run(store.create("e2e-sync"))
    app = create_app(
        _config(), providers={backend.provider_name: backend.provider()}, key_store=store
    )
    with serve_in_thread(app, lifespan="on") as url:
        client = openai.OpenAI(api_key=key, base_url=url, max_retries=0)
        try:
            yield backend, client
        finally:
            client.close()


def test_sync_sdk_over_uvicorn_chats_and_streams(served: tuple[Backend, openai.OpenAI]) -> None:
    backend, client = served
    messages = user("one two three four five")
    completion = client.chat.completions.create(model=backend.model, messages=messages)
    stream = client.chat.completions.create(
        model=backend.model, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert completion.choices[0].message.content == "one two three four five"
    assert text_of(chunks) == completion.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == sum(backend.reported_usage())
