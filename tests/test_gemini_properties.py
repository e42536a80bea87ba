"""Property: any valid OpenAI chat request translates into a body the strict fake accepts.

Both calls (whole and streamed) must be accepted and translate back into valid
OpenAI objects.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axione_asgi.config import ProviderConfig
from axione_asgi.openai_types import ChatCompletion, ChatCompletionRequest
from axione_asgi.providers.gemini import GeminiProvider
from tests.fakes.gemini_fake import FAKE_KEY, GeminiFake

pytestmark = pytest.mark.anyio

MODELS = {"flash": "gemini-2.5-flash", "three": "gemini-3-flash-preview"}

texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
images = st.sampled_from(
    [
        "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode(),
        "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8 fake").decode(),
        "https://example.com/a/cat.png",
        "https://example.com/photo",
    ]
)


def leaf_schemas() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda d: {"type": "string", "description": d}, texts),
        st.just({"type": "integer", "minimum": 0}),
        st.just({"type": "number"}),
        st.just({"type": "boolean"}),
        st.just({"type": "string", "format": "email"}),
        st.builds(lambda v: {"type": "string", "enum": v}, st.lists(names, min_size=1, max_size=3)),
        st.just({"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}),
        st.just({"type": ["integer", "null"]}),
        st.just({"type": "array", "items": {"type": "string"}}),
        st.just({"type": "array"}),
        st.just({}),
        st.just({"description": "anything"}),
        st.just({"items": {"type": "integer"}}),
    )


schemas = st.recursive(
    leaf_schemas(),
    lambda inner: st.builds(
        lambda props, extra: {
            "type": "object",
            "properties": props,
            "required": list(props)[:1],
            **({"additionalProperties": False} if extra else {}),
        },
        st.dictionaries(names, inner, min_size=1, max_size=3),
        st.booleans(),
    ),
    max_leaves=6,
)


@st.composite
def tools(draw: st.DrawFn) -> list[dict[str, Any]]:
    tool_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    result = []
    for name in tool_names:
        props = draw(st.dictionaries(names, schemas, max_size=3))
        parameters: dict[str, Any] = {"type": "object", "properties": props}
        if draw(st.booleans()):
            parameters["additionalProperties"] = False
            parameters["$schema"] = "http://json-schema.org/draft-07/schema#"
        function: dict[str, Any] = {"name": name, "parameters": parameters}
        if draw(st.booleans()):
            function["description"] = draw(texts)
            function["strict"] = True
        result.append({"type": "function", "function": function})
    return result


@st.composite
def user_messages(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"role": "user", "content": draw(texts)}
    parts: list[dict[str, Any]] = draw(
        st.lists(
            st.one_of(
                st.builds(lambda t: {"type": "text", "text": t}, texts),
                st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, images),
            ),
            min_size=1,
            max_size=3,
        )
    )
    return {"role": "user", "content": parts}


@st.composite
def tool_exchange(draw: st.DrawFn, tool_names: list[str], turn: int) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 3))
    calls = []
    for k in range(count):
        args = draw(
            st.dictionaries(names, st.one_of(texts, st.integers(), st.booleans()), max_size=2)
        )
        calls.append(
            {
                "id": draw(st.sampled_from([f"call_{turn}_{k}", f"toolu_{turn}{k}"])),
                "type": "function",
                "function": {
                    "name": draw(st.sampled_from(tool_names)),
                    "arguments": json.dumps(args),
                },
            }
        )
    assistant: dict[str, Any] = {"role": "assistant", "tool_calls": calls}
    if draw(st.booleans()):
        assistant["content"] = draw(texts)
    results = [
        {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": draw(st.one_of(texts, st.builds(lambda t: json.dumps({"r": t}), texts))),
        }
        for call in calls
    ]
    return [assistant, *results]


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    offered = draw(st.one_of(st.none(), tools()))
    tool_names = [t["function"]["name"] for t in offered or []] or ["lookup"]
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append(
            {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(texts)}
        )
    for turn in range(draw(st.integers(1, 3))):
        messages.append(draw(user_messages()))
        kind = draw(st.sampled_from(["answer", "tools", "none"]))
        if kind == "answer":
            messages.append({"role": "assistant", "content": draw(texts)})
        elif kind == "tools":
            messages.extend(draw(tool_exchange(tool_names, turn)))
            if draw(st.booleans()):
                messages.append({"role": "assistant", "content": draw(texts)})
    body: dict[str, Any] = {"model": "google/flash", "messages": messages}
    if offered:
        body["tools"] = offered
        body["tool_choice"] = draw(
            st.one_of(
                st.sampled_from([None, "auto", "none", "required"]),
                st.builds(
                    lambda n: {"type": "function", "function": {"name": n}},
                    st.sampled_from(tool_names),
                ),
            )
        )
    optional = {
        "max_tokens": st.integers(1, 40),
        "max_completion_tokens": st.integers(1, 40),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "stop": st.one_of(texts, st.lists(texts, max_size=4)),
        "n": st.integers(1, 3),
        "seed": st.integers(0, 2**31 - 1),
        "user": texts,
        "response_format": st.sampled_from(
            [
                {"type": "text"},
                {"type": "json_object"},
                {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "out",
                        "schema": {
                            "type": "object",
                            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                            "required": ["a"],
                            "additionalProperties": False,
                        },
                        "strict": True,
                    },
                },
            ]
        ),
    }
    for field, strategy in optional.items():
        if draw(st.booleans()):
            body[field] = draw(strategy)
    return body


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=requests(), model=st.sampled_from(sorted(MODELS)))
async def test_any_valid_request_is_accepted_and_answers_a_valid_completion(
    body: dict[str, Any], model: str
) -> None:
    request = ChatCompletionRequest.model_validate(body)
    fake = GeminiFake()
    config = ProviderConfig(kind="gemini", base_url="http://gemini.test", models=MODELS)
    provider = GeminiProvider(
        "google", config, api_key=FAKE_KEY, transport=httpx.ASGITransport(app=fake)
    )
    await provider.open()
    try:
        answer = await provider.chat(request, model)
        chunks = [chunk async for chunk in provider.stream(request, model)]
    finally:
        await provider.aclose()
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason == answer.choices[-1].finish_reason
    assert ChatCompletion.model_validate(answer.model_dump()) == answer
    assert len(answer.choices) == (request.n or 1)
    for choice in answer.choices:
        assert choice.finish_reason in ("stop", "length", "tool_calls", "content_filter")
        for call in choice.message.tool_calls or []:
            assert isinstance(json.loads(call.function.arguments), dict)
    assert answer.usage is not None
    assert answer.usage.total_tokens >= answer.usage.prompt_tokens > 0
