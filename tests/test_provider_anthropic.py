"""AnthropicProvider against the strict fake: translation both ways, streaming, errors.

Every test on the `upstream` fixture (itself or through a provider fixture)
runs once per upstream client: in-process httpx, and httpx, aiohttp and
httptools over a real socket (tests/served_fakes.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from axione_asgi.config import ProviderConfig
from axione_asgi.errors import (
    AxioneError,
    InvalidRequest,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
)
from axione_asgi.openai_types import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from axione_asgi.providers.anthropic import AnthropicProvider
from tests.fakes.anthropic_fake import FAKE_API_KEY, FakeAnthropic
from tests.served_fakes import Upstream, served_fakes, upstream

__all__ = ["served_fakes", "upstream"]  # fixtures used here

MODEL = "claude-3.5-sonnet"
UPSTREAM_MODEL = "claude-3-5-sonnet-latest"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
PNG_B64 = base64.b64encode(PNG_BYTES).decode()
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
CLOCK = {"type": "function", "function": {"name": "get_time"}}


def request(messages: list[dict[str, Any]] | str, **fields: Any) -> ChatCompletionRequest:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return ChatCompletionRequest.model_validate(
        {"model": f"anthropic/{MODEL}", "messages": messages, **fields}
    )


@pytest.fixture
def fake() -> FakeAnthropic:
    return FakeAnthropic(cache_creation_input_tokens=7, cache_read_input_tokens=11)


def make_provider(
    upstream: Upstream, fake: FakeAnthropic, api_key: str = FAKE_API_KEY
) -> AnthropicProvider:
    link = upstream.link(fake, "http://anthropic.test")
    config = ProviderConfig(
        kind="anthropic",
        base_url=link.base_url,
        transport=link.transport,
        models={MODEL: UPSTREAM_MODEL},
        default_max_tokens=321,
    )
    return AnthropicProvider("anthropic", config, api_key=api_key, transport=link.asgi)


@pytest.fixture
async def provider(
    upstream: Upstream, fake: FakeAnthropic, anyio_backend: str
) -> AsyncIterator[AnthropicProvider]:
    # Every test through this fixture runs once per client (tests/served_fakes.py).
    provider = make_provider(upstream, fake)
    await provider.open()
    yield provider
    await provider.aclose()


async def collect(
    provider: AnthropicProvider, req: ChatCompletionRequest
) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in provider.stream(req, MODEL)]


def streamed_text(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- request translation --------------------------------------------------------


@pytest.mark.anyio
async def test_chat_sends_auth_headers_and_upstream_model(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await provider.chat(request("Hi"), MODEL)
    headers = fake.request_headers[-1]
    assert headers["x-api-key"] == FAKE_API_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json"
    assert fake.last_request["model"] == UPSTREAM_MODEL


@pytest.mark.anyio
async def test_plain_chat_answers_with_assistant_text(provider: AnthropicProvider) -> None:
    answer = await provider.chat(request("Hello Claude"), MODEL)
    assert isinstance(answer, ChatCompletion)
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "Hello Claude"
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].finish_reason == "stop"


@pytest.mark.anyio
async def test_system_and_developer_messages_become_top_level_system(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Hi"},
    ]
    await provider.chat(request(messages), MODEL)
    sent = fake.last_request
    assert sent["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Answer in French."},
    ]
    assert [m["role"] for m in sent["messages"]] == ["user"]


@pytest.mark.anyio
async def test_consecutive_same_role_messages_merge(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    messages = [
        {"role": "user", "content": "First"},
        {"role": "user", "content": "Second"},
        {"role": "assistant", "content": "Answer"},
        {"role": "assistant", "content": "More"},
        {"role": "user", "content": "Third"},
    ]
    answer = await provider.chat(request(messages), MODEL)
    sent = fake.last_request["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [[b["text"] for b in m["content"]] for m in sent] == [
        ["First", "Second"],
        ["Answer", "More"],
        ["Third"],
    ]
    assert answer.choices[0].message.content == "Third"


@pytest.mark.anyio
async def test_conversation_opening_with_assistant_gets_a_user_turn_first(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "assistant", "content": "How can I help?"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    await provider.chat(request(messages), MODEL)
    roles = [m["role"] for m in fake.last_request["messages"]]
    assert roles == ["user", "assistant", "user"]


@pytest.mark.anyio
async def test_empty_user_text_is_dropped(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    messages = [{"role": "user", "content": "  "}, {"role": "user", "content": "Real question"}]
    await provider.chat(request(messages), MODEL)
    assert fake.last_request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Real question"}]}
    ]


@pytest.mark.anyio
async def test_final_assistant_prefill_loses_trailing_whitespace(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    messages = [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "One, "}]
    await provider.chat(request(messages), MODEL)
    assert fake.last_request["messages"][-1]["content"] == [{"type": "text", "text": "One,"}]


@pytest.mark.anyio
async def test_max_tokens_defaults_to_config(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await provider.chat(request("Hi"), MODEL)
    assert fake.last_request["max_tokens"] == 321


@pytest.mark.anyio
async def test_max_completion_tokens_wins_over_max_tokens(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await provider.chat(request("Hi", max_tokens=50, max_completion_tokens=40), MODEL)
    assert fake.last_request["max_tokens"] == 40


@pytest.mark.anyio
async def test_sampling_fields_translate(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    await provider.chat(
        request("Hi", temperature=0.4, top_p=0.9, user="user-42", seed=7, logit_bias={"1": 2}),
        MODEL,
    )
    sent = fake.last_request
    assert (sent["temperature"], sent["top_p"]) == (0.4, 0.9)
    assert sent["metadata"] == {"user_id": "user-42"}
    assert "seed" not in sent and "logit_bias" not in sent


@pytest.mark.anyio
async def test_temperature_above_one_is_clamped(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await provider.chat(request("Hi", temperature=1.7), MODEL)
    assert fake.last_request["temperature"] == 1.0


@pytest.mark.anyio
async def test_stop_becomes_stop_sequences_without_whitespace_only_entries(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await provider.chat(request("Hi", stop=["END", "\n"]), MODEL)
    assert fake.last_request["stop_sequences"] == ["END"]


@pytest.mark.anyio
async def test_json_response_format_becomes_a_system_instruction(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    await provider.chat(request("Hi", response_format=fmt), MODEL)
    instruction = fake.last_request["system"][-1]["text"]
    assert "JSON" in instruction
    assert json.dumps(schema, sort_keys=True) in instruction


@pytest.mark.anyio
async def test_n_above_one_is_rejected(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await provider.chat(request("Hi", n=2), MODEL)
    assert caught.value.param == "n"
    assert fake.requests == []


# -- images -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_data_url_image_becomes_a_base64_block(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
    ]
    await provider.chat(request([{"role": "user", "content": parts}]), MODEL)
    assert fake.last_request["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
    }


@pytest.mark.anyio
async def test_mislabelled_data_url_uses_the_real_image_type(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    part = {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG_B64}"}}
    await provider.chat(request([{"role": "user", "content": [part]}]), MODEL)
    assert fake.last_request["messages"][0]["content"][0]["source"]["media_type"] == "image/png"


@pytest.mark.anyio
async def test_http_image_url_becomes_a_url_block(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    url = "https://example.com/cat.png"
    part = {"type": "image_url", "image_url": {"url": url}}
    await provider.chat(request([{"role": "user", "content": [part]}]), MODEL)
    assert fake.last_request["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": url}}
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "data:image/bmp;base64,Qk0=",
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png,rawbytes",
        "data:image/png;base64,@@not-base64@@",
        "ftp://example.com/cat.png",
    ],
)
async def test_unsupported_image_is_rejected_naming_the_part(
    provider: AnthropicProvider, fake: FakeAnthropic, url: str
) -> None:
    parts = [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(InvalidRequest) as caught:
        await provider.chat(request([{"role": "user", "content": parts}]), MODEL)
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert fake.requests == []


# -- tools --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tools_translate_with_default_schema(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await provider.chat(request("Hi", tools=[WEATHER, CLOCK]), MODEL)
    assert fake.last_request["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather in a city",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "tool", "name": "get_time"},
        ),
    ],
)
async def test_tool_choice_translates(
    provider: AnthropicProvider, fake: FakeAnthropic, choice: Any, expected: dict[str, Any]
) -> None:
    await provider.chat(request("Hi", tools=[WEATHER, CLOCK], tool_choice=choice), MODEL)
    assert fake.last_request["tool_choice"] == expected


@pytest.mark.anyio
async def test_named_tool_choice_is_called(provider: AnthropicProvider) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    answer = await provider.chat(request("Hi", tools=[WEATHER, CLOCK], tool_choice=choice), MODEL)
    calls = answer.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["get_time"]
    assert calls[0].function.arguments == "{}"


@pytest.mark.anyio
async def test_parallel_tool_calls_false_disables_parallel_use(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await provider.chat(request("Hi", tools=[WEATHER], parallel_tool_calls=False), MODEL)
    assert fake.last_request["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.anyio
async def test_tool_call_round_trip(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    history: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await provider.chat(request(history, tools=[WEATHER]), MODEL)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me use get_weather."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "example"}

    history.append(choice.message.model_dump(exclude_none=True))
    history.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C"})
    final = await provider.chat(request(history, tools=[WEATHER]), MODEL)

    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "Tool said: Sunny, 24 C"
    sent = fake.last_request["messages"]
    assert sent[1]["content"][1] == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": {"city": "example"},
    }
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24 C"}],
    }


@pytest.mark.anyio
async def test_consecutive_tool_results_merge_into_one_user_turn_before_text(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]
    messages = [
        {"role": "user", "content": "Time twice?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_a", "content": "noon"},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "1pm"}]},
        {"role": "user", "content": "Thanks"},
    ]
    await provider.chat(request(messages, tools=[CLOCK]), MODEL)
    last = fake.last_request["messages"][-1]
    assert [b["type"] for b in last["content"]] == ["tool_result", "tool_result", "text"]
    assert last["content"][1]["content"] == [{"type": "text", "text": "1pm"}]


@pytest.mark.anyio
async def test_invalid_tool_arguments_are_rejected(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    call = {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    messages = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_a", "content": "done"},
    ]
    with pytest.raises(InvalidRequest) as caught:
        await provider.chat(request(messages), MODEL)
    assert caught.value.status == 400
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"
    assert fake.requests == []


@pytest.mark.anyio
async def test_unanswered_tool_call_is_rejected(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    call = {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "user", "content": "never mind"},
    ]
    with pytest.raises(InvalidRequest):
        await provider.chat(request(messages), MODEL)
    assert fake.requests == []


@pytest.mark.anyio
async def test_tool_history_without_tools_declares_them_uncallable(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    call = {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_a", "content": "found it"},
    ]
    answer = await provider.chat(request(messages), MODEL)
    assert fake.last_request["tools"][0]["name"] == "lookup"
    assert fake.last_request["tool_choice"] == {"type": "none"}
    assert answer.choices[0].message.content == "Tool said: found it"


@pytest.mark.anyio
async def test_foreign_tool_call_ids_are_made_acceptable(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    call = {"id": "fn.call:1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "fn.call:1", "content": "ok"},
    ]
    await provider.chat(request(messages), MODEL)
    sent = fake.last_request["messages"]
    assert sent[1]["content"][0]["id"] == sent[2]["content"][0]["tool_use_id"] == "fn_call_1"


# -- finishes and usage --------------------------------------------------------------


@pytest.mark.anyio
async def test_stop_sequence_finishes_with_stop(provider: AnthropicProvider) -> None:
    answer = await provider.chat(request("alpha beta END gamma", stop="END"), MODEL)
    assert answer.choices[0].message.content == "alpha beta "
    assert answer.choices[0].finish_reason == "stop"


@pytest.mark.anyio
async def test_max_tokens_finishes_with_length(provider: AnthropicProvider) -> None:
    answer = await provider.chat(request("one two three four five", max_tokens=2), MODEL)
    assert answer.choices[0].message.content == "one two "
    assert answer.choices[0].finish_reason == "length"


@pytest.mark.anyio
async def test_refusal_finishes_with_content_filter(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.refuse = True
    answer = await provider.chat(request("Something bad"), MODEL)
    assert answer.choices[0].finish_reason == "content_filter"


@pytest.mark.anyio
async def test_usage_counts_cache_tokens_as_prompt(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    answer = await provider.chat(request("Count me"), MODEL)
    reported = fake.answers[-1]["usage"]
    prompt = reported["input_tokens"] + 7 + 11
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == prompt
    assert answer.usage.completion_tokens == reported["output_tokens"]
    assert answer.usage.total_tokens == prompt + reported["output_tokens"]


# -- streaming ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_yields_text_as_deltas(provider: AnthropicProvider) -> None:
    chunks = await collect(provider, request("one two three", stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert [c.choices[0].delta.content for c in text_chunks] == ["one ", "two ", "three"]
    assert len({c.id for c in chunks}) == 1


@pytest.mark.anyio
async def test_stream_ends_with_finish_then_usage_chunk(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    chunks = await collect(provider, request("one two three four", stream=True, max_tokens=3))
    *_, finish, usage = chunks
    assert finish.choices[0].finish_reason == "length"
    assert usage.choices == []
    reported = fake.answers[-1]["usage"]
    assert usage.usage is not None
    assert usage.usage.prompt_tokens == reported["input_tokens"] + 7 + 11
    assert usage.usage.completion_tokens == reported["output_tokens"]
    assert fake.last_request["stream"] is True


@pytest.mark.anyio
async def test_stream_usage_survives_input_counts_repeated_in_message_delta(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.delta_usage_repeats_input = True
    whole = await provider.chat(request("one two"), MODEL)
    chunks = await collect(provider, request("one two", stream=True))
    assert chunks[-1].usage == whole.usage


@pytest.mark.anyio
async def test_stream_tool_calls_reassemble_to_the_upstream_input(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.tool_calls_per_turn = 2
    fake.tool_input = {"city": "Paris", "days": [1, 2, 3], "note": "a longer value"}
    chunks = await collect(provider, request("Weather?", stream=True, tools=[WEATHER, CLOCK]))
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            if delta.id:
                assert delta.type == "function" and delta.function is not None
                assert delta.function.arguments == ""
                call["id"], call["name"] = delta.id, delta.function.name or ""
            elif delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    assert sorted(calls) == [0, 1]
    upstream = [b for b in fake.answers[-1]["content"] if b["type"] == "tool_use"]
    for index, block in enumerate(upstream):
        assert calls[index]["id"] == block["id"]
        assert calls[index]["name"] == block["name"]
        assert json.loads(calls[index]["arguments"]) == block["input"]
    assert streamed_text(chunks) == "Let me use get_weather, get_time."
    assert chunks[-2].choices[0].finish_reason == "tool_calls"


@pytest.mark.anyio
async def test_stream_tool_call_without_input_gets_empty_object_arguments(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.tool_input = {}
    chunks = await collect(provider, request("Time?", stream=True, tools=[CLOCK]))
    arguments = "".join(
        d.function.arguments or ""
        for c in chunks
        if c.choices
        for d in c.choices[0].delta.tool_calls or []
        if d.function
    )
    assert arguments == "{}"


@pytest.mark.anyio
async def test_stream_error_event_raises_upstream_error(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.stream_error_after = 4
    seen: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamError) as caught:
        async for chunk in provider.stream(request("one two three", stream=True), MODEL):
            seen.append(chunk)
    assert (caught.value.status, caught.value.code) == (503, "upstream_overloaded")
    assert streamed_text(seen) == "one "


@pytest.mark.anyio
async def test_stream_cut_before_message_stop_raises_upstream_error(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.cut_stream_after = 5
    with pytest.raises(UpstreamError):
        await collect(provider, request("one two three", stream=True))


@pytest.mark.anyio
async def test_stream_upstream_error_status_raises_before_any_chunk(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.fail_next(529, "overloaded_error", "Overloaded")
    stream = provider.stream(request("Hi", stream=True), MODEL)
    with pytest.raises(UpstreamError) as caught:
        await anext(stream)
    assert caught.value.status == 503


# -- errors ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_overloaded_529_maps_to_503_upstream_overloaded(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.fail_next(529, "overloaded_error", "Overloaded")
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(request("Hi"), MODEL)
    assert (caught.value.status, caught.value.code) == (503, "upstream_overloaded")


@pytest.mark.anyio
async def test_rate_limit_429_keeps_retry_after(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.fail_next(429, "rate_limit_error", "Number of requests exceeded", {"retry-after": "17"})
    with pytest.raises(RateLimited) as caught:
        await provider.chat(request("Hi"), MODEL)
    assert (caught.value.status, caught.value.code) == (429, "upstream_rate_limited")
    assert caught.value.headers == {"retry-after": "17"}


@pytest.mark.anyio
async def test_rejected_key_maps_to_502_upstream_auth_failed(
    upstream: Upstream, fake: FakeAnthropic
) -> None:
    provider = make_provider(upstream, fake, api_key="sk-ant-api03-wrong-key-000000")
    await provider.open()
    try:
        with pytest.raises(UpstreamError) as caught:
            await provider.chat(request("Hi"), MODEL)
    finally:
        await provider.aclose()
    assert (caught.value.status, caught.value.code) == (502, "upstream_auth_failed")


@pytest.mark.anyio
async def test_invalid_request_keeps_the_provider_message(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.fail_next(400, "invalid_request_error", "messages.0.content: bad things")
    with pytest.raises(InvalidRequest) as caught:
        await provider.chat(request("Hi"), MODEL)
    assert caught.value.status == 400
    assert "messages.0.content: bad things" in caught.value.message


@pytest.mark.anyio
async def test_prompt_too_long_maps_to_context_length_exceeded(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.fail_next(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000")
    with pytest.raises(InvalidRequest) as caught:
        await provider.chat(request("Hi"), MODEL)
    assert caught.value.code == "context_length_exceeded"


@pytest.mark.anyio
async def test_request_too_large_maps_to_413(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.fail_next(413, "request_too_large", "Request exceeds the maximum allowed number of bytes")
    with pytest.raises(RequestTooLarge):
        await provider.chat(request("Hi"), MODEL)


@pytest.mark.anyio
async def test_api_key_never_leaks_into_errors(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.fail_next(400, "invalid_request_error", f"bad header x-api-key: {FAKE_API_KEY}")
    fake.fail_next(500, "api_error", f"internal error for {FAKE_API_KEY}")
    for _ in range(2):
        with pytest.raises(AxioneError) as caught:
            await provider.chat(request("Hi"), MODEL)
        assert FAKE_API_KEY not in caught.value.message
        assert FAKE_API_KEY.encode() not in caught.value.body()
