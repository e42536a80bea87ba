"""The Anthropic Messages dialect, seen through the official anthropic SDK, to every backend.

The SDK talks to the gateway in-process; the gateway to strict fakes: an
Anthropic-format one (pass-through), and OpenAI, Gemini and demo backends
(translated through the hub).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import anthropic
import pytest

from tests.fakes.anthropic_fake import FakeAnthropic
from tests.messages_backends import BACKENDS, TRANSLATED, Backend, gateway, new_backend

pytestmark = pytest.mark.anyio

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return new_backend(request.param)


@pytest.fixture(params=TRANSLATED)
def translated(request: pytest.FixtureRequest) -> Backend:
    return new_backend(request.param)


# -- answers -------------------------------------------------------------------
async def test_a_message_comes_back_in_anthropic_shape_naming_the_model_asked(
    backend: Backend,
) -> None:
    async with gateway(backend) as gw:
        message = await gw.sdk().messages.create(
            model=backend.model, max_tokens=100, messages=user("Hello there friend")
        )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == backend.model
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hello there friend"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


async def test_streamed_text_and_usage_equal_the_whole_answer(backend: Backend) -> None:
    async with gateway(backend) as gw:
        client = gw.sdk()
        whole = await client.messages.create(
            model=backend.model, max_tokens=100, messages=user("Stream me these words")
        )
        async with client.messages.stream(
            model=backend.model, max_tokens=100, messages=user("Stream me these words")
        ) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert "".join(texts) == whole.content[0].text  # type: ignore[union-attr]
    assert len(texts) > 1  # it arrived in pieces, not as one buffered block
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.stop_reason == "end_turn"


async def test_stream_events_come_in_anthropics_order(backend: Backend) -> None:
    async with (
        gateway(backend) as gw,
        gw.sdk().messages.stream(
            model=backend.model, max_tokens=100, messages=user("Order of events")
        ) as stream,
    ):
        kinds = [event.type async for event in stream]
    raw = [k for k in kinds if k not in ("text", "input_json", "thinking", "signature")]
    assert raw[0] == "message_start"
    assert raw[-1] == "message_stop" and raw[-2] == "message_delta"
    assert raw.count("content_block_start") == raw.count("content_block_stop") >= 1


async def test_translated_stream_starts_with_the_input_estimate_and_ends_with_real_usage(
    translated: Backend,
) -> None:
    async with gateway(translated) as gw, gw.http() as http:
        response = await http.post(
            "/v1/messages",
            headers={"x-api-key": gw.key},
            json={"model": translated.model, "max_tokens": 50, "stream": True,
                  "messages": user("Count these tokens please")},
        )  # fmt: skip
        whole = await http.post(
            "/v1/messages",
            headers={"x-api-key": gw.key},
            json={"model": translated.model, "max_tokens": 50,
                  "messages": user("Count these tokens please")},
        )  # fmt: skip
    events = _events(response.text)
    start = events[0][1]["message"]["usage"]
    final = next(data for name, data in events if name == "message_delta")["usage"]
    assert start["input_tokens"] > 0
    assert final["input_tokens"] == whole.json()["usage"]["input_tokens"]
    assert final["output_tokens"] == whole.json()["usage"]["output_tokens"]


def _events(text: str) -> list[tuple[str, Any]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


# -- tools -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["anthropic", "openai", "gemini"])
async def test_a_tool_round_trip_works_on_every_backend(kind: str) -> None:
    backend = new_backend(kind)
    async with gateway(backend) as gw:
        client = gw.sdk()
        first = await client.messages.create(
            model=backend.model,
            max_tokens=200,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=user("What is the weather in Paris?"),
        )
        assert first.stop_reason == "tool_use"
        call = next(b for b in first.content if b.type == "tool_use")
        assert call.name == "get_weather" and isinstance(call.input, dict)
        second = await client.messages.create(
            model=backend.model,
            max_tokens=200,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[
                *user("What is the weather in Paris?"),
                {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}
                    ],
                },
            ],  # type: ignore[list-item]
        )
    assert second.stop_reason == "end_turn"
    assert "sunny, 21 C" in second.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["openai", "gemini"])
async def test_streamed_tool_calls_arrive_as_input_json_deltas(kind: str) -> None:
    translated = new_backend(kind)
    async with (
        gateway(translated) as gw,
        gw.sdk().messages.stream(
            model=translated.model,
            max_tokens=200,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=user("Weather in Rome?"),
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and call.input


async def test_a_tool_error_and_an_image_in_a_result_reach_a_translated_backend() -> None:
    backend = new_backend("openai")
    async with gateway(backend) as gw:
        await gw.sdk().messages.create(
            model=backend.model,
            max_tokens=100,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[
                *user("Weather?"),
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Oslo"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "no such city"},
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/png",
                                        "data": PNG_B64,
                                    },
                                },
                            ],
                        },
                        {"type": "text", "text": "Try again"},
                    ],
                },
            ],  # type: ignore[list-item]
        )
    sent = backend.fake.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[1]["tool_calls"][0]["id"] == "toolu_1"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: no such city"}
    parts = sent[3]["content"]
    assert any(p["type"] == "image_url" and PNG_B64 in p["image_url"]["url"] for p in parts)
    assert any(p["type"] == "text" and p["text"] == "Try again" for p in parts)


async def test_system_blocks_stop_sequences_and_user_reach_a_translated_backend() -> None:
    backend = new_backend("openai")
    async with gateway(backend) as gw:
        await gw.sdk().messages.create(
            model=backend.model,
            max_tokens=64,
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            stop_sequences=["END"],
            extra_body={"temperature": 0.5},
            metadata={"user_id": "user-42"},
            messages=user("Hi"),
        )
    sent = backend.fake.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["stop"] == ["END"] and sent["temperature"] == 0.5
    assert sent["user"] == "user-42" and sent["max_tokens"] == 64


async def test_thinking_blocks_from_another_vendor_are_dropped_not_refused(
    translated: Backend,
) -> None:
    async with gateway(translated) as gw:
        message = await gw.sdk().messages.create(
            model=translated.model,
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[
                *user("First"),
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "c2lnbmVk"},
                        {"type": "redacted_thinking", "data": "b3BhcXVl"},
                        {"type": "text", "text": "Answer one"},
                    ],
                },
                *user("Second"),
            ],  # type: ignore[list-item]
        )
    assert message.content[-1].text == "Second"  # type: ignore[union-attr]


# -- pass-through -----------------------------------------------------------------
async def test_pass_through_forwards_the_body_and_dialect_headers_as_sent() -> None:
    backend = new_backend("anthropic")
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "system": [{"type": "text", "text": "Sys", "cache_control": {"type": "ephemeral"}}],
        "messages": user("Pass me through"),
        "metadata": {"user_id": "u-1"},
        "top_k": 5,
        "service_tier": "auto",
    }
    async with gateway(backend) as gw, gw.http() as http:
        response = await http.post(
            "/v1/messages?beta=true",
            json=body,
            headers={
                "x-api-key": gw.key,
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "prompt-caching-2024-07-31,context-1m-2025-08-07",
            },
        )
    assert response.status_code == 200, response.text
    received = backend.fake.last_request
    assert received == {**body, "model": "claude-sonnet-4-5-20250929"}
    headers = backend.fake.request_headers[-1]
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31,context-1m-2025-08-07"
    assert headers["anthropic-version"] == "2023-06-01"
    assert gw.key not in json.dumps(headers)  # the client's key never goes upstream
    answer = response.json()
    assert answer["model"] == "claude-sonnet-4-5"
    assert {k: v for k, v in answer.items() if k != "model"} == {
        k: v for k, v in backend.fake.answers[-1].items() if k != "model"
    }


async def test_pass_through_stream_relays_every_upstream_event_unchanged_but_model() -> None:
    backend = new_backend("anthropic")
    async with gateway(backend) as gw, gw.http() as http:
        response = await http.post(
            "/v1/messages",
            json={"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
                  "messages": user("Relay each event")},
            headers={"x-api-key": gw.key, "anthropic-version": "2023-06-01"},
        )  # fmt: skip
    got = _events(response.text)
    expected = backend.fake._event_list(backend.fake.answers[-1])
    assert [data for _, data in got[1:]] == expected[1:]
    assert got[0][1]["message"]["model"] == "claude-sonnet-4-5"
    assert [name for name, _ in got] == [e["type"] for e in expected]


async def test_thinking_with_signatures_replays_across_turns_on_pass_through() -> None:
    backend = new_backend("anthropic")
    async with gateway(backend) as gw:
        client = gw.sdk()
        options: dict[str, Any] = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "tools": [WEATHER],
        }
        async with client.messages.stream(**options, messages=user("Weather in Lima?")) as s:
            first = await s.get_final_message()
        thinking = first.content[0]
        assert thinking.type == "thinking" and thinking.signature
        call = next(b for b in first.content if b.type == "tool_use")
        second = await client.messages.create(
            **options,
            messages=[
                *user("Weather in Lima?"),
                {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": call.id, "content": "cloudy"}
                    ],
                },
            ],
        )
    assert backend.fake.verified_signatures >= 1  # the fake checked our replayed signature
    assert second.stop_reason == "end_turn"


async def test_upstream_errors_come_back_with_their_own_status_and_words() -> None:
    backend = new_backend("anthropic")
    fake: FakeAnthropic = backend.fake
    async with gateway(backend) as gw:
        client = gw.sdk()
        fake.fail_next(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000")
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(
                model="claude-sonnet-4-5", max_tokens=10, messages=user("x")
            )
        assert bad.value.status_code == 400
        assert bad.value.body == {  # type: ignore[comparison-overlap]
            "type": "error",
            "error": {"type": "invalid_request_error",
                      "message": "prompt is too long: 250000 tokens > 200000"},
            "request_id": bad.value.body["request_id"],  # type: ignore[index]
        }  # fmt: skip
        fake.fail_next(529, "overloaded_error", "Overloaded")
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            await client.messages.create(
                model="claude-sonnet-4-5", max_tokens=10, messages=user("x")
            )
        assert overloaded.value.status_code == 529
        assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


async def test_the_gateways_own_upstream_credentials_failing_is_not_the_clients_401() -> None:
    backend = new_backend("anthropic")
    async with gateway(backend) as gw:
        backend.fake.api_key = "another-key"
        with pytest.raises(anthropic.APIStatusError) as failed:
            await gw.sdk().messages.create(
                model="claude-sonnet-4-5", max_tokens=10, messages=user("x")
            )
    assert failed.value.status_code == 502
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]


# -- count_tokens -------------------------------------------------------------------
async def test_count_tokens_is_the_upstreams_own_count_and_is_not_counted() -> None:
    backend = new_backend("anthropic")
    async with gateway(backend) as gw:
        client = gw.sdk()
        counted = await client.messages.count_tokens(
            model="claude-sonnet-4-5", messages=user("How many tokens is this?")
        )
        message = await client.messages.create(
            model="claude-sonnet-4-5", max_tokens=20, messages=user("How many tokens is this?")
        )
        usage = await gw.inner.runtime.quota.usage((await gw.store.list())[0])
    assert counted.input_tokens == message.usage.input_tokens
    assert usage["used"]["requests"] == 1  # the count was not a counted request


async def test_count_tokens_on_gemini_asks_gemini() -> None:
    backend = new_backend("gemini")
    async with gateway(backend) as gw:
        counted = await gw.sdk().messages.count_tokens(
            model=backend.model, messages=user("Count me on Gemini")
        )
    assert backend.fake.last.action == "countTokens"
    assert counted.input_tokens > 0


@pytest.mark.parametrize("kind", ["openai", "demo"])
async def test_count_tokens_elsewhere_is_the_estimate_never_a_404(kind: str) -> None:
    backend = new_backend(kind)
    async with gateway(backend) as gw:
        counted = await gw.sdk().messages.count_tokens(
            model=backend.model, messages=user("a" * 400)
        )
    assert counted.input_tokens >= 100


# -- errors in Anthropic's envelope ------------------------------------------------
async def test_a_missing_or_wrong_key_is_an_anthropic_authentication_error() -> None:
    async with gateway(new_backend("demo")) as gw:
        with pytest.raises(anthropic.AuthenticationError) as wrong:
            await gw.sdk(api_key="sk-wrong").messages.create(
                model="demo/echo", max_tokens=10, messages=user("x")
            )
        async with gw.http() as http:
            missing = await http.post("/v1/messages", json={})
    assert wrong.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert missing.status_code == 401
    assert missing.json()["type"] == "error"
    assert missing.json()["error"]["type"] == "authentication_error"


async def test_a_bearer_token_works_as_well_as_x_api_key() -> None:
    async with gateway(new_backend("demo")) as gw:
        client = anthropic.AsyncAnthropic(
            auth_token=gw.key, base_url="http://axione.test", max_retries=0,
            http_client=gw.sdk()._client,
        )  # fmt: skip
        message = await client.messages.create(
            model="demo/echo", max_tokens=10, messages=user("bearer")
        )
    assert message.content[0].text == "bearer"  # type: ignore[union-attr]


async def test_an_unknown_model_is_not_found_error() -> None:
    async with gateway(new_backend("demo")) as gw:
        with pytest.raises(anthropic.NotFoundError) as missing:
            await gw.sdk().messages.create(
                model="nobody/nothing", max_tokens=10, messages=user("x")
            )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "nobody/nothing" in missing.value.body["error"]["message"]  # type: ignore[index]


async def test_a_malformed_body_is_an_invalid_request_error() -> None:
    async with gateway(new_backend("demo")) as gw, gw.http() as http:
        answers = [
            await http.post("/v1/messages", headers={"x-api-key": gw.key}, content=body)
            for body in (b"{", b"[]", b'{"model": "demo/echo", "messages": []}',
                         b'{"model": "demo/echo", "messages": [{"role": "user", "content": "x"}]}')
        ]  # fmt: skip
    for answer in answers:
        assert answer.status_code == 400
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in answers[-1].json()["error"]["message"]


async def test_a_spent_day_is_a_rate_limit_error_with_retry_after() -> None:
    async with gateway(
        new_backend("demo"), tiers={"1": {"requests_per_day": 1, "tokens_per_day": 100000}}
    ) as gw:
        client = gw.sdk()
        await client.messages.create(model="demo/echo", max_tokens=10, messages=user("one"))
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(model="demo/echo", max_tokens=10, messages=user("two"))
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(limited.value.response.headers["retry-after"]) > 0
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"


async def test_a_failure_mid_stream_is_an_error_event() -> None:
    backend = new_backend("openai")
    backend.fake.stream_error_after = 2
    async with gateway(backend) as gw, gw.http() as http:
        response = await http.post(
            "/v1/messages",
            headers={"x-api-key": gw.key},
            json={"model": backend.model, "max_tokens": 50, "stream": True,
                  "messages": user("one two three four five six")},
        )  # fmt: skip
    events = _events(response.text)
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error"
    assert events[-1][1]["type"] == "error" and events[-1][1]["error"]["type"] == "api_error"


# -- names, quota, ledger -------------------------------------------------------------
async def test_aliases_send_bare_claude_names_to_their_backend_and_are_listed() -> None:
    backend = new_backend("anthropic")
    async with gateway(
        backend, aliases={"claude-*": "anthropic/claude-*", "fast": "anthropic/claude-sonnet-4-5"}
    ) as gw:
        client = gw.sdk()
        bare = await client.messages.create(
            model="claude-haiku-4-5-20251001", max_tokens=10, messages=user("bare")
        )
        fast = await client.messages.create(model="fast", max_tokens=10, messages=user("fast"))
        async with gw.http() as http:
            models = (await http.get("/v1/models", headers={"x-api-key": gw.key})).json()
    assert backend.fake.requests[0]["model"] == "claude-haiku-4-5-20251001"
    assert backend.fake.requests[1]["model"] == "claude-sonnet-4-5-20250929"
    assert bare.model == "claude-haiku-4-5-20251001" and fast.model == "fast"
    listed = {m["id"]: m for m in models["data"]}
    assert listed["fast"]["alias_of"] == "anthropic/claude-sonnet-4-5"
    assert "claude-*" not in listed and "anthropic/claude-*" not in listed


async def test_a_request_is_counted_charged_and_ledgered_with_dialect_and_session() -> None:
    backend = new_backend("anthropic")
    async with gateway(backend) as gw:
        response = await gw.sdk().messages.with_raw_response.create(
            model="claude-sonnet-4-5",
            max_tokens=10,
            messages=user("ledger me"),
            extra_headers={"X-Claude-Code-Session-Id": "session-123"},
        )
        message = await response.parse()
        assert response.headers["x-ratelimit-remaining-requests"] == "999"
        assert response.headers["x-request-id"]
        await gw.inner.runtime.quota.stop()
        records = gw.inner.runtime.quota.ledger.records()
    assert len(records) == 1
    record = records[0]
    assert record.dialect == "anthropic-messages" and record.session_id == "session-123"
    assert record.model == "anthropic/claude-sonnet-4-5" and record.status == 200
    usage = backend.fake.answers[-1]["usage"]
    assert (
        record.prompt_tokens
        == usage["input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"]
    )
    assert record.completion_tokens == message.usage.output_tokens


async def test_a_fallback_answers_when_the_primary_backend_fails() -> None:
    backend = new_backend("anthropic")
    backend.fake.fail_next(529, "overloaded_error", "Overloaded")
    async with gateway(backend, fallbacks={"anthropic/claude-sonnet-4-5": ["demo/echo"]}) as gw:
        message = await gw.sdk().messages.create(
            model="anthropic/claude-sonnet-4-5", max_tokens=20, messages=user("fall back")
        )
    assert message.model == "demo/echo"
    assert message.content[0].text == "fall back"  # type: ignore[union-attr]


async def test_the_response_cache_serves_a_translated_repeat() -> None:
    backend = new_backend("openai")
    async with gateway(backend, cache={"enabled": True, "mode": "always"}) as gw:
        client = gw.sdk()
        first = await client.messages.with_raw_response.create(
            model=backend.model, max_tokens=20, messages=user("cache me")
        )
        second = await client.messages.with_raw_response.create(
            model=backend.model, max_tokens=20, messages=user("cache me")
        )
    assert first.headers["x-axione-cache"] == "miss" and second.headers["x-axione-cache"] == "hit"
    assert (await first.parse()).content == (await second.parse()).content
    assert len(backend.fake.requests) == 1


async def test_chat_completions_clients_are_unchanged_beside_messages() -> None:
    async with gateway(new_backend("demo")) as gw, gw.http() as http:
        chat = await http.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {gw.key}"},
            json={"model": "demo/echo", "messages": user("still chat")},
        )
        missing = await http.post("/v1/chat/completions", json={})
    assert chat.json()["choices"][0]["message"]["content"] == "still chat"
    assert missing.json()["error"]["code"] == "missing_api_key"  # OpenAI's envelope there


# -- thinking toward other backends ----------------------------------------------------
async def test_thinking_becomes_geminis_thinking_config_and_its_thoughts_come_back() -> None:
    backend = new_backend("gemini")
    async with gateway(backend) as gw:
        client = gw.sdk()
        options: dict[str, Any] = {
            "model": backend.model,
            "max_tokens": 4096,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": user("Think about this"),
        }
        message = await client.messages.create(**options)
        sent = backend.fake.last_body["generationConfig"]["thinkingConfig"]
        async with client.messages.stream(**options) as stream:
            final = await stream.get_final_message()
    assert sent == {"thinkingBudget": 2048, "includeThoughts": True}
    for answer in (message, final):
        assert [b.type for b in answer.content] == ["thinking", "text"]
        assert answer.content[0].thinking == "Thinking it over."  # type: ignore[union-attr]
        assert answer.content[1].text == "Think about this"  # type: ignore[union-attr]


async def test_thinking_becomes_reasoning_effort_only_for_openai_reasoning_models() -> None:
    from axione_asgi.config import ProviderConfig
    from axione_asgi.providers.openai import OpenAIProvider
    from tests.fakes.openai_fake import FAKE_OPENAI_KEY

    backend = new_backend("openai")
    import httpx

    reasoning = OpenAIProvider(
        "reasoner",
        ProviderConfig(kind="openai", base_url="http://openai.test/v1", models={"o3": "o3"}),
        api_key=FAKE_OPENAI_KEY,
        transport=httpx.ASGITransport(app=backend.fake),
    )
    async with gateway(backend, extra={"reasoner": reasoning}) as gw:
        client = gw.sdk()
        for model in ("reasoner/o3", "openai/gpt-4o"):
            await client.messages.create(
                model=model, max_tokens=20000, messages=user("Reason"),
                thinking={"type": "enabled", "budget_tokens": 16000},
            )  # fmt: skip
    assert backend.fake.requests[0]["reasoning_effort"] == "medium"
    assert "reasoning_effort" not in backend.fake.requests[1]


async def test_unsigned_thinking_from_another_vendor_is_left_out_of_a_pass_through() -> None:
    backend = new_backend("anthropic")
    history = [
        *user("First"),
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Thinking it over.", "signature": ""},
            {"type": "text", "text": "Answer one"}]},
        *user("Second"),
    ]  # fmt: skip
    async with gateway(backend) as gw:
        message = await gw.sdk().messages.create(
            model="claude-sonnet-4-5",
            max_tokens=50,
            messages=history,  # type: ignore[arg-type]
        )
    assert message.content[0].text == "Second"  # type: ignore[union-attr]
    assert backend.fake.last_request["messages"][1]["content"] == [
        {"type": "text", "text": "Answer one"}
    ]
