"""The OpenAI Responses dialect, seen through the official openai SDK, to every backend.

The SDK's `client.responses` talks to the gateway in-process; the gateway
translates to the Anthropic, OpenAI chat, Gemini and demo backends over
their strict fakes, and keeps stored responses itself.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest
from pydantic import BaseModel

from tests.messages_backends import BACKENDS, Backend, Gateway, gateway, new_backend

pytestmark = pytest.mark.anyio

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME = {
    "type": "function",
    "name": "get_time",
    "description": "Current time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TOOL_BACKENDS = ["anthropic", "openai", "gemini"]


def sdk(gw: Gateway, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key or gw.key,
        base_url="http://axione.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gw.app)),
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return new_backend(request.param)


# -- answers ---------------------------------------------------------------------
async def test_a_response_names_the_model_asked_and_carries_usage(backend: Backend) -> None:
    async with gateway(backend) as gw:
        response = await sdk(gw).responses.create(model=backend.model, input="Hello there friend")
    assert response.object == "response" and response.status == "completed"
    assert response.model == backend.model
    assert response.output_text == "Hello there friend"
    assert response.output[-1].type == "message"
    assert response.usage is not None
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


async def test_streamed_text_equals_the_whole_answer_and_events_are_numbered(
    backend: Backend,
) -> None:
    async with gateway(backend) as gw:
        client = sdk(gw)
        whole = await client.responses.create(model=backend.model, input="Stream these words")
        async with client.responses.stream(model=backend.model, input="Stream these words") as s:
            events = [event async for event in s]
            final = await s.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == whole.output_text == final.output_text
    assert len(deltas) > 1
    assert final.usage is not None and whole.usage is not None
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens


async def test_usage_is_the_upstreams_own_count() -> None:
    backend = new_backend("anthropic")
    async with gateway(backend) as gw:
        response = await sdk(gw).responses.create(model=backend.model, input="Count me")
    usage = backend.fake.answers[-1]["usage"]
    assert response.usage is not None
    assert response.usage.output_tokens == usage["output_tokens"]
    assert (
        response.usage.input_tokens
        == usage["input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"]
    )


# -- tools -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", TOOL_BACKENDS)
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_function_tool_round_trip(kind: str, streamed: bool) -> None:
    backend = new_backend(kind)
    async with gateway(backend) as gw:
        client = sdk(gw)

        async def ask(**fields: Any) -> Any:
            if not streamed:
                return await client.responses.create(model=backend.model, **fields)
            async with client.responses.stream(model=backend.model, **fields) as stream:
                return await stream.get_final_response()

        first = await ask(input="Weather in Paris?", tools=[WEATHER])
        calls = [item for item in first.output if item.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "get_weather"
        assert isinstance(json.loads(calls[0].arguments), dict)
        second = await ask(
            input=[
                {
                    "type": "function_call_output",
                    "call_id": calls[0].call_id,
                    "output": "sunny, 21 C",
                }
            ],
            previous_response_id=first.id,
            tools=[WEATHER],
        )
    assert "sunny, 21 C" in second.output_text


async def test_parallel_calls_come_back_as_several_function_call_items() -> None:
    backend = new_backend("anthropic")
    backend.fake.tool_calls_per_turn = 2
    async with gateway(backend) as gw:
        client = sdk(gw)
        first = await client.responses.create(
            model=backend.model, input="Weather and time in Oslo?", tools=[WEATHER, TIME]
        )
        calls = [item for item in first.output if item.type == "function_call"]
        assert [c.name for c in calls] == ["get_weather", "get_time"]
        second = await client.responses.create(
            model=backend.model,
            previous_response_id=first.id,
            tools=[WEATHER, TIME],
            input=[
                {"type": "function_call_output", "call_id": c.call_id, "output": f"{c.name} ok"}
                for c in calls
            ],
        )
    assert "get_weather ok" in second.output_text and "get_time ok" in second.output_text
    sent = backend.fake.last_request["messages"]
    assert [b["type"] for b in sent[-1]["content"]] == ["tool_result", "tool_result"]


async def test_a_custom_free_form_tool_is_a_one_string_function_and_comes_back_custom() -> None:
    backend = new_backend("openai")
    patch_tool = {
        "type": "custom",
        "name": "apply_patch",
        "description": "Apply a patch",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
    }
    async with gateway(backend) as gw:
        response = await sdk(gw).responses.create(
            model=backend.model,
            input="Patch the file",
            tools=[patch_tool],  # type: ignore[list-item]
        )
    sent = backend.fake.requests[-1]["tools"][0]["function"]
    assert sent["name"] == "apply_patch"
    assert sent["parameters"]["properties"] == {
        "input": {"type": "string", "description": "The tool's whole input."}
    }
    call = next(item for item in response.output if item.type == "custom_tool_call")
    assert call.name == "apply_patch" and call.input == "Patch the file"


async def test_web_search_is_left_out_and_named_and_stateful_tools_are_refused() -> None:
    backend = new_backend("openai")
    async with gateway(backend) as gw:
        client = sdk(gw)
        raw = await client.responses.with_raw_response.create(
            model=backend.model,
            input="Hi",
            tools=[{"type": "web_search"}, WEATHER],  # type: ignore[list-item]
        )
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(
                model=backend.model,
                input="Hi",
                tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}],  # type: ignore[list-item]
            )
    assert raw.headers["x-axione-ignored-tools"] == "web_search"
    assert [t["function"]["name"] for t in backend.fake.requests[0]["tools"]] == ["get_weather"]
    assert "file_search" in refused.value.message


# -- state -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["anthropic", "gemini", "demo"])
async def test_previous_response_id_continues_over_three_turns(kind: str) -> None:
    backend = new_backend(kind)
    async with gateway(backend) as gw:
        client = sdk(gw)
        one = await client.responses.create(model=backend.model, input="one", instructions="Echo.")
        two = await client.responses.create(
            model=backend.model, input="two", previous_response_id=one.id
        )
        three = await client.responses.create(
            model=backend.model, input="three", previous_response_id=two.id
        )
        items = await client.responses.input_items.list(three.id, order="asc")
    assert three.output_text == "three"
    texts = [item.content[0].text for item in items.data if item.type == "message"]  # type: ignore[union-attr]
    assert texts == ["one", "one", "two", "two", "three"]
    if kind == "anthropic":
        first, last = backend.fake.requests[0], backend.fake.last_request
        assert first["system"] == [{"type": "text", "text": "Echo."}]
        assert "system" not in last  # instructions are not carried over, as on OpenAI
        assert [m["role"] for m in last["messages"]] == ["user", "assistant"] * 2 + ["user"]


async def test_retrieve_and_delete_are_per_key_and_store_false_keeps_nothing() -> None:
    async with gateway(new_backend("demo")) as gw:
        client = sdk(gw)
        _, other_key = await gw.store.create("other")
        other = sdk(gw, other_key)
        kept = await client.responses.create(model="demo/echo", input="keep me")
        assert (await client.responses.retrieve(kept.id)).output_text == "keep me"
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(kept.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.create(
                model="demo/echo", input="steal", previous_response_id=kept.id
            )
        unkept = await client.responses.create(model="demo/echo", input="forget me", store=False)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(unkept.id)
        await client.responses.delete(kept.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(kept.id)


async def test_stored_responses_live_in_sqlite_beside_the_ledger(tmp_path: Any) -> None:
    db = f"sqlite:///{tmp_path}/axione.db"
    async with gateway(new_backend("demo"), storage={"keys": "memory://", "ledger": db}) as gw:
        kept = await sdk(gw).responses.create(model="demo/echo", input="on disk")
    async with gateway(new_backend("demo"), storage={"keys": "memory://", "ledger": db}) as gw2:
        # The same key, as a second process sharing the key database would know it.
        gw2.store._by_id.update(gw.store._by_id)
        gw2.store._id_by_hash.update(gw.store._id_by_hash)
        again = await sdk(gw2, gw.key).responses.retrieve(kept.id)
    assert again.output_text == "on disk"


# -- formats, limits, errors ----------------------------------------------------
class Person(BaseModel):
    name: str
    age: int


async def test_parse_with_a_pydantic_model() -> None:
    backend = new_backend("openai")
    async with gateway(backend) as gw:
        parsed = await sdk(gw).responses.parse(
            model=backend.model, input='{"name": "Ada", "age": 36}', text_format=Person
        )
    assert parsed.output_parsed == Person(name="Ada", age=36)
    fmt = backend.fake.requests[-1]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"]["properties"]["age"]


async def test_an_answer_cut_by_max_output_tokens_is_incomplete() -> None:
    async with gateway(new_backend("demo")) as gw:
        response = await sdk(gw).responses.create(
            model="demo/echo", input="one two three four five six seven", max_output_tokens=16
        )
    assert response.status in ("incomplete", "completed")
    async with gateway(new_backend("demo")) as gw:
        client = sdk(gw)
        cut = await client.responses.create(
            model="demo/echo", input=" ".join(["word"] * 40), max_output_tokens=16
        )
    assert cut.status == "incomplete"
    assert (
        cut.incomplete_details is not None and cut.incomplete_details.reason == "max_output_tokens"
    )


async def test_errors_are_the_sdks_own_classes() -> None:
    async with gateway(new_backend("demo")) as gw:
        with pytest.raises(openai.AuthenticationError):
            await sdk(gw, "sk-wrong").responses.create(model="demo/echo", input="x")
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk(gw).responses.create(model="nobody/nothing", input="x")
        with pytest.raises(openai.BadRequestError):
            await sdk(gw).responses.create(
                model="demo/echo", input=[{"type": "message", "role": "robot", "content": "x"}]
            )  # type: ignore[list-item]
    assert missing.value.code == "model_not_found"


async def test_a_failure_mid_stream_is_an_error_then_response_failed() -> None:
    backend = new_backend("openai")
    backend.fake.stream_error_after = 2
    async with gateway(backend) as gw, gw.http() as http:
        answer = await http.post(
            "/v1/responses",
            headers={"authorization": f"Bearer {gw.key}"},
            json={"model": backend.model, "input": "one two three four five", "stream": True},
        )
    names = [
        line.removeprefix("event: ")
        for line in answer.text.splitlines()
        if line.startswith("event: ")
    ]
    assert names[0] == "response.created"
    assert names[-2:] == ["error", "response.failed"]


async def test_a_responses_request_is_ledgered_with_its_dialect() -> None:
    async with gateway(new_backend("demo")) as gw:
        raw = await sdk(gw).responses.with_raw_response.create(model="demo/echo", input="count")
        assert raw.headers["x-ratelimit-remaining-requests"] == "999"
        await gw.inner.runtime.quota.stop()
        records = gw.inner.runtime.quota.ledger.records()
    assert [r.dialect for r in records] == ["openai-responses"]
    assert records[0].prompt_tokens > 0 and records[0].status == 200


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
async def test_web_search_goes_to_the_backends_own_search_tool(kind: str) -> None:
    backend = new_backend(kind)
    async with gateway(backend) as gw:
        raw = await sdk(gw).responses.with_raw_response.create(
            model=backend.model, input="News today?", tools=[{"type": "web_search"}]
        )
    assert "x-axione-ignored-tools" not in raw.headers
    if kind == "anthropic":
        assert backend.fake.last_request["tools"] == [
            {"type": "web_search_20250305", "name": "web_search"}
        ]
    else:
        assert backend.fake.last_body["tools"] == [{"googleSearch": {}}]
    assert raw.parse().output_text == "News today?"


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_stateless_client_gets_anthropic_thinking_back_through_encrypted_content(
    streamed: bool,
) -> None:
    backend = new_backend("anthropic")
    options: dict[str, Any] = {
        "model": backend.model,
        "tools": [WEATHER],
        "reasoning": {"effort": "low"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
    }
    async with gateway(backend) as gw:
        client = sdk(gw)

        async def ask(items: Any) -> Any:
            if not streamed:
                return await client.responses.create(input=items, **options)
            async with client.responses.stream(input=items, **options) as stream:
                return await stream.get_final_response()

        question = [{"role": "user", "content": "Weather in Lima?"}]
        first = await ask(question)
        reasoning = [item for item in first.output if item.type == "reasoning"]
        assert reasoning and reasoning[0].encrypted_content
        assert reasoning[0].summary[0].text  # the thinking text, as a summary
        call = next(item for item in first.output if item.type == "function_call")
        second = await ask(
            [
                *question,
                *(item.model_dump(exclude_none=True) for item in first.output),
                {"type": "function_call_output", "call_id": call.call_id, "output": "cloudy"},
            ]
        )
    assert "cloudy" in second.output_text
    sent = backend.fake.last_request
    assert sent["thinking"]["type"] == "enabled"
    assert sent["messages"][1]["content"][0]["type"] == "thinking"
    assert backend.fake.verified_signatures >= 1  # Anthropic's own signature, replayed intact


async def test_reasoning_state_from_anthropic_is_dropped_toward_another_backend() -> None:
    backend = new_backend("gemini")
    async with gateway(backend) as gw:
        response = await sdk(gw).responses.create(
            model=backend.model,
            input=[
                {"role": "user", "content": "First"},
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [],
                    "encrypted_content": "anthropic:W10=",
                },
                {"role": "assistant", "content": "Answer one"},
                {"role": "user", "content": "Second"},
            ],
        )
    assert response.output_text == "Second"
    assert [c["role"] for c in backend.fake.last_body["contents"]] == ["user", "model", "user"]


# -- pass-through to OpenAI's own /responses ------------------------------------------
async def test_pass_through_forwards_the_body_as_sent_and_answers_it_as_written() -> None:
    backend = new_backend("openai-native")
    body = {
        "model": "openai-native/gpt-5",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Pass me"}]}],
        "reasoning": {"effort": "low", "summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "store": False,
        "tools": [{"type": "web_search"}],
        "prompt_cache_key": "abc",
    }
    async with gateway(backend) as gw, gw.http() as http:
        answer = await http.post(
            "/v1/responses", json=body, headers={"authorization": f"Bearer {gw.key}"}
        )
    assert answer.status_code == 200, answer.text
    assert backend.fake.last_request == {**body, "model": "gpt-5-2025-08-07"}
    assert gw.key not in json.dumps(backend.fake.request_headers[-1])
    got = answer.json()
    assert got["model"] == "openai-native/gpt-5"
    assert "x-axione-ignored-tools" not in answer.headers  # OpenAI runs its own tools
    assert {k: v for k, v in got.items() if k != "model"} == {
        k: v for k, v in backend.fake.answers[-1].items() if k != "model"
    }


async def test_pass_through_stream_relays_the_upstreams_events_but_model() -> None:
    backend = new_backend("openai-native")
    async with (
        gateway(backend) as gw,
        sdk(gw).responses.stream(model="openai-native/gpt-5", input="Relay us") as s,
    ):
        events = [event async for event in s]
        final = await s.get_final_response()
    assert final.output_text == "Relay us" and final.model == "openai-native/gpt-5"
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_pass_through_errors_come_back_with_the_upstreams_own_status_and_words() -> None:
    backend = new_backend("openai-native")
    async with gateway(backend) as gw:
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk(gw).responses.create(
                model="openai-native/gpt-5", input="x", extra_body={"bogus_field": 1}
            )
    assert bad.value.code == "unknown_parameter"
    assert "bogus_field" in bad.value.message


async def test_a_conversation_can_move_from_a_translated_backend_to_openai() -> None:
    backend = new_backend("openai-native")
    async with gateway(backend) as gw:
        client = sdk(gw)
        first = await client.responses.create(model="demo/echo", input="Start on demo")
        second = await client.responses.create(
            model="openai-native/gpt-5", input="Go on at OpenAI", previous_response_id=first.id
        )
    assert second.output_text == "Go on at OpenAI"
    sent = backend.fake.last_request
    assert "previous_response_id" not in sent  # OpenAI never saw the first turn
    assert [item.get("role") for item in sent["input"]] == ["user", "assistant", "user"]


async def test_codexs_session_header_is_kept_in_the_ledger() -> None:
    async with gateway(new_backend("demo")) as gw:
        await sdk(gw).responses.create(
            model="demo/echo", input="count", extra_headers={"session-id": "codex-session-9"}
        )
        await gw.inner.runtime.quota.stop()
        records = gw.inner.runtime.quota.ledger.records()
    assert [r.session_id for r in records] == ["codex-session-9"]


@pytest.mark.parametrize("cut", [0, 2, 5])
async def test_a_cut_pass_through_stream_ends_with_an_error_event(cut: int) -> None:
    backend = new_backend("openai-native")
    backend.fake.cut_stream_after = cut
    async with gateway(backend) as gw, gw.http() as http:
        answer = await http.post(
            "/v1/responses",
            headers={"authorization": f"Bearer {gw.key}"},
            json={"model": "openai-native/gpt-5", "input": "cut me short", "stream": True},
        )
    names = [line[7:] for line in answer.text.splitlines() if line.startswith("event: ")]
    assert names[-1] == "error"
    assert "ended the stream before the answer was complete" in answer.text


async def test_web_search_without_live_access_is_left_out_and_named() -> None:
    backend = new_backend("anthropic")
    async with gateway(backend) as gw:
        raw = await sdk(gw).responses.with_raw_response.create(
            model=backend.model,
            input="Hi",
            tools=[{"type": "web_search", "external_web_access": False}],  # type: ignore[list-item]
        )
    assert raw.headers["x-axione-ignored-tools"] == "web_search"
    assert "tools" not in backend.fake.last_request


async def test_gemini_before_3_takes_no_search_beside_functions_so_it_is_named() -> None:
    backend = new_backend("gemini")
    async with gateway(backend) as gw:
        raw = await sdk(gw).responses.with_raw_response.create(
            model=backend.model,
            input="Hi",
            tools=[{"type": "web_search"}, WEATHER],  # type: ignore[list-item]
        )
    assert raw.headers["x-axione-ignored-tools"] == "web_search"
    assert [list(t) for t in backend.fake.last_body["tools"]] == [["functionDeclarations"]]
