"""Property tests: any body sent to /responses gets an OpenAI error or a response, never a 500.

Arbitrary JSON values, and near-valid Responses requests with random input
items, tools, formats and flags, to every backend kind over strict fakes
(pass-through to the Responses fake, translation to the others).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.messages_backends import Gateway, gateway, new_backend

pytestmark = pytest.mark.anyio

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KINDS = ["openai-native", "anthropic", "gemini", "openai", "demo"]
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
TEXT = st.text(min_size=1, max_size=20)
PART = st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, TEXT),
    st.builds(lambda t: {"type": "output_text", "text": t}, TEXT),
    st.just({"type": "input_image", "image_url": "https://example.test/a.png"}),
    st.builds(lambda v: {"type": "input_image", "image_url": v}, JSON_VALUES),
    st.builds(lambda k: {"type": k}, st.sampled_from(["refusal", "input_file", "weird"])),
)
ITEM = st.one_of(
    st.builds(
        lambda role, content: {"role": role, "content": content},
        st.sampled_from(["user", "assistant", "system", "developer", "tool", "robot"]),
        st.one_of(TEXT, st.lists(PART, max_size=3), JSON_VALUES),
    ),
    st.builds(
        lambda call, name, args: {
            "type": "function_call",
            "call_id": call,
            "name": name,
            "arguments": args,
        },
        st.sampled_from(["call_1", "call_2"]),
        st.sampled_from(["get_weather", "x"]),
        st.one_of(st.just('{"city": "Oslo"}'), TEXT, JSON_VALUES),
    ),
    st.builds(
        lambda call, out: {"type": "function_call_output", "call_id": call, "output": out},
        st.sampled_from(["call_1", "call_2", "call_9"]),
        st.one_of(TEXT, JSON_VALUES),
    ),
    st.builds(
        lambda enc: {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": enc},
        st.one_of(st.none(), TEXT, st.just("anthropic:W10=")),
    ),
    st.builds(lambda kind: {"type": kind, "id": "x"}, st.sampled_from(["item_reference", "odd"])),
)
TOOL = st.one_of(
    st.just(
        {
            "type": "function",
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ),
    st.just({"type": "custom", "name": "apply_patch", "description": "patch"}),
    st.builds(lambda live: {"type": "web_search", "external_web_access": live}, st.booleans()),
    st.builds(
        lambda kind: {"type": kind},
        st.sampled_from(["file_search", "code_interpreter", "namespace", "tool_search", "mystery"]),
    ),
    st.builds(
        lambda name, params: {"type": "function", "name": name, "parameters": params},
        st.one_of(TEXT, JSON_VALUES),
        JSON_VALUES,
    ),
)
NEAR_VALID = st.fixed_dictionaries(
    {"input": st.one_of(TEXT, st.lists(ITEM, min_size=1, max_size=5))},
    optional={
        "instructions": st.one_of(TEXT, JSON_VALUES),
        "tools": st.lists(TOOL, max_size=3),
        "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]), JSON_VALUES),
        "text": st.one_of(
            st.just({"format": {"type": "json_object"}}),
            st.just(
                {
                    "format": {
                        "type": "json_schema",
                        "name": "o",
                        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                    }
                }
            ),
            JSON_VALUES,
        ),
        "max_output_tokens": st.one_of(st.integers(-5, 5000), JSON_VALUES),
        "temperature": st.one_of(st.floats(-1, 3, allow_nan=False), JSON_VALUES),
        "reasoning": st.one_of(st.just({"effort": "low", "summary": "auto"}), JSON_VALUES),
        "stream": st.one_of(st.booleans(), JSON_VALUES),
        "store": st.one_of(st.booleans(), JSON_VALUES),
        "previous_response_id": st.one_of(st.just("resp_unknown"), JSON_VALUES),
        "include": st.one_of(st.just(["reasoning.encrypted_content"]), JSON_VALUES),
        "parallel_tool_calls": st.one_of(st.booleans(), JSON_VALUES),
        "metadata": JSON_VALUES,
        "client_metadata": JSON_VALUES,
    },
)


@pytest.fixture(params=KINDS)
async def gw(request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    backend = new_backend(request.param)
    async with gateway(
        backend, tiers={"1": {"requests_per_day": 10**9, "tokens_per_day": 10**15}}
    ) as gw:
        yield gw


async def send(gw: Gateway, body: bytes) -> httpx.Response:
    async with gw.http() as http:
        return await http.post(
            "/v1/responses", content=body, headers={"authorization": f"Bearer {gw.key}"}
        )


def check(answer: httpx.Response) -> None:
    assert answer.status_code < 500 or answer.status_code in (502, 503, 504), answer.text
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        if answer.status_code in OPENAI_TYPES:
            # The upstream's own words come back on pass-through, in OpenAI's envelope too.
            assert error["type"] in (OPENAI_TYPES[answer.status_code], "invalid_request_error")
        return
    if answer.headers["content-type"].startswith("text/event-stream"):
        names = [line[7:] for line in answer.text.splitlines() if line.startswith("event: ")]
        assert names and names[0] == "response.created", answer.text[:300]
        assert names[-1] in (
            "response.completed",
            "response.incomplete",
            "error",
            "response.failed",
        ), names
        return
    response = answer.json()
    assert response["object"] == "response" and isinstance(response["output"], list)
    assert isinstance(response["usage"]["input_tokens"], int)


@FUZZ
@given(value=JSON_VALUES)
async def test_any_json_value_is_answered_without_a_500(gw: Gateway, value: Any) -> None:
    check(await send(gw, json.dumps(value).encode()))


@FUZZ
@given(body=NEAR_VALID)
async def test_near_valid_requests_are_answered_or_refused_cleanly(
    gw: Gateway, body: dict[str, Any]
) -> None:
    check(await send(gw, json.dumps({"model": gw.backend.model, **body}).encode()))
