"""The demo models honour `response_format` and tool schemas, through the openai SDK (issue 16).

A new user's first structured-output or agent example runs on the offline
default: `json_schema` answers are JSON valid against the schema (generated
from it, the same every time), `json_object` answers a JSON object, and a
tool call's arguments satisfy the tool's parameters; streamed and not.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any, Literal

import httpx2
import jsonschema  # with openapi-spec-validator, of the test extra
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from axione_asgi import AxioneConfig, create_app
from axione_asgi.providers.demo import sample_json
from axione_asgi.stores import MemoryKeyStore

pytestmark = pytest.mark.anyio

MODEL = "demo/echo"
USER = [{"role": "user", "content": "Plan a trip to Paris"}]


class Unit(StrEnum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Stop(BaseModel):
    city: str = Field(min_length=2, max_length=40)
    nights: int = Field(ge=1, le=14)
    postcode: str = Field(pattern=r"^\d{5}$")


class Trip(BaseModel):
    """Nested models, lists, enums, literals, optionals, bounds, formats, recursion."""

    title: str
    kind: Literal["city", "nature"]
    unit: Unit
    budget: float = Field(gt=0, le=10_000)
    stops: list[Stop] = Field(min_length=1, max_length=5)
    contact: str | None
    tags: list[str]
    start: str = Field(json_schema_extra={"format": "date"})
    next_trip: Trip | None = None


class Weather(BaseModel):
    city: str
    unit: Unit
    days: int = Field(ge=1, le=7)


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    store = MemoryKeyStore()
    _, key = await store.create("demo-structured")
    app = create_app(
        AxioneConfig(storage={"keys": "memory://", "ledger": "memory://"}), key_store=store
    )
    async with (
        app.lifespan(),
        openai.AsyncOpenAI(
            api_key=key,
            base_url="http://gateway/",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
        ) as sdk,
    ):
        yield sdk


# -- structured outputs --------------------------------------------------------------------


async def test_parse_gives_the_pydantic_model_the_client_asked_for(
    client: openai.AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.parse(
        model=MODEL, messages=USER, response_format=Trip
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Trip)
    assert completion.choices[0].finish_reason == "stop"
    assert message.parsed.title == "Plan a trip to Paris"  # strings carry the answer's text
    jsonschema.validate(json.loads(message.content or ""), Trip.model_json_schema())


async def test_a_streamed_structured_answer_parses_the_same(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model=MODEL, messages=USER, response_format=Trip
    ) as stream:
        deltas = [e for e in [event async for event in stream] if e.type == "content.delta"]
        final = await stream.get_final_completion()
    assert len(deltas) > 1  # JSON streamed as it is made, not in one piece
    whole = await client.chat.completions.parse(model=MODEL, messages=USER, response_format=Trip)
    assert final.choices[0].message.parsed == whole.choices[0].message.parsed


async def test_json_object_answers_a_json_object(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL, messages=USER, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


async def test_the_same_schema_gives_the_same_answer(client: openai.AsyncOpenAI) -> None:
    answers = [
        await client.chat.completions.parse(model=MODEL, messages=USER, response_format=Trip)
        for _ in range(2)
    ]
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content


async def test_responses_parse_gives_the_model_too(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.parse(
        model=MODEL, input="Plan a trip to Paris", text_format=Trip
    )
    assert isinstance(response.output_parsed, Trip)


# -- tool calls ----------------------------------------------------------------------------

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": Weather.model_json_schema(),
    },
}


async def test_tool_call_arguments_satisfy_the_tools_schema(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL, messages=USER, tools=[WEATHER_TOOL]
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    jsonschema.validate(arguments, Weather.model_json_schema())
    assert arguments["city"] == "Plan a trip to Paris"


async def test_streamed_tool_call_arguments_satisfy_the_schema(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, tools=[WEATHER_TOOL], stream=True
    )
    arguments = "".join(
        [
            d.function.arguments or ""
            async for c in stream
            for choice in c.choices
            for d in choice.delta.tool_calls or ()
            if d.function is not None
        ]
    )
    jsonschema.validate(json.loads(arguments), Weather.model_json_schema())


async def test_a_strict_pydantic_tool_parses_its_arguments(client: openai.AsyncOpenAI) -> None:
    tool = openai.pydantic_function_tool(Weather)
    completion = await client.chat.completions.parse(model=MODEL, messages=USER, tools=[tool])
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert isinstance(call.function.parsed_arguments, Weather)  # type: ignore[union-attr]
    async with client.chat.completions.stream(model=MODEL, messages=USER, tools=[tool]) as stream:
        final = await stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert streamed.function.parsed_arguments == call.function.parsed_arguments  # type: ignore[union-attr]


async def test_a_tool_without_declared_parameters_gets_the_demo_input(
    client: openai.AsyncOpenAI,
) -> None:
    tool: Any = {"type": "function", "function": {"name": "lookup"}}
    completion = await client.chat.completions.create(model=MODEL, messages=USER, tools=[tool])
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert json.loads(call.function.arguments) == {"input": "Plan a trip to Paris"}  # type: ignore[union-attr]


# -- the generator, on any schema of the subset structured outputs use ---------------------

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
SIZES = st.integers(0, 4)
PATTERNS = [
    r"^\d{5}$",
    r"^[A-Z]{2,3}-\d+$",
    r"^(red|green|blue)$",
    r"^\+?[1-9]\d{1,14}$",
    r"[a-z]+@[a-z]+\.com",
    r"^[^0-9\s]{3}$",
]
FORMATS = ["date-time", "date", "time", "email", "uri", "uuid", "ipv4", "ipv6", "hostname"]
LEAVES = st.one_of(
    st.just({"type": "string"}),
    st.builds(lambda a, b: {"type": "string", "minLength": a, "maxLength": a + b}, SIZES, SIZES),
    st.sampled_from(PATTERNS).map(lambda p: {"type": "string", "pattern": p}),
    st.sampled_from(FORMATS).map(lambda f: {"type": "string", "format": f}),
    st.builds(
        lambda lo, w: {"type": "integer", "minimum": lo, "maximum": lo + w},
        st.integers(-50, 50),
        st.integers(0, 20),
    ),
    st.builds(
        lambda lo, w: {"type": "integer", "exclusiveMinimum": lo, "exclusiveMaximum": lo + w + 2},
        st.integers(-50, 50),
        st.integers(0, 5),
    ),
    st.builds(
        lambda k, lo: {"type": "integer", "multipleOf": k, "minimum": lo},
        st.integers(2, 9),
        st.integers(-30, 30),
    ),
    st.builds(
        lambda lo, w: {"type": "number", "minimum": lo, "maximum": lo + w},
        st.floats(-100, 100),
        st.floats(0, 10),
    ),
    st.just({"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.25}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(st.integers() | st.text(max_size=5), min_size=1, max_size=4, unique=True).map(
        lambda v: {"enum": v}
    ),
    st.integers().map(lambda v: {"const": v}),
)


@st.composite
def objects(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    properties = draw(st.dictionaries(NAMES, children, max_size=4))
    required = [n for n in properties if draw(st.booleans())]
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    return schema


def _variants(options: list[Any]) -> dict[str, Any]:
    # A discriminated union, as pydantic writes one: each member fixes its `kind`.
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {"kind": {"const": f"k{i}"}, "value": option},
                "required": ["kind", "value"],
            }
            for i, option in enumerate(options)
        ]
    }


SCHEMAS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        objects(children),
        st.builds(
            lambda items, a, b: {"type": "array", "items": items, "minItems": a, "maxItems": a + b},
            children,
            SIZES,
            SIZES,
        ),
        st.lists(children, min_size=1, max_size=3).map(lambda o: {"anyOf": o}),
        children.map(lambda c: {"anyOf": [c, {"type": "null"}]}),
        st.lists(children, min_size=1, max_size=3).map(_variants),
    ),
    max_leaves=12,
)
# `$ref`s to the root's `$defs`, as pydantic writes nested models.
WITH_DEFS = SCHEMAS.map(
    lambda item: {
        "$defs": {"Item": item},
        "type": "object",
        "properties": {
            "item": {"$ref": "#/$defs/Item"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
        },
        "required": ["item"],
    }
)


@settings(max_examples=300, deadline=None)
@given(schema=SCHEMAS | WITH_DEFS, text=st.text(max_size=30))
def test_generated_json_validates_against_its_schema(schema: dict[str, Any], text: str) -> None:
    value = sample_json(schema, text)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(value)
    assert sample_json(schema, text) == value  # deterministic


def test_recursive_schemas_end() -> None:
    schema = Trip.model_json_schema()
    value = sample_json(schema, "x")
    jsonschema.validate(value, schema)
    assert Trip.model_validate(value).next_trip is not None
