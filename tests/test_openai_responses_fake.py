"""The Responses API fake speaks the real wire format (the official SDK parses it) and is strict."""

from __future__ import annotations

import json
from typing import Any

import httpx
import httpx2
import openai
import pydantic
import pytest

from tests.fakes.openai_responses_fake import FAKE_RESPONSES_KEY, FakeOpenAIResponses

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME = {
    "type": "function",
    "name": "get_time",
    "parameters": {"type": "object", "properties": {}},
}


def sdk(fake: FakeOpenAIResponses) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=FAKE_RESPONSES_KEY,
        base_url="http://fake/v1",
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=fake)),
        max_retries=0,
    )


async def post(fake: FakeOpenAIResponses, payload: Any, key: str = FAKE_RESPONSES_KEY) -> Any:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url="http://fake"
    ) as client:
        return await client.post(
            "/v1/responses", json=payload, headers={"authorization": f"Bearer {key}"}
        )


def without_ids(value: Any) -> Any:
    """The value with generated ids and timestamps blanked, to compare two answers."""
    if isinstance(value, dict):
        return {
            k: "*" if k in ("id", "call_id", "created_at", "completed_at") else without_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return value


@pytest.mark.anyio
async def test_create_answers_text_in_the_real_shape() -> None:
    fake = FakeOpenAIResponses()
    response = await sdk(fake).responses.create(
        model="gpt-4.1",
        input="Hello there, my friend",
        instructions="Be brief",
        metadata={"team": "gateway"},
        temperature=0.5,
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.error is None
    assert response.output_text == "Hello there, my friend"
    message = response.output[0]
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert response.usage is not None
    assert response.usage.input_tokens == 6  # 4 words of input, 2 of instructions
    assert response.usage.output_tokens == 4 and response.usage.total_tokens == 10
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    raw = fake.answers[-1]
    assert raw["instructions"] == "Be brief" and raw["metadata"] == {"team": "gateway"}
    assert raw["temperature"] == 0.5 and raw["top_p"] == 1.0
    assert raw["tool_choice"] == "auto" and raw["tools"] == [] and raw["parallel_tool_calls"]
    assert raw["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    assert raw["reasoning"] == {"effort": None, "summary": None}
    assert raw["store"] is True and raw["truncation"] == "disabled"
    assert raw["incomplete_details"] is None and raw["previous_response_id"] is None
    assert fake.request_headers[-1]["authorization"] == f"Bearer {FAKE_RESPONSES_KEY}"
    assert fake.last_request["input"] == "Hello there, my friend"


@pytest.mark.anyio
async def test_stream_carries_the_same_response_as_non_stream() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    plain = await client.responses.create(model="gpt-4.1", input="one two three four")
    stream = await client.responses.create(model="gpt-4.1", input="one two three four", stream=True)
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "one two three four"
    final = events[-1].response
    assert without_ids(final.to_dict()) == without_ids(plain.to_dict())

    async with client.responses.stream(model="gpt-4.1", input="one two three four") as helper:
        async for _ in helper:
            pass
        streamed = await helper.get_final_response()
    assert streamed.output_text == "one two three four"
    assert streamed.usage is not None and streamed.usage.output_tokens == 4


@pytest.mark.anyio
async def test_function_tool_round_trip() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    first = await client.responses.create(
        model="gpt-4.1", input="Weather in Paris?", tools=[WEATHER, TIME]
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.id is not None and call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"input": "Weather in Paris?"}
    assert call.status == "completed"
    second = await client.responses.create(
        model="gpt-4.1",
        previous_response_id=first.id,
        tools=[WEATHER, TIME],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
    )
    assert second.output_text == "The tool answered: Sunny"
    # Stateless: the whole history sent back, the SDK's own output items included.
    replayed = await client.responses.create(
        model="gpt-4.1",
        store=False,
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            call.to_dict(),
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": [{"type": "input_text", "text": "Rainy"}],
            },
        ],
    )
    assert replayed.output_text == "The tool answered: Rainy"
    forced = await client.responses.create(
        model="gpt-4.1",
        input="What time is it?",
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "name": "get_time"},
    )
    assert [item.name for item in forced.output] == ["get_time"]  # type: ignore[union-attr]
    plain = await client.responses.create(
        model="gpt-4.1", input="Just talk", tools=[WEATHER], tool_choice="none"
    )
    assert plain.output_text == "Just talk"


@pytest.mark.anyio
async def test_tool_outputs_must_pair_with_calls() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    with pytest.raises(openai.BadRequestError) as orphan:
        await client.responses.create(
            model="gpt-4.1",
            input=[
                {"role": "user", "content": "hi"},
                {"type": "function_call_output", "call_id": "call_nope", "output": "x"},
            ],
        )
    assert "No tool call found for function call output with call_id call_nope." in str(
        orphan.value
    )
    first = await client.responses.create(model="gpt-4.1", input="Weather?", tools=[WEATHER])
    with pytest.raises(openai.BadRequestError) as unanswered:
        await client.responses.create(
            model="gpt-4.1", previous_response_id=first.id, input="never mind"
        )
    call_id = first.output[0].call_id  # type: ignore[union-attr]
    assert f"No tool output found for function call {call_id}." in str(unanswered.value)


@pytest.mark.anyio
async def test_parallel_calls_and_their_stream() -> None:
    fake = FakeOpenAIResponses(parallel_calls=2)
    client = sdk(fake)
    both = await client.responses.create(model="gpt-4.1", input="Paris", tools=[WEATHER, TIME])
    assert [item.name for item in both.output] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    one = await client.responses.create(
        model="gpt-4.1", input="Paris", tools=[WEATHER, TIME], parallel_tool_calls=False
    )
    assert len(one.output) == 1
    outputs = [
        {"type": "function_call_output", "call_id": item.call_id, "output": f"r{n}"}  # type: ignore[union-attr]
        for n, item in enumerate(both.output)
    ]
    after = await client.responses.create(
        model="gpt-4.1", previous_response_id=both.id, input=outputs, tools=[WEATHER, TIME]
    )
    assert after.output_text == "The tool answered: r0; r1"

    stream = await client.responses.create(
        model="gpt-4.1", input="Paris", tools=[WEATHER, TIME], stream=True
    )
    events = [event async for event in stream]
    added = [e.output_index for e in events if e.type == "response.output_item.added"]
    assert added == [0, 1]
    pieces: dict[int, str] = {0: "", 1: ""}
    for event in events:
        if event.type == "response.function_call_arguments.delta":
            pieces[event.output_index] += event.delta
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [d.arguments for d in done] == [pieces[0], pieces[1]]
    assert json.loads(pieces[1]) == {"input": "Paris"}
    assert events[-1].type == "response.completed"


@pytest.mark.anyio
async def test_previous_response_id_over_three_turns() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    one = await client.responses.create(model="gpt-4.1", input="alpha beta")
    two = await client.responses.create(model="gpt-4.1", input="gamma", previous_response_id=one.id)
    three = await client.responses.create(
        model="gpt-4.1", input="delta epsilon zeta", previous_response_id=two.id
    )
    assert three.output_text == "delta epsilon zeta"
    assert three.previous_response_id == two.id
    # Each turn bills the whole chain: the inputs and the outputs before it.
    assert [r.usage.input_tokens for r in (one, two, three)] == [2, 5, 9]  # type: ignore[union-attr]
    items = await client.responses.input_items.list(three.id)
    assert [item.content[0].text for item in items.data] == ["delta epsilon zeta"]  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as unknown:
        await client.responses.create(model="gpt-4.1", input="x", previous_response_id="resp_x")
    assert unknown.value.code == "previous_response_not_found"
    assert "Previous response with id 'resp_x' not found." in str(unknown.value)
    unstored = await client.responses.create(model="gpt-4.1", input="secret", store=False)
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(
            model="gpt-4.1", input="more", previous_response_id=unstored.id
        )


@pytest.mark.anyio
async def test_retrieve_delete_and_input_items() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    created = await client.responses.create(
        model="gpt-4.1",
        input=[
            {"role": "developer", "content": "Answer briefly"},
            {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"type": "message", "role": "user", "content": "second"},
        ],
    )
    fetched = await client.responses.retrieve(created.id)
    assert fetched.to_dict() == created.to_dict()
    newest_first = await client.responses.input_items.list(created.id)
    texts = [item.content[0].text for item in newest_first.data]  # type: ignore[union-attr]
    assert texts == ["second", "first", "Answer briefly"]
    assert all(item.id.startswith("msg_") for item in newest_first.data)  # type: ignore[union-attr]
    page = await client.responses.input_items.list(created.id, order="asc", limit=2)
    assert [item.role for item in page.data] == ["developer", "user"]  # type: ignore[union-attr]
    assert page.has_more is True and page.last_id == page.data[-1].id  # type: ignore[union-attr]
    rest = await page.get_next_page()
    assert [item.content[0].text for item in rest.data] == ["second"]  # type: ignore[union-attr]

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url="http://fake"
    ) as raw:
        answer = await raw.delete(
            f"/v1/responses/{created.id}",
            headers={"authorization": f"Bearer {FAKE_RESPONSES_KEY}"},
        )
    assert answer.json() == {"id": created.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)
    other = await client.responses.create(model="gpt-4.1", input="bye")
    await client.responses.delete(other.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.input_items.list(other.id)


class Weather(pydantic.BaseModel):
    city: str
    degrees: int
    tags: list[str]
    sunny: bool


@pytest.mark.anyio
async def test_parse_with_a_pydantic_model() -> None:
    fake = FakeOpenAIResponses()
    parsed = await sdk(fake).responses.parse(model="gpt-4.1", input="Paris", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", degrees=1, tags=["Paris"], sunny=True)
    sent = fake.last_request["text"]["format"]
    assert sent["type"] == "json_schema" and sent["name"] == "Weather" and sent["strict"]
    assert fake.answers[-1]["text"]["format"]["name"] == "Weather"
    with pytest.raises(openai.BadRequestError) as loose:
        await sdk(fake).responses.create(
            model="gpt-4.1",
            input="x",
            text={
                "format": {
                    "type": "json_schema",
                    "name": "Loose",
                    "strict": True,
                    "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                }
            },
        )
    assert loose.value.code == "invalid_json_schema"


@pytest.mark.anyio
async def test_reasoning_encrypted_content_replays_and_tampering() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    first = await client.responses.create(
        model="gpt-5",
        input="Weather in Oslo?",
        tools=[WEATHER],
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
        store=False,
    )
    reasoning, call = first.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert [s.text for s in reasoning.summary] == ["Thinking about it."]
    assert reasoning.encrypted_content
    assert first.usage is not None and first.usage.output_tokens_details.reasoning_tokens == 3
    assert first.reasoning is not None and first.reasoning.effort == "low"

    def replay(encrypted: str) -> list[Any]:
        return [
            {"role": "user", "content": "Weather in Oslo?"},
            {**reasoning.to_dict(), "encrypted_content": encrypted},
            call.to_dict(),
            {"type": "function_call_output", "call_id": call.call_id, "output": "Cold"},  # type: ignore[union-attr]
        ]

    second = await client.responses.create(
        model="gpt-5", input=replay(reasoning.encrypted_content), reasoning={"effort": "low"},
        store=False,
    )  # fmt: skip
    assert second.output[-1].type == "message"
    assert second.output_text == "The tool answered: Cold"
    assert fake.verified_reasoning == 1
    token = reasoning.encrypted_content
    tampered = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(model="gpt-5", input=replay(tampered), store=False)
    assert bad.value.code == "invalid_encrypted_content"
    # Without its encrypted content, an unstored reasoning item cannot be found.
    bare = {k: v for k, v in reasoning.to_dict().items() if k != "encrypted_content"}
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(
            model="gpt-5", input=[replay(token)[0], bare, *replay(token)[2:]], store=False
        )
    # A reasoning item must come with the item that followed it.
    with pytest.raises(openai.BadRequestError, match="without its required following item"):
        await client.responses.create(
            model="gpt-5", input=[*replay(token)[:2], {"role": "user", "content": "x"}]
        )


@pytest.mark.anyio
async def test_reasoning_stream_events_and_model_checks() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    stream = await client.responses.create(
        model="o4-mini", input="Think", reasoning={"effort": "high", "summary": "detailed"},
        stream=True,
    )  # fmt: skip
    types = [event.type async for event in stream]
    assert types[2:8] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        *["response.reasoning_summary_text.delta"] * 3,
        "response.reasoning_summary_text.done",
    ]
    assert types[8:10] == ["response.reasoning_summary_part.done", "response.output_item.done"]
    with pytest.raises(openai.BadRequestError) as effort:
        await client.responses.create(model="gpt-4.1", input="x", reasoning={"effort": "low"})
    assert effort.value.param == "reasoning.effort"
    with pytest.raises(openai.BadRequestError) as temperature:
        await client.responses.create(model="gpt-5", input="x", temperature=0.2)
    assert temperature.value.code == "unsupported_parameter"


@pytest.mark.anyio
async def test_unknown_parameter_is_a_bad_request() -> None:
    fake = FakeOpenAIResponses()
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(fake).responses.create(model="gpt-4.1", input="hi", extra_body={"foo": 1})
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "message": "Unknown parameter: 'foo'.",
        "type": "invalid_request_error",
        "param": "foo",
        "code": "unknown_parameter",
    }
    answer = await post(fake, {"model": "gpt-4.1", "input": [{"type": "magic", "x": 1}]})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "input[0].type"
    answer = await post(fake, {"model": "gpt-4.1", "input": "hi", "tools": [{"type": "function"}]})
    assert answer.json()["error"]["message"] == "Missing required parameter: 'tools[0].name'."
    answer = await post(
        fake, {"model": "gpt-4.1", "input": "hi", "tools": [{"type": "function", "name": "f"}]}
    )
    assert answer.json()["error"]["param"] == "tools[0].parameters"
    answer = await post(fake, {"model": "gpt-4.1", "input": "hi", "max_output_tokens": 5})
    assert answer.json()["error"]["code"] == "integer_below_min_value"
    answer = await post(fake, {"model": "gpt-4.1", "input": "hi", "include": ["everything"]})
    assert answer.json()["error"]["param"] == "include[0]"
    answer = await post(fake, {"input": "hi"})
    assert answer.json()["error"]["code"] == "missing_required_parameter"
    answer = await post(fake, {"model": "gpt-4.1", "input": "hi"}, key="sk-wrong-key-000")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    answer = await post(
        fake, {"model": "gpt-4.1", "input": "hi", "text": {"format": {"type": "json_object"}}}
    )
    assert "must contain the word 'json'" in answer.json()["error"]["message"]


@pytest.mark.anyio
async def test_incomplete_by_max_output_tokens() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    words = " ".join(f"w{n}" for n in range(30))
    cut = await client.responses.create(model="gpt-4.1", input=words, max_output_tokens=16)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output_text.split() == words.split()[:16]
    assert cut.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert cut.usage is not None and cut.usage.output_tokens == 16
    stream = await client.responses.create(
        model="gpt-4.1", input=words, max_output_tokens=16, stream=True
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_custom_tool_call() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    tool = {"type": "custom", "name": "shell", "description": "Runs a command"}
    first = await client.responses.create(model="gpt-4.1", input="ls -la", tools=[tool])
    (call,) = first.output
    assert call.type == "custom_tool_call" and call.input == "ls -la"
    second = await client.responses.create(
        model="gpt-4.1",
        previous_response_id=first.id,
        input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "a b"}],
    )
    assert second.output_text == "The tool answered: a b"


@pytest.mark.anyio
async def test_failure_knobs() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    fake.fail_next(429)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.responses.create(model="gpt-4.1", input="hi")
    assert limited.value.code == "rate_limit_exceeded"
    fake.fail_next(500, "Boom", "server_error", "boom")
    with pytest.raises(openai.InternalServerError):
        await client.responses.create(model="gpt-4.1", input="hi")

    fake.stream_error_after = 4
    stream = await client.responses.create(model="gpt-4.1", input="a b c d e", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert len(events) == 6 and events[-1].response.status == "failed"
    assert (await client.responses.retrieve(events[-1].response.id)).status == "failed"

    fake.stream_error_after = None
    fake.cut_stream_after = 3
    stream = await client.responses.create(model="gpt-4.1", input="a b c d e", stream=True)
    assert len([event async for event in stream]) == 3


@pytest.mark.anyio
async def test_tool_names_and_tool_arguments_knobs() -> None:
    fake = FakeOpenAIResponses()
    client = sdk(fake)
    fake.tool_names = ["get_time"]
    fake.tool_arguments = '{"zone": "UTC"}'
    (call,) = (
        await client.responses.create(model="gpt-4.1", input="hi", tools=[WEATHER, TIME])
    ).output
    assert (call.name, call.arguments) == ("get_time", '{"zone": "UTC"}')  # type: ignore[union-attr]
    fake.tool_names = []
    text = await client.responses.create(model="gpt-4.1", input="hi", tools=[WEATHER, TIME])
    assert text.output_text == "hi"
    # A forced choice wins over the names.
    forced = await client.responses.create(
        model="gpt-4.1",
        input="hi",
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert [item.name for item in forced.output] == ["get_weather"]  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_namespace_tools_and_client_metadata_as_codex_sends_them() -> None:
    fake = FakeOpenAIResponses()
    namespace = {
        "type": "namespace",
        "name": "multi_agent_v1",
        "description": "Tools for sub-agents.",
        "tools": [{**WEATHER, "strict": False}],
    }
    body = {
        "model": "gpt-4.1",
        "input": "hi",
        "tools": [TIME, namespace],
        "client_metadata": {"session_id": "abc"},
    }
    answer = await post(fake, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["tools"][1]["tools"][0]["name"] == "get_weather"
    # The functions inside a namespace are checked like any other; nothing else nests.
    bad = {**namespace, "tools": [{"type": "function", "name": "f"}]}
    answer = await post(fake, {**body, "tools": [bad]})
    assert answer.json()["error"]["param"] == "tools[0].tools[0].parameters"
    bad = {**namespace, "tools": [{"type": "web_search"}]}
    answer = await post(fake, {**body, "tools": [bad]})
    assert answer.json()["error"]["param"] == "tools[0].tools[0].type"
    answer = await post(fake, {**body, "tools": [{**namespace, "extra": 1}]})
    assert answer.json()["error"]["code"] == "unknown_parameter"
    answer = await post(fake, {**body, "client_metadata": {"n": 1}})
    assert answer.json()["error"]["param"] == "client_metadata.n"
