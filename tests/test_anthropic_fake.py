"""The Anthropic fake speaks the real wire format (the official SDK parses it) and is strict."""

from __future__ import annotations

import base64
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from tests.fakes.anthropic_fake import FAKE_API_KEY, MID_CONVERSATION_SYSTEM_BETA, FakeAnthropic

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def sdk(fake: FakeAnthropic) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=FAKE_API_KEY,
        base_url="http://fake",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=fake)),
    )


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hello there"}],
    }
    return {**base, **overrides}


async def post(fake: FakeAnthropic, payload: Any, **headers: str) -> httpx.Response:
    sent = {"x-api-key": FAKE_API_KEY, "anthropic-version": "2023-06-01", **headers}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url="http://fake"
    ) as client:
        return await client.post("/v1/messages", json=payload, headers=sent)


@pytest.mark.anyio
async def test_sdk_parses_a_plain_message() -> None:
    message = await sdk(FakeAnthropic()).messages.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "Hello there"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello there"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 2


@pytest.mark.anyio
async def test_sdk_parses_a_streamed_message() -> None:
    client = sdk(FakeAnthropic())
    async with client.messages.stream(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "one two three"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert pieces == ["one ", "two ", "three"]
    assert final.content[0].text == "one two three"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"


@pytest.mark.anyio
async def test_sdk_parses_tool_use_whole_and_streamed() -> None:
    client = sdk(FakeAnthropic())
    kwargs: Any = {
        "model": "claude-test",
        "max_tokens": 100,
        "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }
    whole = await client.messages.create(**kwargs)
    async with client.messages.stream(**kwargs) as stream:
        streamed = await stream.get_final_message()
    for message in (whole, streamed):
        assert message.stop_reason == "tool_use"
        tool_use = message.content[-1]
        assert tool_use.type == "tool_use"
        assert tool_use.name == "get_weather"
        assert tool_use.input == {"city": "example"}


@pytest.mark.anyio
async def test_sdk_raises_on_a_stream_error_event() -> None:
    fake = FakeAnthropic()
    fake.stream_error_after = 3
    client = sdk(fake)
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(
            model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "Hi a b"}]
        ) as stream:
            async for _ in stream:
                pass


@pytest.mark.anyio
async def test_sdk_sees_injected_overload_as_529() -> None:
    fake = FakeAnthropic()
    fake.fail_next(529, "overloaded_error", "Overloaded")
    with pytest.raises(anthropic.APIStatusError) as caught:
        await sdk(fake).messages.create(
            model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == 529


@pytest.mark.anyio
async def test_fake_rejects_a_wrong_api_key() -> None:
    response = await post(FakeAnthropic(), body(), **{"x-api-key": "sk-ant-wrong"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.anyio
async def test_fake_requires_the_version_header() -> None:
    response = await post(FakeAnthropic(), body(), **{"anthropic-version": ""})
    assert response.status_code == 400


_tool_use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
_tool_result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}
_INVALID: dict[str, dict[str, Any]] = {
    "no max_tokens": {"max_tokens": None},
    "system role": {"messages": [{"role": "system", "content": "Be brief"}]},
    "unknown field": {"frequency_penalty": 0.5},
    "first not user": {"messages": [{"role": "assistant", "content": "Hi"}]},
    "no alternation": {
        "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    },
    "temperature": {"temperature": 1.5},
    "whitespace text": {"messages": [{"role": "user", "content": "   "}]},
    "orphan tool_result": {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [_tool_result]},
        ],
    },
    "unanswered tool_use": {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [_tool_use]},
            {"role": "user", "content": "and?"},
        ],
    },
    "tool_use without tools": {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [_tool_use]},
            {"role": "user", "content": [_tool_result]},
        ],
    },
    "text before tool_result": {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [_tool_use]},
            {"role": "user", "content": [{"type": "text", "text": "here"}, _tool_result]},
        ],
    },
    "bad media type": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/bmp", "data": PNG},
                    }
                ],
            }
        ]
    },
    "image bytes mismatch": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG},
                    }
                ],
            }
        ]
    },
    "image_url block": {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ]
    },
    "trailing whitespace prefill": {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Sure "},
        ]
    },
    "tool_choice without tools": {"tool_choice": {"type": "auto"}},
    "whitespace stop sequence": {"stop_sequences": ["\n"]},
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(_INVALID), ids=list(_INVALID))
async def test_fake_rejects_what_the_real_api_rejects(case: str) -> None:
    payload = {k: v for k, v in body(**_INVALID[case]).items() if v is not None}
    response = await post(FakeAnthropic(), payload)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_fake_accepts_a_tool_round_trip() -> None:
    payload = body(
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, _tool_use]},
            {"role": "user", "content": [_tool_result, {"type": "text", "text": "thanks"}]},
        ],
    )
    response = await post(FakeAnthropic(), payload)
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "Tool said: sunny thanks"


# -- mid-conversation system turns (Claude Code's beta), chosen tools ------------------------

MID_SYSTEM = {"anthropic-beta": f"claude-code-20250219,{MID_CONVERSATION_SYSTEM_BETA}"}
_steer = {"role": "system", "content": "Answer tersely."}


@pytest.mark.anyio
async def test_fake_accepts_system_turns_with_the_beta_and_answers_around_them() -> None:
    payload = body(
        tools=[WEATHER_TOOL],
        thinking=THINKING,
        max_tokens=2000,
        messages=[{"role": "user", "content": "Weather?"}, _steer],
    )
    fake = FakeAnthropic()
    first = await post(fake, payload, **MID_SYSTEM)
    assert first.status_code == 200, first.text
    thinking, text, call = first.json()["content"]
    assert "Weather?" in thinking["thinking"] and call["name"] == "get_weather"
    result = {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}
    payload["messages"] += [
        {"role": "assistant", "content": [thinking, text, call]},
        {"role": "user", "content": [result]},
        {"role": "system", "content": [{"type": "text", "text": "Still terse."}]},
    ]
    second = await post(fake, payload, **MID_SYSTEM)
    assert second.status_code == 200, second.text
    assert second.json()["content"][-1]["text"] == "Tool said: sunny"
    assert fake.verified_signatures == 1


_BAD_SYSTEM_TURNS: dict[str, list[dict[str, Any]]] = {
    "first": [_steer, {"role": "user", "content": "Hi"}],
    "after assistant": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        _steer,
    ],
    "two in a row": [{"role": "user", "content": "Hi"}, _steer, _steer],
    "empty": [{"role": "user", "content": "Hi"}, {"role": "system", "content": " "}],
    "image": [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": [{"type": "image", "source": {"type": "url",
                                                                    "url": "https://x/y.png"}}]},
    ],
}  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(_BAD_SYSTEM_TURNS), ids=list(_BAD_SYSTEM_TURNS))
async def test_fake_rejects_misplaced_system_turns_even_with_the_beta(case: str) -> None:
    response = await post(FakeAnthropic(), body(messages=_BAD_SYSTEM_TURNS[case]), **MID_SYSTEM)
    assert response.status_code == 400, response.text


@pytest.mark.anyio
async def test_fake_rejects_a_system_turn_without_the_beta() -> None:
    payload = body(messages=[{"role": "user", "content": "Hi"}, _steer])
    response = await post(FakeAnthropic(), payload, **{"anthropic-beta": "claude-code-20250219"})
    assert response.status_code == 400
    assert "role" in response.json()["error"]["message"]


@pytest.mark.anyio
async def test_fake_calls_the_tools_named_in_tool_names() -> None:
    other = {**WEATHER_TOOL, "name": "get_time"}
    fake = FakeAnthropic()
    fake.tool_names = ["get_time"]
    fake.tool_input = {"zone": "UTC"}
    response = await post(fake, body(tools=[WEATHER_TOOL, other]))
    call = response.json()["content"][-1]
    assert (call["name"], call["input"]) == ("get_time", {"zone": "UTC"})


# -- count_tokens, thinking, documents, caching, betas --------------------------------------

THINKING = {"type": "enabled", "budget_tokens": 1024}
PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n").decode()


async def post_count(fake: FakeAnthropic, payload: Any) -> httpx.Response:
    sent = {"x-api-key": FAKE_API_KEY, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url="http://fake"
    ) as client:
        return await client.post("/v1/messages/count_tokens", json=payload, headers=sent)


def document(source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "document", "source": source}


def user_blocks(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": "Summarize it"}]}]


@pytest.mark.anyio
async def test_count_tokens_matches_the_message_usage() -> None:
    fake = FakeAnthropic()
    client = sdk(fake)
    prompt: Any = {
        "model": "claude-test",
        "system": [{"type": "text", "text": "Be brief", "cache_control": {"type": "ephemeral"}}],
        "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }
    counted = await client.messages.count_tokens(**prompt)
    message = await client.messages.create(max_tokens=100, **prompt)
    assert counted.input_tokens == message.usage.input_tokens > 0
    assert len(fake.count_requests) == 1 and "max_tokens" not in fake.count_requests[0]
    assert len(fake.requests) == 1 and fake.last_request["max_tokens"] == 100


@pytest.mark.anyio
@pytest.mark.parametrize("extra", [{"max_tokens": 100}, {"stream": True}, {"temperature": 1}])
async def test_count_tokens_rejects_sampling_fields(extra: dict[str, Any]) -> None:
    payload = {"model": "claude-test", "messages": [{"role": "user", "content": "Hi"}], **extra}
    response = await post_count(FakeAnthropic(), payload)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == (
        f"{next(iter(extra))}: Extra inputs are not permitted"
    )


@pytest.mark.anyio
async def test_count_tokens_checks_auth_and_thinking() -> None:
    fake = FakeAnthropic(api_key="sk-ant-other")
    response = await post_count(
        fake, {"model": "m", "messages": [{"role": "user", "content": "a"}]}
    )
    assert response.status_code == 401
    thinking = {"type": "enabled", "budget_tokens": 1024}
    ok = await post_count(
        FakeAnthropic(),
        {"model": "m", "thinking": thinking, "messages": [{"role": "user", "content": "a"}]},
    )
    assert ok.status_code == 200 and ok.json().keys() == {"input_tokens"}


@pytest.mark.anyio
async def test_thinking_answer_opens_with_a_signed_thinking_block() -> None:
    fake = FakeAnthropic()
    message = await sdk(fake).messages.create(
        model="claude-test",
        max_tokens=2048,
        thinking=THINKING,
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
    )
    thinking, text = message.content
    assert thinking.type == "thinking" and text.type == "text"
    assert "Why is the sky blue?" in thinking.thinking
    assert thinking.signature == fake.sign(thinking.thinking)
    assert FakeAnthropic().sign(thinking.thinking) != thinking.signature  # a per-fake secret
    assert text.text == "Why is the sky blue?"


@pytest.mark.anyio
@pytest.mark.parametrize("config", [{"type": "adaptive"}, {"type": "disabled"}])
async def test_adaptive_and_disabled_thinking(config: dict[str, Any]) -> None:
    message = await sdk(FakeAnthropic()).messages.create(
        model="claude-test",
        max_tokens=100,
        thinking=config,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "Hi"}],
    )
    kinds = [b.type for b in message.content]
    assert kinds == (["thinking", "text"] if config["type"] == "adaptive" else ["text"])


async def _thinking_tool_turn(fake: FakeAnthropic) -> tuple[Any, list[Any]]:
    """A thinking answer that calls a tool, and the conversation that answers the call."""
    client = sdk(fake)
    question = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.messages.create(
        model="claude-test", max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL],
        messages=question,  # type: ignore[arg-type]
    )  # fmt: skip
    tool_use = first.content[-1]
    assert tool_use.type == "tool_use"
    result = {"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}
    return first, [*question, {"role": "assistant", "content": first.content},
                   {"role": "user", "content": [result]}]  # fmt: skip


@pytest.mark.anyio
async def test_replayed_thinking_with_tool_use_is_accepted_and_verified() -> None:
    fake = FakeAnthropic()
    first, conversation = await _thinking_tool_turn(fake)
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert fake.verified_signatures == 0
    second = await sdk(fake).messages.create(
        model="claude-test", max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL],
        messages=conversation,
    )  # fmt: skip
    assert fake.verified_signatures == 1
    assert fake.last_request["messages"][1]["content"][0]["signature"] == first.content[0].signature
    assert second.content[-1].text == "Tool said: sunny"  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["signature", "thinking"])
async def test_tampered_thinking_is_rejected(field: str) -> None:
    fake = FakeAnthropic()
    _, conversation = await _thinking_tool_turn(fake)
    blocks = [b.model_dump(exclude_none=True) for b in conversation[1]["content"]]
    blocks[0][field] = blocks[0][field][:-4] + "AAA="
    conversation[1] = {"role": "assistant", "content": blocks}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk(fake).messages.create(
            model="claude-test", max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL],
            messages=conversation,
        )  # fmt: skip
    assert "messages.1.content.0: Invalid `signature` in `thinking` block" in str(caught.value)
    assert fake.verified_signatures == 0


@pytest.mark.anyio
async def test_a_signature_from_another_fake_is_rejected() -> None:
    _, conversation = await _thinking_tool_turn(FakeAnthropic())
    with pytest.raises(anthropic.BadRequestError):
        await sdk(FakeAnthropic()).messages.create(
            model="claude-test", max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL],
            messages=conversation,
        )  # fmt: skip


@pytest.mark.anyio
async def test_thinking_must_lead_the_assistant_turn_with_tool_use() -> None:
    fake = FakeAnthropic()
    _, conversation = await _thinking_tool_turn(fake)
    stripped = [b for b in conversation[1]["content"] if b.type != "thinking"]
    conversation[1] = {"role": "assistant", "content": stripped}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk(fake).messages.create(
            model="claude-test", max_tokens=2048, thinking=THINKING, tools=[WEATHER_TOOL],
            messages=conversation,
        )  # fmt: skip
    assert "Expected `thinking` or `redacted_thinking`, but found `text`" in str(caught.value)
    # Without thinking the same history is fine.
    await sdk(fake).messages.create(
        model="claude-test", max_tokens=2048, tools=[WEATHER_TOOL], messages=conversation
    )


@pytest.mark.anyio
async def test_redacted_thinking_is_verifiable_and_tamper_proof() -> None:
    fake = FakeAnthropic()
    fake.redacted_thinking = True
    first, conversation = await _thinking_tool_turn(fake)
    assert [b.type for b in first.content][:2] == ["thinking", "redacted_thinking"]
    client = sdk(fake)
    kwargs: Any = {"model": "claude-test", "max_tokens": 2048, "thinking": THINKING,
                   "tools": [WEATHER_TOOL]}  # fmt: skip
    await client.messages.create(messages=conversation, **kwargs)
    assert fake.verified_signatures == 2
    blocks = [b.model_dump(exclude_none=True) for b in first.content]
    blocks[1]["data"] = base64.b64encode(b"x" * 56).decode()
    conversation[1] = {"role": "assistant", "content": blocks}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(messages=conversation, **kwargs)
    assert "Invalid `data` in `redacted_thinking` block" in str(caught.value)


@pytest.mark.anyio
async def test_streamed_thinking_matches_the_whole_answer() -> None:
    fake = FakeAnthropic()
    fake.redacted_thinking = True
    client = sdk(fake)
    kwargs: Any = {
        "model": "claude-test",
        "max_tokens": 2048,
        "thinking": THINKING,
        "messages": [{"role": "user", "content": "Explain the rainbow in simple terms"}],
    }
    whole = await client.messages.create(**kwargs)
    deltas: list[str] = []
    async with client.messages.stream(**kwargs) as stream:
        async for event in stream:
            if event.type == "content_block_delta":
                deltas.append(event.delta.type)
        streamed = await stream.get_final_message()
    assert deltas.count("thinking_delta") > 1
    assert deltas.count("signature_delta") == 1
    assert deltas.index("signature_delta") > max(
        i for i, kind in enumerate(deltas) if kind == "thinking_delta"
    )
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in whole.content]
    assert [b.type for b in streamed.content] == ["thinking", "redacted_thinking", "text"]
    assert streamed.usage.output_tokens == whole.usage.output_tokens


@pytest.mark.anyio
async def test_pdf_and_text_documents_are_accepted() -> None:
    fake = FakeAnthropic()
    client = sdk(fake)
    for source in (
        {"type": "base64", "media_type": "application/pdf", "data": PDF},
        {"type": "text", "media_type": "text/plain", "data": "Plain words."},
        {"type": "url", "url": "https://example.com/paper.pdf"},
    ):
        message = await client.messages.create(
            model="claude-test",
            max_tokens=100,
            messages=user_blocks(
                {**document(source), "title": "Doc", "cache_control": {"type": "ephemeral"}}
            ),  # type: ignore[arg-type]
        )
        assert message.content[0].text == "Summarize it"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_bad_pdf_is_rejected() -> None:
    bad = base64.b64encode(b"not a pdf at all").decode()
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk(FakeAnthropic()).messages.create(
            model="claude-test",
            max_tokens=100,
            messages=user_blocks(
                document({"type": "base64", "media_type": "application/pdf", "data": bad})
            ),  # type: ignore[arg-type]
        )
    assert "The PDF specified was not valid" in str(caught.value)


@pytest.mark.anyio
async def test_tool_results_carry_documents_images_and_errors() -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "is_error": True,
        "content": [
            {"type": "text", "text": "failed"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            document({"type": "base64", "media_type": "application/pdf", "data": PDF}),
        ],
    }
    payload = body(
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [_tool_use]},
            {"role": "user", "content": [result]},
        ],
    )
    response = await post(FakeAnthropic(), payload)
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "Tool said: failed"


@pytest.mark.anyio
async def test_cache_control_is_accepted_on_system_blocks_and_tools() -> None:
    hour = {"type": "ephemeral", "ttl": "1h"}
    payload = body(
        system=[{"type": "text", "text": "Be brief", "cache_control": hour}],
        tools=[{**WEATHER_TOOL, "cache_control": hour}],
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}],
            }
        ],
    )
    fake = FakeAnthropic(cache_creation_input_tokens=5)
    response = await post(fake, payload)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["cache_creation_input_tokens"] == 5


@pytest.mark.anyio
async def test_beta_query_and_header_are_accepted() -> None:
    fake = FakeAnthropic()
    client = sdk(fake)
    message = await client.beta.messages.create(
        model="claude-test",
        max_tokens=2048,
        thinking=THINKING,
        betas=["interleaved-thinking-2025-05-14"],
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert fake.request_headers[-1]["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    counted = await client.beta.messages.count_tokens(
        model="claude-test", betas=["token-counting-2024-11-01"],
        messages=[{"role": "user", "content": "Hi"}],
    )  # fmt: skip
    assert counted.input_tokens == message.usage.input_tokens


@pytest.mark.anyio
async def test_reject_betas_knob() -> None:
    fake = FakeAnthropic()
    fake.reject_betas = {"bogus-2099-01-01"}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk(fake).beta.messages.create(
            model="claude-test",
            max_tokens=10,
            betas=["prompt-caching-2024-07-31", "bogus-2099-01-01"],
            messages=[{"role": "user", "content": "Hi"}],
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "Unexpected value(s) `bogus-2099-01-01` for the `anthropic-beta` header" in str(
        caught.value
    )


@pytest.mark.anyio
async def test_fake_accepts_what_claude_code_sends() -> None:
    tools = [
        {**WEATHER_TOOL, "type": "custom", "strict": True, "defer_loading": False,
         "eager_input_streaming": True, "input_examples": [{"city": "Paris"}]},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ]  # fmt: skip
    payload = body(
        max_tokens=4096,
        tools=tools,
        thinking={"type": "enabled", "budget_tokens": 2048},
        metadata={"user_id": "user_abc"},
        service_tier="auto",
        container="container_1",
        mcp_servers=[],
        context_management={"edits": []},
        output_config={"effort": "high"},
        output_format=None,
        temperature=1,
    )
    response = await post(FakeAnthropic(), payload, **{"anthropic-beta": "context-1m-2025-08-07"})
    assert response.status_code == 200, response.text
    content = response.json()["content"]
    assert [b["type"] for b in content] == ["thinking", "text", "tool_use"]
    assert content[-1]["name"] == "get_weather"  # the fake calls custom tools only


_pdf_bad_type = {"type": "base64", "media_type": "application/msword", "data": PDF}
_INVALID_MORE: dict[str, dict[str, Any]] = {
    "budget below 1024": {
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 512},
    },
    "budget not below max_tokens": {"max_tokens": 1024, "thinking": THINKING},
    "unknown thinking type": {"thinking": {"type": "sometimes"}},
    "thinking extra key": {"thinking": {"type": "disabled", "budget_tokens": 1024}},
    "temperature with thinking": {"max_tokens": 4000, "thinking": THINKING, "temperature": 0.5},
    "top_k with thinking": {"max_tokens": 4000, "thinking": THINKING, "top_k": 5},
    "forced tool with thinking": {
        "max_tokens": 4000,
        "thinking": THINKING,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "any"},
    },
    "document media type": {"messages": user_blocks(document(_pdf_bad_type))},
    "document text source type": {
        "messages": user_blocks(document({"type": "text", "media_type": "text/html", "data": "x"}))
    },
    "is_error not bool": {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [_tool_use]},
            {"role": "user", "content": [{**_tool_result, "is_error": "yes"}]},
        ],
    },
    "cache_control type": {
        "system": [{"type": "text", "text": "x", "cache_control": {"type": "persistent"}}]
    },
    "cache_control ttl": {
        "tools": [{**WEATHER_TOOL, "cache_control": {"type": "ephemeral", "ttl": "10m"}}]
    },
    "five cache_control blocks": {
        "system": [
            {"type": "text", "text": f"part {n}", "cache_control": {"type": "ephemeral"}}
            for n in range(5)
        ]
    },
    "1h after 5m": {
        "system": [
            {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ]
    },
    "metadata extra key": {"metadata": {"user_id": "u", "session": "s"}},
    "server tool wrong name": {"tools": [{"type": "web_search_20250305", "name": "search"}]},
    "unknown tool type": {"tools": [{**WEATHER_TOOL, "type": "function"}]},
    "tool extra key": {"tools": [{**WEATHER_TOOL, "parameters": {}}]},
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(_INVALID_MORE), ids=list(_INVALID_MORE))
async def test_fake_rejects_bad_thinking_documents_and_caching(case: str) -> None:
    response = await post(FakeAnthropic(), body(**_INVALID_MORE[case]))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
