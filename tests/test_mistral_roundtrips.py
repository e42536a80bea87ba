"""Mistral round trips as real clients make them, through the openai SDK (issue 16).

Clients send back what they received (`refusal`, `annotations`, `index`,
`provider_specific_fields`), histories carry other models' tool-call ids, and
SDK stream helpers build tool calls from OpenAI's exact delta shape. The
upstream is the strict Mistral fake (`FakeOpenAI(flavor="mistral")`), which
refuses, as Mistral does, every message field its schema lacks and every
tool-call id that is not 9 alphanumerics.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from axione_asgi import AxioneConfig, create_app
from axione_asgi.config import ProviderConfig
from axione_asgi.openai_types import ChatCompletionChunk
from axione_asgi.providers.openai import (
    MistralProvider,
    MistralToolCallDeltas,
    OpenAIProvider,
    mistral_tool_call_id,
)
from axione_asgi.stores import MemoryKeyStore
from tests.fakes.openai_fake import FAKE_OPENAI_KEY, FakeOpenAI

pytestmark = pytest.mark.anyio

MODEL = "mistral/mistral-large"
MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
USER = [{"role": "user", "content": "Weather in Paris?"}]


class Lookup(BaseModel):
    input: str


LOOKUP = openai.pydantic_function_tool(Lookup, name="lookup")


@dataclass
class Gateway:
    client: openai.AsyncOpenAI
    raw: httpx2.AsyncClient
    mistral: FakeOpenAI
    openai: FakeOpenAI


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[Gateway]:
    mistral, upstream = FakeOpenAI(flavor="mistral"), FakeOpenAI()
    providers = {
        "mistral": MistralProvider(
            "mistral",
            ProviderConfig(
                kind="mistral",
                base_url="http://mistral/v1",
                models={"mistral-large": "mistral-large-latest"},
            ),
            api_key=FAKE_OPENAI_KEY,
            transport=httpx.ASGITransport(app=mistral),
        ),
        "openai": OpenAIProvider(
            "openai",
            ProviderConfig(kind="openai", base_url="http://openai/v1", models={"gpt-4o": "gpt-4o"}),
            api_key=FAKE_OPENAI_KEY,
            transport=httpx.ASGITransport(app=upstream),
        ),
    }
    store = MemoryKeyStore()
    _, key = await store.create("mistral-roundtrips")
    config = AxioneConfig(
        storage={"keys": "memory://", "ledger": "memory://"},
        retry={"max_retries": 0},
        tiers={1: {"requests_per_day": 10**9, "tokens_per_day": 10**15}},
    )
    app = create_app(config, providers=providers, key_store=store)
    raw = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"Authorization": f"Bearer {key}"},
    )
    client = openai.AsyncOpenAI(
        api_key=key, base_url="http://gateway/", max_retries=0, http_client=raw
    )
    async with app.lifespan(), raw:
        yield Gateway(client, raw, mistral, upstream)


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with running() as gateway:
        yield gateway


def sent_ids(body: dict[str, Any]) -> list[str]:
    """Every tool-call id a request body holds, calls and results alike."""
    ids: list[str] = []
    for message in body["messages"]:
        ids += [c["id"] for c in message.get("tool_calls") or ()]
        if message["role"] == "tool":
            ids.append(message["tool_call_id"])
    return ids


# -- the strict fake refuses what Mistral refuses ------------------------------------------


async def test_the_fake_refuses_an_echoed_message_field_with_mistrals_422() -> None:
    fake = FakeOpenAI(flavor="mistral")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake)) as http:
        answer = await http.post(
            "http://mistral/v1/chat/completions",
            headers={"Authorization": f"Bearer {FAKE_OPENAI_KEY}"},
            json={
                "model": "mistral-large-latest",
                "messages": [
                    *USER,
                    {"role": "assistant", "content": "Sunny.", "refusal": None, "annotations": []},
                    {"role": "user", "content": "Thanks"},
                ],
            },
        )
    assert answer.status_code == 422
    detail = answer.json()["message"]["detail"]
    assert [d["loc"] for d in detail] == [
        ["body", "messages", 1, "assistant", "refusal"],
        ["body", "messages", 1, "assistant", "annotations"],
    ]
    assert {d["type"] for d in detail} == {"extra_forbidden"}


@pytest.mark.parametrize("call_id", ["call_abc123", "toolu_01A09q90qw90lq917835lq9", "abc-123-x"])
async def test_the_fake_refuses_a_tool_call_id_that_is_not_9_alphanumerics(call_id: str) -> None:
    fake = FakeOpenAI(flavor="mistral")
    call = {"id": call_id, "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake)) as http:
        answer = await http.post(
            "http://mistral/v1/chat/completions",
            headers={"Authorization": f"Bearer {FAKE_OPENAI_KEY}"},
            json={
                "model": "mistral-large-latest",
                "messages": [
                    *USER,
                    {"role": "assistant", "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
                ],
            },
        )
    assert answer.status_code == 400
    assert answer.json()["message"] == (
        f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length of 9."
    )


# -- 1. only the message fields Mistral accepts; no Mistral-only field back ----------------


async def test_a_tool_round_trip_echoing_the_answer_as_received_succeeds(gw: Gateway) -> None:
    # What litellm and the Agents SDK do: the assistant message goes back as it came,
    # with the fields OpenAI's types carry and some of their own.
    first = await gw.client.chat.completions.create(model=MODEL, messages=USER, tools=[LOOKUP])
    assistant = first.choices[0].message.model_dump()
    assistant.update({"index": 0, "provider_specific_fields": {"refusal": None}})
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    second = await gw.client.chat.completions.create(
        model=MODEL,
        tools=[LOOKUP],
        messages=[
            *USER,
            assistant,  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny", "name": "lookup"},
        ],
    )
    assert second.choices[0].message.content == "The tool answered: sunny"
    sent = gw.mistral.last_body
    assert sent is not None
    assert set(sent["messages"][1]) <= {"role", "content", "tool_calls"}
    assert set(sent["messages"][2]) == {"role", "content", "tool_call_id", "name"}


async def test_message_fields_outside_mistrals_schema_are_not_sent(gw: Gateway) -> None:
    messages = [
        {"role": "developer", "content": "Be brief.", "name": "ops"},
        {"role": "user", "content": "Hi", "name": "ada", "cache_control": {"type": "ephemeral"}},
        {
            "role": "assistant",
            "content": "Hello.",
            "refusal": None,
            "annotations": [],
            "audio": None,
        },
        {"role": "user", "content": [{"type": "text", "text": "Again", "cache_control": {}}]},
    ]
    answer = await gw.client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Again"
    sent = gw.mistral.last_body
    assert sent is not None
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]


async def test_answers_do_not_carry_mistrals_prefix_field(gw: Gateway) -> None:
    # Mistral answers `"prefix": false`; an OpenAI client would send it back to any model.
    for tools in ([], [LOOKUP]):
        answer = await gw.raw.post(
            "/chat/completions",
            json={"model": MODEL, "messages": USER, **({"tools": tools} if tools else {})},
        )
        message = answer.json()["choices"][0]["message"]
        assert "prefix" not in message
        for call in message.get("tool_calls") or ():
            assert set(call) == {"id", "type", "function"}


# -- 2. tool-call ids: Mistral's 9 alphanumerics, the client keeps its own -----------------


async def test_other_providers_call_ids_reach_mistral_as_9_alphanumerics(gw: Gateway) -> None:
    calls = [
        {"id": i, "type": "function", "function": {"name": "lookup", "arguments": '{"input":"x"}'}}
        for i in ("call_Yl6KxbLf0ZQ1uCbV", "toolu_01A09q90qw90lq917835lq9")
    ]
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": "sunny"} for c in calls),
    ]
    answer = await gw.client.chat.completions.create(model=MODEL, messages=messages, tools=[LOOKUP])  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "The tool answered: sunny"
    sent = gw.mistral.last_body
    assert sent is not None
    ids = sent_ids(sent)
    assert all(MISTRAL_ID.fullmatch(i) for i in ids)
    # Each call and its result still match: the same mapping, both times.
    assert ids == [mistral_tool_call_id(c["id"]) for c in calls] * 2
    assert len(set(ids)) == 2


def test_the_id_mapping_is_deterministic_and_keeps_mistrals_own_ids() -> None:
    assert mistral_tool_call_id("call_abc") == mistral_tool_call_id("call_abc")
    assert mistral_tool_call_id("call_abc") != mistral_tool_call_id("call_abd")
    assert mistral_tool_call_id("D681PevKs") == "D681PevKs"


async def test_mistrals_own_ids_reach_the_client_and_go_back_unchanged(gw: Gateway) -> None:
    first = await gw.client.chat.completions.create(model=MODEL, messages=USER, tools=[LOOKUP])
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    upstream = gw.mistral.completion(gw.mistral.last_body or {})
    assert call.id == upstream["choices"][0]["message"]["tool_calls"][0]["id"]
    await gw.client.chat.completions.create(
        model=MODEL,
        messages=[
            *USER,
            first.choices[0].message.model_dump(),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert gw.mistral.last_body is not None
    assert sent_ids(gw.mistral.last_body) == [call.id, call.id]


async def test_a_conversation_that_switched_from_openai_to_mistral_continues(
    gw: Gateway,
) -> None:
    first = await gw.client.chat.completions.create(
        model="openai/gpt-4o", messages=USER, tools=[LOOKUP]
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert not MISTRAL_ID.fullmatch(call.id)  # OpenAI's style: call_...
    history = [
        *USER,
        first.choices[0].message.model_dump(),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    answer = await gw.client.chat.completions.create(model=MODEL, messages=history)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "The tool answered: sunny"


# -- 3. streamed tool calls in OpenAI's exact shape -----------------------------------------


async def test_the_first_streamed_delta_of_a_call_has_index_id_type_and_name(
    gw: Gateway,
) -> None:
    body = {"model": MODEL, "messages": USER, "tools": [LOOKUP], "stream": True}
    async with gw.raw.stream("POST", "/chat/completions", json=body) as answer:
        lines = [line async for line in answer.aiter_lines() if line.startswith("data: {")]
    deltas = [
        call
        for line in lines
        for choice in json.loads(line[6:])["choices"]
        for call in choice["delta"].get("tool_calls") or ()
    ]
    assert deltas, lines
    first = deltas[0]
    assert first["index"] == 0 and first["type"] == "function"
    assert MISTRAL_ID.fullmatch(first["id"]) and first["function"]["name"] == "lookup"
    assert all("id" not in d and "type" not in d for d in deltas[1:])


async def test_the_sdk_stream_helper_parses_a_streamed_mistral_tool_call(gw: Gateway) -> None:
    # Without `type` on the first delta, openai-python emits no tool events and leaves
    # parsed_arguments at None, without an error.
    events: list[str] = []
    async with gw.client.chat.completions.stream(
        model=MODEL, messages=USER, tools=[LOOKUP]
    ) as stream:
        async for event in stream:
            events.append(event.type)
        final = await stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.parsed_arguments == Lookup(input="Weather in Paris?")
    assert "tool_calls.function.arguments.done" in events


def chunk(*calls: dict[str, Any]) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": list(calls)}}]}
    )


def test_parallel_calls_mistral_numbers_alike_get_their_own_index() -> None:
    # Recorded shape: each call whole in one delta, every one at index 0, no type.
    deltas = MistralToolCallDeltas()
    a = {"id": "aaaaaaaa1", "index": 0, "function": {"name": "f", "arguments": '{"x": 1}'}}
    b = {"id": "bbbbbbbb2", "index": 0, "function": {"name": "g", "arguments": '{"y": 2}'}}
    out = [deltas.feed(chunk(a)), deltas.feed(chunk(b))]
    calls = [c.choices[0].delta.tool_calls[0] for c in out]  # type: ignore[index]
    assert [(c.index, c.id, c.type, c.function.name) for c in calls] == [  # type: ignore[union-attr]
        (0, "aaaaaaaa1", "function", "f"),
        (1, "bbbbbbbb2", "function", "g"),
    ]


def test_a_call_continued_over_deltas_names_its_id_and_name_once() -> None:
    deltas = MistralToolCallDeltas()
    head = {"id": "aaaaaaaa1", "index": 0, "function": {"name": "f", "arguments": '{"x"'}}
    more = {"id": "aaaaaaaa1", "index": 0, "function": {"name": "f", "arguments": ": 1}"}}
    tail = {"index": 0, "function": {"arguments": ""}}
    calls = [
        deltas.feed(chunk(d)).choices[0].delta.tool_calls[0]  # type: ignore[index]
        for d in (head, more, tail)
    ]
    assert [(c.index, c.id, c.type) for c in calls] == [
        (0, "aaaaaaaa1", "function"),
        (0, None, None),
        (0, None, None),
    ]
    assert [c.function.name for c in calls if c.function] == ["f", None, None]


# -- 4. Mistral's 422 detail kept in the 400 -----------------------------------------------


async def test_mistrals_422_detail_names_the_rejected_field_in_the_400(gw: Gateway) -> None:
    # A content part of a kind Mistral does not know passes the gateway as sent.
    part = {"type": "file", "file": {"file_id": "file-1"}}
    with pytest.raises(openai.BadRequestError) as refused:
        await gw.client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [part]}],  # type: ignore[list-item]
        )
    error: Any = refused.value.body
    assert error["code"] == "upstream_invalid_request"
    assert "messages[0].content[0]" in error["message"]
    assert "does not match any of the expected tags" in error["message"]
    assert error["param"] == "messages[0].content[0]"
    assert FAKE_OPENAI_KEY not in error["message"]


def test_every_item_of_a_422_is_named() -> None:
    provider = MistralProvider(
        "mistral", ProviderConfig(kind="mistral", models={"m": "m"}), api_key="k"
    )
    body = {
        "object": "error",
        "message": {
            "detail": [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", "messages", 1, "assistant", "refusal"],
                    "msg": "Extra inputs are not permitted",
                    "input": None,
                },
                {
                    "type": "extra_forbidden",
                    "loc": ["body", "user"],
                    "msg": "Extra inputs are not permitted",
                    "input": "u",
                },
            ]
        },
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    error = provider.error_for_status(422, json.dumps(body).encode(), {})
    assert error.status == 400
    assert error.message == (
        "Provider 'mistral' rejected the request: messages[1].refusal: Extra inputs are not "
        "permitted; user: Extra inputs are not permitted"
    )
    assert error.param == "messages[1].refusal"


# -- the property: any history is accepted -------------------------------------------------

# Tool-call ids as each provider (or client) makes them.
CALL_IDS = st.one_of(
    st.from_regex(r"call_[A-Za-z0-9]{24}", fullmatch=True),  # OpenAI
    st.from_regex(r"toolu_01[A-Za-z0-9]{22}", fullmatch=True),  # Anthropic
    st.from_regex(r"[A-Za-z0-9]{9}", fullmatch=True),  # Mistral
    st.uuids().map(str),  # clients that rewrite ids
    st.text(min_size=1, max_size=40),
)
# Fields clients add to messages they send back, with the values they give them.
ANY = st.none() | st.booleans() | st.just([]) | st.just({"refusal": None}) | st.text(max_size=5)
EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "refusal": st.none() | st.text(max_size=5),
        "annotations": st.just([]),
        "index": st.integers(0, 3),
        "provider_specific_fields": ANY,
        "prefix": st.booleans(),
        "audio": st.none(),
        "function_call": st.none(),
        "reasoning_content": st.none() | st.text(max_size=5),
        "name": st.text(min_size=1, max_size=8),
        "cache_control": st.just({"type": "ephemeral"}),
    },
)
TEXT = st.text(min_size=1, max_size=20)
PARTS = st.lists(
    st.fixed_dictionaries(
        {"type": st.just("text"), "text": TEXT},
        optional={"cache_control": st.just({"type": "ephemeral"})},
    ),
    min_size=1,
    max_size=2,
)


def _with(message: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    return {**extras, **message}


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        role = draw(st.sampled_from(["system", "developer"]))
        messages.append(_with({"role": role, "content": draw(TEXT | PARTS)}, draw(EXTRAS)))
    for _ in range(draw(st.integers(1, 3))):
        messages.append(_with({"role": "user", "content": draw(TEXT | PARTS)}, draw(EXTRAS)))
        ids = draw(st.lists(CALL_IDS, max_size=3, unique=True))
        if ids:
            calls = [
                _with(
                    {
                        "id": i,
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"input": "x"}'},
                    },
                    draw(st.dictionaries(st.sampled_from(["index"]), st.integers(0, 3))),
                )
                for i in ids
            ]
            content = draw(st.none() | st.just("") | TEXT)
            messages.append(
                _with({"role": "assistant", "content": content, "tool_calls": calls}, draw(EXTRAS))
            )
            messages += [
                _with({"role": "tool", "tool_call_id": i, "content": draw(TEXT)}, draw(EXTRAS))
                for i in ids
            ]
        if draw(st.booleans()):
            messages.append(_with({"role": "assistant", "content": draw(TEXT)}, draw(EXTRAS)))
    return messages


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories(), stream=st.booleans())
async def test_any_chat_history_is_accepted_by_the_strict_mistral_fake(
    gw: Gateway, history: list[dict[str, Any]], stream: bool
) -> None:
    if stream:
        chunks = await gw.client.chat.completions.create(
            model=MODEL,
            messages=history,  # type: ignore[arg-type]
            tools=[LOOKUP],
            stream=True,
        )
        assert [c async for c in chunks]
    else:
        answer = await gw.client.chat.completions.create(
            model=MODEL,
            messages=history,  # type: ignore[arg-type]
            tools=[LOOKUP],
        )
        assert answer.choices
    sent = gw.mistral.last_body
    assert sent is not None and all(MISTRAL_ID.fullmatch(i) for i in sent_ids(sent))
