"""GeminiProvider against the strict fake Gemini: translation both ways, streams, errors.

Every test that takes `upstream` runs once per upstream client: in-process httpx,
and httpx, aiohttp and httptools over a real socket (tests/served_fakes.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from axione_asgi.config import ProviderConfig
from axione_asgi.errors import (
    InvalidRequest,
    ModelNotFound,
    ProviderUnavailable,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from axione_asgi.openai_types import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from axione_asgi.providers.gemini import SKIP_SIGNATURE, GeminiProvider
from tests.fakes.gemini_fake import FAKE_KEY, GeminiFake
from tests.served_fakes import Upstream, served_fakes, upstream

__all__ = ["served_fakes", "upstream"]  # fixtures used here

pytestmark = pytest.mark.anyio

MODEL = "gemini-2.5-flash-lite"
MODELS = {MODEL: MODEL, "gemini-3": "gemini-3-flash-preview", "gone": "gemini-0-retired"}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image-bytes").decode()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


@asynccontextmanager
async def gemini(
    upstream: Upstream,
    fake: GeminiFake,
    *,
    api_key: str | None = FAKE_KEY,
    base_url: str = "http://gemini.test",
) -> AsyncIterator[GeminiProvider]:
    """A provider on `fake`, through the client `upstream` names (tests/served_fakes.py)."""
    link = upstream.link(fake, base_url)
    config = ProviderConfig(
        kind="gemini",
        base_url=link.base_url,
        transport=link.transport,
        models=MODELS,
    )
    provider = GeminiProvider("google", config, api_key=api_key, transport=link.asgi)
    await provider.open()
    try:
        yield provider
    finally:
        await provider.aclose()


def req(*messages: dict[str, Any], **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": f"google/{MODEL}", "messages": list(messages), **fields}
    )


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


async def chat(
    upstream: Upstream, fake: GeminiFake, request: ChatCompletionRequest, model: str = MODEL
) -> ChatCompletion:
    async with gemini(upstream, fake) as provider:
        return await provider.chat(request, model)


async def stream(
    upstream: Upstream, fake: GeminiFake, request: ChatCompletionRequest, model: str = MODEL
) -> list[ChatCompletionChunk]:
    async with gemini(upstream, fake) as provider:
        return [chunk async for chunk in provider.stream(request, model)]


# -- text ----------------------------------------------------------------------
async def test_text_chat_returns_the_upstream_answer(upstream: Upstream) -> None:
    answer = await chat(upstream, GeminiFake(), req(user("hello from the test")))
    assert answer.choices[0].message.content == "hello from the test"
    assert answer.choices[0].finish_reason == "stop"


async def test_request_goes_to_generate_content_of_the_upstream_model(upstream: Upstream) -> None:
    fake = GeminiFake()
    await chat(upstream, fake, req(user("hi")), model="gemini-3")
    assert fake.last.path == "/v1beta/models/gemini-3-flash-preview:generateContent"


async def test_api_key_travels_in_header_never_in_url(upstream: Upstream) -> None:
    fake = GeminiFake()
    await chat(upstream, fake, req(user("hi")))
    assert fake.last.headers["x-goog-api-key"] == FAKE_KEY
    assert "key" not in fake.last.query


async def test_user_and_assistant_become_user_and_model_contents(upstream: Upstream) -> None:
    fake = GeminiFake()
    await chat(
        upstream, fake, req(user("one"), {"role": "assistant", "content": "two"}, user("three"))
    )
    assert fake.last_body["contents"] == [
        {"role": "user", "parts": [{"text": "one"}]},
        {"role": "model", "parts": [{"text": "two"}]},
        {"role": "user", "parts": [{"text": "three"}]},
    ]


async def test_system_and_developer_messages_join_into_system_instruction(
    upstream: Upstream,
) -> None:
    fake = GeminiFake()
    await chat(
        upstream,
        fake,
        req(
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            user("hi"),
        ),
    )
    assert fake.last_body["systemInstruction"] == {
        "parts": [{"text": "Be brief.\n\nAnswer in French."}]
    }
    assert [c["role"] for c in fake.last_body["contents"]] == ["user"]


async def test_consecutive_messages_of_one_role_are_merged(upstream: Upstream) -> None:
    fake = GeminiFake()
    await chat(
        upstream,
        fake,
        req(
            user("a"),
            user([{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]),
            {"role": "assistant", "content": "d"},
            {"role": "assistant", "content": "e"},
            user("f"),
        ),
    )
    assert fake.last_body["contents"] == [
        {"role": "user", "parts": [{"text": "a"}, {"text": "b"}, {"text": "c"}]},
        {"role": "model", "parts": [{"text": "d"}, {"text": "e"}]},
        {"role": "user", "parts": [{"text": "f"}]},
    ]


async def test_empty_text_is_left_out_because_gemini_rejects_it(upstream: Upstream) -> None:
    fake = GeminiFake()
    await chat(upstream, fake, req(user(""), {"role": "assistant", "content": ""}, user("real")))
    assert fake.last_body["contents"] == [{"role": "user", "parts": [{"text": "real"}]}]


async def test_request_with_only_a_system_message_is_invalid(upstream: Upstream) -> None:
    with pytest.raises(InvalidRequest):
        await chat(upstream, GeminiFake(), req({"role": "system", "content": "alone"}))


async def test_sampling_fields_become_generation_config(upstream: Upstream) -> None:
    fake = GeminiFake()
    await chat(
        upstream,
        fake,
        req(
            user("hi"),
            max_tokens=50,
            temperature=0.3,
            top_p=0.9,
            stop=["END", "STOP"],
            n=2,
            seed=7,
            user="end-user-42",
            presence_penalty=0.5,
        ),
    )
    assert fake.last_body["generationConfig"] == {
        "maxOutputTokens": 50,
        "temperature": 0.3,
        "topP": 0.9,
        "stopSequences": ["END", "STOP"],
        "candidateCount": 2,
        "seed": 7,
    }
    assert set(fake.last_body) == {"contents", "generationConfig"}


async def test_max_completion_tokens_becomes_max_output_tokens(upstream: Upstream) -> None:
    fake = GeminiFake()
    await chat(upstream, fake, req(user("hi"), max_completion_tokens=12))
    assert fake.last_body["generationConfig"] == {"maxOutputTokens": 12}


async def test_json_object_format_asks_for_json(upstream: Upstream) -> None:
    fake = GeminiFake()
    answer = await chat(upstream, fake, req(user("hi"), response_format={"type": "json_object"}))
    assert fake.last_body["generationConfig"] == {"responseMimeType": "application/json"}
    assert json.loads(answer.choices[0].message.content or "") == {"echo": "hi"}


async def test_json_schema_format_sends_a_gemini_schema(upstream: Upstream) -> None:
    fake = GeminiFake()
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    answer = await chat(
        upstream,
        fake,
        req(
            user("Ada"),
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": schema, "strict": True},
            },
        ),
    )
    assert fake.last_body["generationConfig"]["responseSchema"] == {
        "type": "OBJECT",
        "properties": {"name": {"type": "STRING"}, "age": {"type": "INTEGER"}},
        "required": ["name", "age"],
        "propertyOrdering": ["name", "age"],
    }
    assert json.loads(answer.choices[0].message.content or "") == {"name": "Ada", "age": 1}


# -- tools ---------------------------------------------------------------------
async def test_tools_become_function_declarations_without_rejected_schema_keys(
    upstream: Upstream,
) -> None:
    fake = GeminiFake()
    await chat(upstream, fake, req(user("Paris"), tools=[WEATHER_TOOL]))
    assert fake.last_body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {"city": {"type": "STRING"}},
                        "required": ["city"],
                    },
                }
            ]
        }
    ]


async def test_function_without_parameters_is_declared_without_parameters(
    upstream: Upstream,
) -> None:
    fake = GeminiFake()
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    answer = await chat(upstream, fake, req(user("time?"), tools=[tool]))
    assert fake.last_body["tools"] == [{"functionDeclarations": [{"name": "now"}]}]
    assert answer.choices[0].message.tool_calls is not None


async def test_function_call_becomes_tool_call(upstream: Upstream) -> None:
    answer = await chat(upstream, GeminiFake(), req(user("Paris"), tools=[WEATHER_TOOL]))
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")


async def test_tool_call_ids_are_stable_for_the_same_answer(upstream: Upstream) -> None:
    first = await chat(upstream, GeminiFake(), req(user("Paris"), tools=[WEATHER_TOOL]))
    second = await chat(upstream, GeminiFake(), req(user("Paris"), tools=[WEATHER_TOOL]))
    assert first.choices[0].message.tool_calls == second.choices[0].message.tool_calls


async def test_tool_call_round_trip_reaches_a_final_answer(upstream: Upstream) -> None:
    fake = GeminiFake()
    async with gemini(upstream, fake) as provider:
        first = await provider.chat(req(user("Paris"), tools=[WEATHER_TOOL]), MODEL)
        calls = first.choices[0].message.tool_calls
        assert calls is not None
        history = [
            user("Paris"),
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": calls[0].id, "content": '{"sky": "sunny"}'},
        ]
        final = await provider.chat(req(*history, tools=[WEATHER_TOOL]), MODEL)
    assert fake.last_body["contents"][1:] == [
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}}],
        },
    ]
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == 'get_weather returned {"sky": "sunny"}.'


async def test_plain_text_tool_result_is_wrapped_in_content(upstream: Upstream) -> None:
    fake = GeminiFake()
    call = {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    await chat(
        upstream,
        fake,
        req(
            user("go"),
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_x", "content": "42 degrees"},
        ),
    )
    assert fake.last_body["contents"][2]["parts"] == [
        {"functionResponse": {"id": "call_x", "name": "f", "response": {"content": "42 degrees"}}}
    ]


async def test_foreign_tool_call_ids_are_sent_back_to_gemini(upstream: Upstream) -> None:
    fake = GeminiFake()
    call = {"id": "toolu_01", "type": "function", "function": {"name": "f", "arguments": ""}}
    await chat(
        upstream,
        fake,
        req(
            user("go"),
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "toolu_01", "content": "ok"},
        ),
    )
    model_turn, result_turn = fake.last_body["contents"][1:]
    assert model_turn["parts"] == [{"functionCall": {"name": "f", "args": {}, "id": "toolu_01"}}]
    assert result_turn["parts"][0]["functionResponse"]["id"] == "toolu_01"


async def test_invalid_tool_call_arguments_are_an_invalid_request(upstream: Upstream) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{nope"}}
    with pytest.raises(InvalidRequest) as caught:
        await chat(
            upstream,
            GeminiFake(),
            req(
                user("go"),
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "x"},
            ),
        )
    assert caught.value.status == 400
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


async def test_tool_result_for_an_unknown_call_is_an_invalid_request(upstream: Upstream) -> None:
    with pytest.raises(InvalidRequest):
        await chat(
            upstream,
            GeminiFake(),
            req(user("go"), {"role": "tool", "tool_call_id": "nope", "content": "x"}),
        )


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
async def test_tool_choice_becomes_function_calling_mode(
    upstream: Upstream, choice: Any, config: Any
) -> None:
    fake = GeminiFake()
    await chat(upstream, fake, req(user("Paris"), tools=[WEATHER_TOOL], tool_choice=choice))
    assert fake.last_body["toolConfig"] == {"functionCallingConfig": config}


async def test_tool_choice_none_gets_a_text_answer(upstream: Upstream) -> None:
    answer = await chat(
        upstream, GeminiFake(), req(user("Paris"), tools=[WEATHER_TOOL], tool_choice="none")
    )
    assert answer.choices[0].message.content == "Paris"
    assert answer.choices[0].message.tool_calls is None


async def test_gemini3_thought_signature_travels_with_the_tool_call(upstream: Upstream) -> None:
    fake = GeminiFake()
    async with gemini(upstream, fake) as provider:
        first = await provider.chat(req(user("Paris"), tools=[WEATHER_TOOL]), "gemini-3")
        calls = first.choices[0].message.tool_calls
        assert calls is not None
        signature = calls[0].model_dump()["extra_content"]["google"]["thought_signature"]
        history = [
            user("Paris"),
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        ]
        await provider.chat(req(*history, tools=[WEATHER_TOOL]), "gemini-3")
    assert fake.last_body["contents"][1]["parts"][0]["thoughtSignature"] == signature


async def test_gemini3_call_without_signature_gets_google_placeholder(upstream: Upstream) -> None:
    fake = GeminiFake()
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        user("go"),
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    await chat(upstream, fake, req(*history), model="gemini-3")
    assert fake.last_body["contents"][1]["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE


async def test_gemini2_call_without_signature_gets_no_placeholder(upstream: Upstream) -> None:
    fake = GeminiFake()
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        user("go"),
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    await chat(upstream, fake, req(*history))
    assert "thoughtSignature" not in fake.last_body["contents"][1]["parts"][0]


# -- images --------------------------------------------------------------------
async def test_data_url_image_becomes_inline_data(upstream: Upstream) -> None:
    fake = GeminiFake()
    answer = await chat(
        upstream,
        fake,
        req(
            user(
                [
                    {"type": "text", "text": "what is it?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ]
            )
        ),
    )
    assert fake.last_body["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": PNG}
    }
    assert answer.choices[0].message.content == "what is it? [seen: image/png]"


async def test_http_image_url_becomes_file_data_with_guessed_type(upstream: Upstream) -> None:
    fake = GeminiFake()
    url = "https://example.com/cats/cat.jpg?size=large"
    await chat(upstream, fake, req(user([{"type": "image_url", "image_url": {"url": url}}])))
    assert fake.last_body["contents"][0]["parts"] == [
        {"fileData": {"mimeType": "image/jpeg", "fileUri": url}}
    ]


async def test_image_url_of_another_scheme_is_an_invalid_request(upstream: Upstream) -> None:
    image = {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.png"}}
    with pytest.raises(InvalidRequest):
        await chat(upstream, GeminiFake(), req(user([image])))


async def test_malformed_data_url_is_an_invalid_request(upstream: Upstream) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not-base64@@"}}
    with pytest.raises(InvalidRequest):
        await chat(upstream, GeminiFake(), req(user([image])))


# -- finishes and usage ----------------------------------------------------------
async def test_stop_sequence_finishes_with_stop_before_it(upstream: Upstream) -> None:
    answer = await chat(upstream, GeminiFake(), req(user("one two END three"), stop="END"))
    assert answer.choices[0].message.content == "one two "
    assert answer.choices[0].finish_reason == "stop"


async def test_output_cap_finishes_with_length(upstream: Upstream) -> None:
    answer = await chat(upstream, GeminiFake(), req(user("one two three four"), max_tokens=2))
    assert answer.choices[0].message.content == "one two "
    assert answer.choices[0].finish_reason == "length"


async def test_safety_stop_is_content_filter(upstream: Upstream) -> None:
    answer = await chat(upstream, GeminiFake(block="response"), req(user("bad")))
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.choices[0].message.content == ""


async def test_blocked_prompt_is_content_filter_with_empty_content(upstream: Upstream) -> None:
    answer = await chat(upstream, GeminiFake(block="prompt"), req(user("very bad")))
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.choices[0].message.content == ""
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 0


async def test_usage_is_the_upstreams_count_with_thoughts_in_completion(upstream: Upstream) -> None:
    fake = GeminiFake(thoughts_tokens=11)
    async with gemini(upstream, fake) as provider:
        answer = await provider.chat(req(user("count these four words")), MODEL)
        raw = await provider.post_json(
            f"/v1beta/models/{MODEL}:generateContent",
            {"contents": [{"role": "user", "parts": [{"text": "count these four words"}]}]},
        )
    metadata = raw["usageMetadata"]
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == metadata["promptTokenCount"]
    assert answer.usage.completion_tokens == (
        metadata["candidatesTokenCount"] + metadata["thoughtsTokenCount"]
    )
    assert answer.usage.total_tokens == metadata["totalTokenCount"]


async def test_candidate_count_gives_one_choice_per_candidate(upstream: Upstream) -> None:
    answer = await chat(upstream, GeminiFake(), req(user("hi"), n=3))
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert {c.message.content for c in answer.choices} == {"hi"}


# -- streaming -------------------------------------------------------------------
async def test_stream_uses_sse_endpoint(upstream: Upstream) -> None:
    fake = GeminiFake()
    await stream(upstream, fake, req(user("hi")))
    assert fake.last.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert fake.last.query == {"alt": "sse"}


async def test_stream_delivers_text_in_several_deltas(upstream: Upstream) -> None:
    chunks = await stream(upstream, GeminiFake(), req(user("one two three four five six")))
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 3
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == "one two three four five six"


async def test_stream_ends_with_finish_then_usage_chunk(upstream: Upstream) -> None:
    chunks = await stream(upstream, GeminiFake(), req(user("one two three"), max_tokens=2))
    *_, finish, usage = chunks
    assert finish.choices[0].finish_reason == "length"
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.completion_tokens == 2
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + 2
    assert len({c.id for c in chunks}) == 1


async def test_stream_tool_call_arrives_as_tool_call_delta(upstream: Upstream) -> None:
    chunks = await stream(upstream, GeminiFake(), req(user("Paris"), tools=[WEATHER_TOOL]))
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    (call,) = calls
    assert call.index == 0
    assert call.type == "function"
    assert call.function is not None
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments or "") == {"city": "Paris"}
    assert chunks[-2].choices[0].finish_reason == "tool_calls"


async def test_streamed_tool_call_id_equals_the_unstreamed_one(upstream: Upstream) -> None:
    request = req(user("Paris"), tools=[WEATHER_TOOL])
    chunks = await stream(upstream, GeminiFake(), request)
    answer = await chat(upstream, GeminiFake(), request)
    streamed = [tc.id for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert answer.choices[0].message.tool_calls is not None
    assert streamed == [answer.choices[0].message.tool_calls[0].id]


async def test_stream_with_candidate_count_finishes_every_choice(upstream: Upstream) -> None:
    chunks = await stream(upstream, GeminiFake(), req(user("one two three"), n=2))
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks[-3:-1]}
    assert finishes == {0: "stop", 1: "stop"}
    for index in (0, 1):
        text = "".join(
            c.choices[0].delta.content or ""
            for c in chunks
            if c.choices and c.choices[0].index == index
        )
        assert text == "one two three"


async def test_stream_of_a_blocked_prompt_finishes_with_content_filter(upstream: Upstream) -> None:
    chunks = await stream(upstream, GeminiFake(block="prompt"), req(user("bad")))
    assert chunks[-2].choices[0].finish_reason == "content_filter"
    assert chunks[-1].usage is not None


async def test_stream_cut_before_finish_is_an_upstream_error(upstream: Upstream) -> None:
    with pytest.raises(UpstreamError):
        await stream(upstream, GeminiFake(cut_stream=True), req(user("one two three four")))


async def test_stream_error_event_is_an_upstream_error(upstream: Upstream) -> None:
    with pytest.raises(UpstreamError, match="mid-stream"):
        await stream(upstream, GeminiFake(error_mid_stream=True), req(user("one two three")))


async def test_stream_refused_upfront_raises_the_mapped_error(upstream: Upstream) -> None:
    with pytest.raises(RateLimited):
        await stream(upstream, GeminiFake(fail_status=429), req(user("hi")))


# -- errors ----------------------------------------------------------------------
async def test_resource_exhausted_is_rate_limited_with_retry_after(upstream: Upstream) -> None:
    with pytest.raises(RateLimited) as caught:
        await chat(upstream, GeminiFake(fail_status=429, retry_delay="6.2s"), req(user("hi")))
    assert caught.value.status == 429
    assert caught.value.code == "upstream_rate_limited"
    assert caught.value.headers == {"retry-after": "7"}


async def test_invalid_argument_is_invalid_request_with_gemini_message(upstream: Upstream) -> None:
    # Gemini's own rule: a function call turn must follow a user turn.
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with pytest.raises(InvalidRequest) as caught:
        await chat(
            upstream,
            GeminiFake(),
            req(
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "x"},
            ),
        )
    assert caught.value.status == 400
    assert "function call turn comes immediately after a user turn" in caught.value.message


async def test_invalid_api_key_is_upstream_auth_failure(upstream: Upstream) -> None:
    async with gemini(
        upstream, GeminiFake(), api_key="AIzaWRONG-key-000000000000000000000"
    ) as provider:
        with pytest.raises(UpstreamError) as caught:
            await provider.chat(req(user("hi")), MODEL)
    assert caught.value.status == 502
    assert caught.value.code == "upstream_auth_failed"


async def test_provider_without_a_key_is_unavailable(upstream: Upstream) -> None:
    fake = GeminiFake()
    async with gemini(upstream, fake, api_key=None) as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.chat(req(user("hi")), MODEL)
    assert fake.requests == []


async def test_permission_denied_is_upstream_auth_failure(upstream: Upstream) -> None:
    with pytest.raises(UpstreamError) as caught:
        await chat(upstream, GeminiFake(fail_status=403), req(user("hi")))
    assert caught.value.code == "upstream_auth_failed"


async def test_failed_precondition_is_an_upstream_error_not_the_clients(upstream: Upstream) -> None:
    body = json.dumps(
        {
            "error": {
                "code": 400,
                "message": "User location is not supported for the API use.",
                "status": "FAILED_PRECONDITION",
            }
        }
    ).encode()
    async with gemini(upstream, GeminiFake()) as provider:
        error = provider.error_for_status(400, body, {})
    assert error.status == 502
    assert "User location is not supported" in error.message


async def test_unavailable_is_503(upstream: Upstream) -> None:
    with pytest.raises(UpstreamError) as caught:
        await chat(upstream, GeminiFake(fail_status=503), req(user("hi")))
    assert caught.value.status == 503


async def test_internal_error_is_502(upstream: Upstream) -> None:
    with pytest.raises(UpstreamError) as caught:
        await chat(upstream, GeminiFake(fail_status=500), req(user("hi")))
    assert caught.value.status == 502


async def test_deadline_exceeded_is_upstream_timeout(upstream: Upstream) -> None:
    with pytest.raises(UpstreamTimeout):
        await chat(upstream, GeminiFake(fail_status=504), req(user("hi")))


async def test_unknown_upstream_model_is_not_found(upstream: Upstream) -> None:
    with pytest.raises(Exception) as caught:
        await chat(upstream, GeminiFake(), req(user("hi")), model="gone")
    assert getattr(caught.value, "status", None) == 404


async def test_unknown_public_model_is_model_not_found(upstream: Upstream) -> None:
    with pytest.raises(ModelNotFound):
        await chat(upstream, GeminiFake(), req(user("hi")), model="no-such-model")


@pytest.mark.parametrize("status", [400, 429, 500, 503])
async def test_key_never_appears_in_error_messages(upstream: Upstream, status: int) -> None:
    fake = GeminiFake(fail_status=status, leak_key_in_errors=True)
    with pytest.raises(Exception) as caught:
        await chat(upstream, fake, req(user("hi")))
    rendered = caught.value.body().decode()  # type: ignore[attr-defined]
    assert FAKE_KEY not in rendered
    assert FAKE_KEY not in str(caught.value)


async def test_base_url_naming_the_version_is_not_doubled(upstream: Upstream) -> None:
    fake = GeminiFake()
    async with gemini(upstream, fake, base_url="http://gemini.test/v1beta") as provider:
        await provider.chat(req(user("hi")), MODEL)
    assert fake.last.path == f"/v1beta/models/{MODEL}:generateContent"
