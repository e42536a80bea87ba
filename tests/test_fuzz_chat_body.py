"""Property tests: any body sent to /chat/completions gets a SPEC error or a completion.

Never a 500: arbitrary JSON values, arbitrary bytes, and valid-looking chat
requests with random field values, all in-process on the demo provider.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from axione_asgi import AxioneConfig, create_app
from axione_asgi.stores import MemoryKeyStore
from tests.helpers import SPEC_STATUS_TYPES

pytestmark = pytest.mark.anyio

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
FIELDS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "stop", "stream", "stream_options", "tools", "tool_choice", "response_format", "seed",
    "user", "n",
]  # fmt: skip


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    store = MemoryKeyStore()
    _, key = await store.create("fuzz")
    # Limits high enough that the examples of one test never meet them.
    config = AxioneConfig(
        storage={"keys": "memory://", "ledger": "memory://"},
        tiers={1: {"requests_per_day": 10**9, "tokens_per_day": 10**15}},
    )
    app = create_app(config, key_store=store)
    async with (
        app.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {key}"},
        ) as c,
    ):
        yield c


def check_error(response: httpx.Response) -> None:
    assert response.status_code in SPEC_STATUS_TYPES, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"type", "message", "code", "param"}, error
    assert error["type"] == SPEC_STATUS_TYPES[response.status_code], error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["code"], str) and error["code"]
    assert error["param"] is None or isinstance(error["param"], str)


def check_completion(body: dict[str, Any], model: str) -> None:
    assert body["object"] == "chat.completion"
    assert body["model"] == model
    assert isinstance(body["id"], str) and isinstance(body["created"], int)
    assert body["choices"]
    for choice in body["choices"]:
        message = choice["message"]
        assert message["role"] == "assistant"
        assert isinstance(message.get("content"), str) or message.get("tool_calls")
        assert choice["finish_reason"] in ("stop", "length", "tool_calls", "content_filter")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def check_stream(text: str, model: str) -> None:
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]", events[-3:]
    for data in events[:-1]:
        chunk = json.loads(data)
        assert chunk["object"] == "chat.completion.chunk", chunk
        assert chunk["model"] == model


def check_answer(response: httpx.Response, sent: Any) -> None:
    """A well-formed SPEC error, or a valid completion (streamed or not); never a 500."""
    event(f"status {response.status_code}")
    if response.status_code != 200:
        check_error(response)
        return
    assert isinstance(sent, dict)
    if response.headers["content-type"].startswith("text/event-stream"):
        check_stream(response.text, sent["model"])
    else:
        check_completion(response.json(), sent["model"])


@FUZZ
@given(value=JSON_VALUES)
async def test_arbitrary_json_value_gets_a_spec_error_or_a_completion(
    client: httpx.AsyncClient, value: Any
) -> None:
    response = await client.post("/chat/completions", content=json.dumps(value).encode())
    check_answer(response, value)


@FUZZ
@given(body=st.binary(max_size=300))
async def test_arbitrary_bytes_get_a_spec_error_or_a_completion(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post("/chat/completions", content=body)
    check_answer(response, json.loads(body) if response.status_code == 200 else None)


@FUZZ
@given(
    value=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=8).map(
        lambda d: {"model": "demo/echo", "messages": [{"role": "user", "content": "hi"}], **d}
    )
)
async def test_chat_fields_with_arbitrary_values_get_a_spec_error_or_a_completion(
    client: httpx.AsyncClient, value: dict[str, Any]
) -> None:
    response = await client.post("/chat/completions", content=json.dumps(value).encode())
    check_answer(response, value)


TEXT = st.text(max_size=40)
CONTENT = (
    TEXT
    | st.none()
    | st.lists(
        st.fixed_dictionaries({"type": st.just("text"), "text": TEXT})
        | st.fixed_dictionaries(
            {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": TEXT})}
        )
        | st.fixed_dictionaries({"type": TEXT}),
        max_size=3,
    )
)
TOOL_CALL = st.fixed_dictionaries(
    {
        "id": TEXT,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": TEXT, "arguments": TEXT}),
    }
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "bogus"])},
    optional={
        "content": CONTENT,
        "name": TEXT,
        "tool_call_id": TEXT,
        "tool_calls": st.lists(TOOL_CALL, max_size=2),
    },
)
TOOL = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": TEXT}, optional={"parameters": st.dictionaries(TEXT, TEXT, max_size=2)}
        ),
    }
)
NUMBER = (
    st.integers(min_value=-5, max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.none()
)
CHAT_REQUEST = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["demo/echo", "demo/lorem"])
        | st.sampled_from(["demo/none", "x/y", "", "demo"]),
        # Mostly a valid conversation ending with a user turn, so completions get fuzzed too.
        "messages": st.lists(MESSAGE, max_size=3).map(
            lambda ms: [*ms, {"role": "user", "content": "hi there"}]
        )
        | st.lists(MESSAGE, max_size=4),
    },
    optional={
        "max_tokens": NUMBER,
        "max_completion_tokens": NUMBER,
        "temperature": NUMBER,
        "top_p": NUMBER,
        "stop": TEXT | st.lists(TEXT, max_size=4) | st.none(),
        "stream": st.booleans() | st.none(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | st.none()}),
        "tools": st.lists(TOOL, max_size=3),
        "tool_choice": st.sampled_from(["none", "auto", "required", "bad"])
        | st.fixed_dictionaries(
            {"type": st.just("function"), "function": st.fixed_dictionaries({"name": TEXT})}
        ),
        "response_format": st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])}
        ),
        "seed": NUMBER,
        "user": TEXT,
        "n": st.integers(min_value=-1, max_value=130),
        "x_unknown": JSON_VALUES,
    },
)


@FUZZ
@given(value=CHAT_REQUEST)
async def test_valid_looking_chat_requests_get_a_spec_error_or_a_completion(
    client: httpx.AsyncClient, value: dict[str, Any]
) -> None:
    response = await client.post("/chat/completions", content=json.dumps(value).encode())
    check_answer(response, value)
