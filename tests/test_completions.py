"""`POST /completions`, OpenAI's legacy text completions, served through the chat path (issue 16).

LlamaIndex's `complete()` on `OpenAILike`, LangChain's `OpenAI` LLM and older
tools call it. Each prompt is one user message to the model; the answer is a
`text_completion` with `text` choices and `logprobs` null, streamed or not,
under the same keys, quota, headers and ledger as chat.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.config import ProviderConfig
from axione_asgi.providers.openai import OpenAIProvider
from axione_asgi.stores import MemoryKeyStore
from tests.fakes.openai_fake import FAKE_OPENAI_KEY, FakeOpenAI

pytestmark = pytest.mark.anyio

PROMPT = "Say this is a test"


@dataclass
class Gateway:
    client: openai.AsyncOpenAI
    raw: httpx2.AsyncClient
    upstream: FakeOpenAI


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    upstream = FakeOpenAI()
    provider = OpenAIProvider(
        "openai",
        ProviderConfig(kind="openai", base_url="http://openai/v1", models={"gpt-4o": "gpt-4o"}),
        api_key=FAKE_OPENAI_KEY,
        transport=httpx.ASGITransport(app=upstream),
    )
    store = MemoryKeyStore()
    _, key = await store.create("completions")
    config = AxioneConfig(storage={"keys": "memory://", "ledger": "memory://"})
    app = create_app(config, providers={"openai": provider}, key_store=store)
    raw = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"Authorization": f"Bearer {key}"},
    )
    client = openai.AsyncOpenAI(
        api_key=key, base_url="http://gateway/", max_retries=0, http_client=raw
    )
    async with app.lifespan(), raw:
        yield Gateway(client, raw, upstream)


async def events(gw: Gateway, body: dict[str, Any]) -> list[str]:
    """The `data:` payloads of a streamed answer, in order."""
    async with gw.raw.stream("POST", "/completions", json={**body, "stream": True}) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        return [line[6:] async for line in answer.aiter_lines() if line.startswith("data: ")]


async def test_a_completion_is_a_text_completion_answered_by_the_model(gw: Gateway) -> None:
    completion = await gw.client.completions.create(model="demo/echo", prompt=PROMPT)
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.model == "demo/echo"
    [choice] = completion.choices
    assert (choice.text, choice.index, choice.logprobs, choice.finish_reason) == (
        PROMPT,
        0,
        None,
        "stop",
    )
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


async def test_the_upstream_gets_a_chat_request_with_the_prompt_as_one_user_message(
    gw: Gateway,
) -> None:
    completion = await gw.client.completions.create(
        model="openai/gpt-4o",
        prompt=PROMPT,
        temperature=0.5,
        stop=["zzz"],
        suffix="ignored",
        best_of=1,
        logprobs=2,
        extra_body={"x_vendor": 1},
    )
    assert completion.choices[0].text == PROMPT
    assert gw.upstream.last_path == "/v1/chat/completions"
    sent = gw.upstream.last_body
    assert sent is not None
    assert sent["messages"] == [{"role": "user", "content": PROMPT}]
    assert (sent["temperature"], sent["stop"], sent["x_vendor"]) == (0.5, ["zzz"], 1)
    assert not {"prompt", "suffix", "best_of", "logprobs", "echo"} & set(sent)


async def test_max_tokens_caps_the_text_with_finish_length(gw: Gateway) -> None:
    completion = await gw.client.completions.create(
        model="demo/echo", prompt="one two three four", max_tokens=2
    )
    assert completion.choices[0].text == "one two "
    assert completion.choices[0].finish_reason == "length"


async def test_echo_puts_the_prompt_before_the_text(gw: Gateway) -> None:
    completion = await gw.client.completions.create(model="demo/echo", prompt="hi", echo=True)
    assert completion.choices[0].text == "hihi"
    streamed = await events(gw, {"model": "demo/echo", "prompt": "hi", "echo": True})
    text = "".join(json.loads(e)["choices"][0]["text"] for e in streamed[:-1])
    assert text == "hihi"


async def test_a_stream_is_text_completion_chunks_then_done(gw: Gateway) -> None:
    body = {"model": "demo/echo", "prompt": "one two three"}
    streamed = await events(gw, {**body, "stream_options": {"include_usage": True}})
    assert streamed[-1] == "[DONE]"
    chunks = [json.loads(e) for e in streamed[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1
    *texts, usage = chunks
    assert [c["choices"][0]["text"] for c in texts] == ["one ", "two ", "three", ""]
    assert [c["choices"][0]["finish_reason"] for c in texts] == [None, None, None, "stop"]
    assert all(c["choices"][0]["logprobs"] is None for c in texts)
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3


async def test_a_stream_without_include_usage_has_no_usage_chunk(gw: Gateway) -> None:
    streamed = await events(gw, {"model": "demo/echo", "prompt": "one two"})
    chunks = [json.loads(e) for e in streamed[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)


async def test_the_sdk_reads_the_stream(gw: Gateway) -> None:
    stream = await gw.client.completions.create(
        model="openai/gpt-4o", prompt="streamed through openai", stream=True
    )
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == "streamed through openai"


async def test_a_list_of_one_prompt_is_one_prompt(gw: Gateway) -> None:
    # LangChain's OpenAI LLM sends its prompts as a list, even one.
    completion = await gw.client.completions.create(model="demo/echo", prompt=[PROMPT])
    assert [c.text for c in completion.choices] == [PROMPT]


async def test_several_prompts_get_their_choices_in_order(gw: Gateway) -> None:
    completion = await gw.client.completions.create(
        model="demo/echo", prompt=["first one", "second"], n=2
    )
    assert [(c.index, c.text) for c in completion.choices] == [
        (0, "first one"),
        (1, "first one"),
        (2, "second"),
        (3, "second"),
    ]


async def test_a_token_array_prompt_is_a_400_naming_prompt(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await gw.client.completions.create(model="demo/echo", prompt=[1, 2, 3])
    assert refused.value.param == "prompt"  # type: ignore[attr-defined]


async def test_a_request_without_prompt_is_a_400_missing_field(gw: Gateway) -> None:
    answer = await gw.raw.post("/completions", json={"model": "demo/echo"})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "missing_field"


async def test_an_unknown_model_is_404_model_not_found(gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await gw.client.completions.create(model="nobody/nothing", prompt="x")
    assert missing.value.code == "model_not_found"  # type: ignore[attr-defined]


async def test_a_completion_counts_against_the_quota_like_chat(gw: Gateway) -> None:
    answer = await gw.client.completions.with_raw_response.create(model="demo/echo", prompt=PROMPT)
    completion = answer.parse()
    headers = answer.headers
    assert headers["x-ratelimit-limit-requests"] == "1000"
    assert headers["x-ratelimit-remaining-requests"] == "999"
    assert "x-ratelimit-remaining-tokens" in headers and headers["x-request-id"]
    usage = (await gw.raw.get("/usage")).json()
    assert usage["used"]["requests"] == 1
    assert completion.usage is not None
    assert usage["used"]["tokens"] == completion.usage.total_tokens
