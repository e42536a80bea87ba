"""The Anthropic fake speaks the real wire format (the official SDK parses it) and is strict."""

from __future__ import annotations

import base64
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from tests.fakes.anthropic_fake import FAKE_API_KEY, FakeAnthropic

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
