"""Property tests: any body sent to /messages (and /messages/count_tokens) gets an answer
in Anthropic's shape, on every backend: a Message, a well-ordered event stream, or an
Anthropic error with a 4xx status.

Never a 5xx unless the upstream fake itself answered one (or was made to fail):
arbitrary JSON values and bytes, the Messages fields with arbitrary values, near-valid
bodies built block by block, and valid ones to fakes made to fail, to the pass-through
(`anthropic`) and to the translated backends (`openai`, `gemini`, `demo`), all
in-process over the strict fakes of tests/messages_backends.py. A crash of a fake
itself is answered as a server would, with a 500, and kept in `UpstreamRecorder.crashes`.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from starlette.types import Message, Receive, Scope, Send

from tests.messages_backends import BACKENDS, Gateway, gateway, new_backend

pytestmark = pytest.mark.anyio

# Fewer examples than the chat fuzz: every example runs on four backends and two routes.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
}
# Anthropic's own types beyond those: an Anthropic upstream's error is passed on as it came.
UPSTREAM_ERROR_TYPES = ERROR_TYPES | {"billing_error", "timeout_error"}
# The statuses whose type Anthropic fixes; other 4xx may carry any type of ERROR_TYPES.
TYPE_OF_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}
STOP_REASONS = {
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
}


class UpstreamRecorder:
    """The fake as an ASGI app, the statuses it answers kept.

    A crash of the fake itself ends as it would in a server: a 500 answer (Starlette's,
    else one sent here), the exception kept in `crashes` rather than raised into the
    gateway's client. The gateway then meets an upstream failure, which it may answer
    with a 5xx. Only a crash in the middle of an answer is raised (a cut connection).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.statuses: list[int] = []
        self.crashes: list[BaseException] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = done = False

        async def recording_send(message: Message) -> None:
            nonlocal started, done
            if message["type"] == "http.response.start":
                started = True
                self.statuses.append(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done = True
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except Exception as exc:
            self.crashes.append(exc)
            if done:
                return
            if started:
                raise
            await recording_send(
                {"type": "http.response.start", "status": 500,
                 "headers": [(b"content-type", b"text/plain")]}
            )  # fmt: skip
            await send({"type": "http.response.body", "body": b"Internal Server Error"})

    def reset(self) -> None:
        self.statuses.clear()


class Client:
    """One backend's gateway, an httpx client on it, and what its fake answered."""

    def __init__(self, gw: Gateway, http: httpx.AsyncClient, recorder: UpstreamRecorder | None):
        self.gw = gw
        self.http = http
        self.recorder = recorder
        self.model = gw.backend.model

    async def post(self, path: str, content: bytes) -> tuple[httpx.Response, list[int]]:
        if self.recorder is not None:
            self.recorder.reset()
        response = await self.http.post(path, content=content)
        upstream = list(self.recorder.statuses) if self.recorder is not None else []
        return response, upstream


@contextlib.asynccontextmanager
async def open_client(kind: str) -> AsyncIterator[Client]:
    backend = new_backend(kind)
    recorder = None
    if backend.fake is not None:
        recorder = UpstreamRecorder(backend.fake)
        backend.fake = recorder
    # Limits high enough that the examples of one test never meet them.
    tiers = {1: {"requests_per_day": 10**9, "tokens_per_day": 10**15}}
    async with gateway(backend, tiers=tiers) as gw:
        http = httpx.AsyncClient(
            # A crash becomes the 500 a server would answer, and fails the check below.
            transport=httpx.ASGITransport(app=gw.app, raise_app_exceptions=False),
            base_url="http://axione.test",
            headers={"x-api-key": gw.key, "anthropic-version": "2023-06-01"},
        )
        async with http:
            yield Client(gw, http, recorder)


@pytest.fixture(params=BACKENDS)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    async with open_client(request.param) as opened:
        yield opened


@pytest.fixture(params=["anthropic", "openai"])
async def failing_client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A backend whose fake can be made to fail (the pass-through and a translated one)."""
    async with open_client(request.param) as opened:
        yield opened


# -- checks ---------------------------------------------------------------------
def check_error(response: httpx.Response, upstream: list[int], made_to_fail: bool = False) -> None:
    """An Anthropic error: 4xx, or 5xx when the upstream failed (answered 5xx, or was made
    to fail: a cut stream, a malformed answer, a rejection of the gateway's own key)."""
    status = response.status_code
    assert status < 500 or made_to_fail or any(s >= 500 for s in upstream), (
        f"{status} with the upstream answering {upstream}: {response.text[:2000]}"
    )
    assert 400 <= status < 600, (status, response.text[:2000])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and body.get("type") == "error", body
    error = body["error"]
    assert isinstance(error, dict), body
    assert error.get("type") in (UPSTREAM_ERROR_TYPES if made_to_fail else ERROR_TYPES), body
    assert isinstance(error.get("message"), str), body
    if status in TYPE_OF_STATUS:
        assert error["type"] == TYPE_OF_STATUS[status], (status, body)


def check_usage(usage: Any) -> None:
    assert isinstance(usage, dict), usage
    for name in ("input_tokens", "output_tokens"):
        value = usage.get(name)
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, usage


def check_block(block: Any) -> None:
    assert isinstance(block, dict) and isinstance(block.get("type"), str), block
    if block["type"] == "text":
        assert isinstance(block.get("text"), str), block
    elif block["type"] == "tool_use":
        assert isinstance(block.get("id"), str) and isinstance(block.get("name"), str), block
        assert isinstance(block.get("input"), dict), block
    elif block["type"] == "thinking":
        assert isinstance(block.get("thinking"), str), block
        assert isinstance(block.get("signature"), str), block


def check_message(message: Any, model: str) -> None:
    assert isinstance(message, dict), message
    assert message.get("type") == "message", message
    assert message.get("role") == "assistant", message
    assert isinstance(message.get("id"), str), message
    assert message.get("model") == model, (message.get("model"), model)
    assert isinstance(message.get("content"), list), message
    for block in message["content"]:
        check_block(block)
    assert message.get("stop_reason") in STOP_REASONS, message
    check_usage(message.get("usage"))


def parse_events(text: str) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    for frame in text.replace("\r\n", "\n").split("\n\n"):
        if not frame.strip():
            continue
        lines = frame.split("\n")
        names = [ln[len("event:") :].strip() for ln in lines if ln.startswith("event:")]
        data = "\n".join(ln[len("data:") :].lstrip(" ") for ln in lines if ln.startswith("data:"))
        assert len(names) == 1, f"a frame without one `event:` line: {frame!r}"
        events.append((names[0], json.loads(data)))
    return events


def check_stream(text: str, model: str) -> None:
    """Anthropic's order: message_start, blocks (start, deltas, stop), message_delta,
    message_stop; or an `error` event as the last one, wherever the stream broke."""
    events = parse_events(text)
    assert events, "an empty stream"
    names = [name for name, _ in events]
    for name, data in events:
        assert isinstance(data, dict) and data.get("type") == name, (name, data)
    if names[-1] == "error":
        error = events[-1][1]["error"]
        assert error.get("type") in ERROR_TYPES and isinstance(error.get("message"), str), error
        events = events[:-1]
        names = names[:-1]
        assert "error" not in names and "message_stop" not in names, names
        if not events:
            return
    else:
        assert names[-1] == "message_stop", names
    assert names[0] == "message_start", names
    start = events[0][1]["message"]
    assert start.get("type") == "message" and start.get("role") == "assistant", start
    assert start.get("model") == model, (start.get("model"), model)
    assert start.get("content") == [], start
    open_block: int | None = None
    next_index = 0
    delta_seen = False
    for name, data in events[1:]:
        assert name != "message_start", names
        assert not (delta_seen and name != "message_stop" and name != "ping"), names
        if name == "content_block_start":
            assert open_block is None, names
            assert data["index"] == next_index, (data, next_index)
            check_block(data["content_block"])
            open_block = next_index
            next_index += 1
        elif name == "content_block_delta":
            assert open_block is not None and data["index"] == open_block, (data, open_block)
            assert isinstance(data["delta"], dict) and isinstance(data["delta"].get("type"), str)
        elif name == "content_block_stop":
            assert open_block is not None and data["index"] == open_block, (data, open_block)
            open_block = None
        elif name == "message_delta":
            assert open_block is None, names
            assert data["delta"].get("stop_reason") in STOP_REASONS, data
            assert isinstance(data.get("usage"), dict), data
            out = data["usage"].get("output_tokens")
            assert isinstance(out, int) and not isinstance(out, bool), data
            delta_seen = True
        elif name == "message_stop":
            assert delta_seen, names
        else:
            assert name == "ping", names
    if names[-1] == "message_stop":
        assert delta_seen, names


def check_count(body: Any) -> None:
    assert isinstance(body, dict), body
    tokens = body.get("input_tokens")
    assert isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0, body


# What count_tokens does not take (Anthropic answers 400 to them), nor the SDKs send there.
SAMPLING = ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata")


def prompt_of(value: Any) -> Any:
    """The body a client counts the tokens of: the Messages body without its sampling."""
    if not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if k not in SAMPLING}


async def send_both(
    client: Client,
    value: Any,
    raw: bytes | None = None,
    *,
    count: Any = None,
    made_to_fail: bool = False,
) -> None:
    """`value` (or `raw`) to /v1/messages, and it (or `count`) to /v1/messages/count_tokens;
    each answer checked."""
    count = value if count is None else count
    for path, sent in (("/v1/messages", value), ("/v1/messages/count_tokens", count)):
        content = raw if raw is not None else json.dumps(sent).encode()
        response, upstream = await client.post(path, content)
        with contextlib.suppress(InvalidArgument):  # outside a hypothesis test: no events
            event(f"{client.gw.backend.kind} {path.rsplit('/', 1)[-1]} {response.status_code}")
        if response.status_code != 200:
            check_error(response, upstream, made_to_fail)
            continue
        assert isinstance(sent, dict), sent
        if path.endswith("count_tokens"):
            check_count(response.json())
        elif response.headers["content-type"].startswith("text/event-stream"):
            check_stream(response.text, sent["model"])
        else:
            check_message(response.json(), sent["model"])


# -- strategies -------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
JSON_OBJECTS = st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=5)
FIELDS = [
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "output_config",
    "output_format", "service_tier", "container", "mcp_servers", "context_management",
]  # fmt: skip


def noisy(valid: Any, noise: Any = JSON_VALUES) -> Any:
    """Mostly `valid`, sometimes `noise`: bodies near enough to valid that many get answers."""
    # Not one_of(valid, valid, ..., noise): one_of flattens nested alternatives and weighs
    # them as it likes. This shrinks toward `valid`.
    return st.integers(min_value=0, max_value=7).flatmap(lambda n: noise if n == 7 else valid)


WORDS = st.sampled_from(["hello there", "Say hi.", "What is 2+2?", "héllo wörld 🙂", "a\nb"])
TEXT = WORDS | st.text(min_size=1, max_size=30)
ANY_TEXT = TEXT | st.sampled_from(["", " ", "\n"])
TOOL_NAMES = ["get_weather", "lookup"]
TOOL_NAME = noisy(st.sampled_from(TOOL_NAMES), st.sampled_from(["bad name!", ""]) | JSON_VALUES)
TOOL_ID = noisy(st.sampled_from(["toolu_01abc", "call_1"]), st.text(max_size=12) | JSON_VALUES)
# A 1x1 PNG, and a tiny PDF: valid media for both the fakes and the translations.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF").decode()
MEDIA = st.sampled_from(
    ["image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain", ""]
) | st.text(max_size=10)

EXTRA = st.fixed_dictionaries(
    {},
    optional={
        "cache_control": st.fixed_dictionaries(
            {"type": st.sampled_from(["ephemeral", "bogus"])},
            optional={"ttl": st.sampled_from(["5m", "1h", "2h"])},
        )
        | JSON_VALUES,
        "x_unknown": JSON_VALUES,
    },
)


def block(kind: str, fields: dict[str, Any], optional: dict[str, Any] | None = None) -> Any:
    """A `kind` block, sometimes with `cache_control` or an unknown field."""
    made = st.fixed_dictionaries({"type": st.just(kind), **fields}, optional=optional or {})
    return noisy(made, st.tuples(made, EXTRA).map(lambda pair: {**pair[0], **pair[1]}))


def with_unknown(strategy: Any) -> Any:
    """Now and then an unknown field added (Anthropic rejects those, the hub ignores them)."""
    extra = noisy(st.just({}), st.fixed_dictionaries({"x_unknown": JSON_VALUES}))
    return st.tuples(strategy, extra).map(lambda pair: {**pair[0], **pair[1]})


IMAGE_SOURCE = noisy(
    st.just({"type": "base64", "media_type": "image/png", "data": PNG})
    | st.just({"type": "url", "url": "https://example.com/cat.png"}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["base64", "url", "file", "text", "bogus"])},
        optional={
            "media_type": MEDIA,
            "data": st.sampled_from([PNG, PDF, "!!not base64"]) | JSON_VALUES,
            "url": st.sampled_from(["ftp://x", "https://x.test/a.png"]) | JSON_VALUES,
            "file_id": ANY_TEXT,
        },
    )
    | JSON_VALUES,
)
DOCUMENT_SOURCE = noisy(
    st.just({"type": "base64", "media_type": "application/pdf", "data": PDF})
    | st.fixed_dictionaries(
        {"type": st.just("text"), "media_type": st.just("text/plain"), "data": TEXT}
    )
    | st.fixed_dictionaries({"type": st.just("content"), "content": TEXT})
    | st.just({"type": "url", "url": "https://example.com/a.pdf"}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["base64", "text", "content", "url", "file", "bogus"])},
        optional={
            "media_type": MEDIA,
            "data": st.sampled_from([PNG, PDF]) | JSON_VALUES,
            "content": JSON_VALUES,
            "url": JSON_VALUES,
        },
    )
    | JSON_VALUES,
)
TEXT_BLOCK = block("text", {"text": noisy(TEXT, ANY_TEXT | JSON_VALUES)})
IMAGE_BLOCK = block("image", {"source": IMAGE_SOURCE})
DOCUMENT_BLOCK = block(
    "document", {"source": DOCUMENT_SOURCE}, {"title": noisy(TEXT), "context": noisy(TEXT)}
)
TOOL_USE_BLOCK = block(
    "tool_use",
    {"id": TOOL_ID, "name": TOOL_NAME},
    {"input": noisy(st.just({}) | st.just({"city": "Paris"}), JSON_OBJECTS | JSON_VALUES)},
)
TOOL_RESULT_BLOCK = block(
    "tool_result",
    {"tool_use_id": TOOL_ID},
    {
        "content": noisy(TEXT | st.lists(TEXT_BLOCK | IMAGE_BLOCK, max_size=2))
        | st.lists(DOCUMENT_BLOCK, max_size=1),
        "is_error": noisy(st.booleans()),
    },
)
THINKING_BLOCK = block("thinking", {"thinking": noisy(ANY_TEXT)}, {"signature": noisy(ANY_TEXT)})
REDACTED_BLOCK = block("redacted_thinking", {"data": noisy(ANY_TEXT)})
UNKNOWN_BLOCK = st.tuples(
    st.sampled_from(
        ["search_result", "server_tool_use", "web_search_tool_result", "container_upload", "bogus"]
    )
    | st.text(max_size=10),
    JSON_OBJECTS,
).map(lambda pair: {**pair[1], "type": pair[0]})
ANY_BLOCK = (
    TEXT_BLOCK
    | IMAGE_BLOCK
    | DOCUMENT_BLOCK
    | TOOL_USE_BLOCK
    | TOOL_RESULT_BLOCK
    | THINKING_BLOCK
    | REDACTED_BLOCK
    | UNKNOWN_BLOCK
    | JSON_VALUES
)
USER_BLOCK = noisy(TEXT_BLOCK | IMAGE_BLOCK | DOCUMENT_BLOCK, ANY_BLOCK)
ASSISTANT_BLOCK = noisy(TEXT_BLOCK | TOOL_USE_BLOCK | THINKING_BLOCK | REDACTED_BLOCK, ANY_BLOCK)
NOISY_CONTENT = ANY_TEXT | st.lists(ANY_BLOCK, max_size=3) | JSON_VALUES


def turn(role: str, blocks: Any) -> Any:
    content = noisy(TEXT | st.lists(blocks, min_size=1, max_size=3), NOISY_CONTENT)
    return with_unknown(st.fixed_dictionaries({"role": st.just(role), "content": content}))


USER_TURN = turn("user", USER_BLOCK)
ASSISTANT_TURN = turn("assistant", ASSISTANT_BLOCK)
# A tool round trip whose ids match: the call, then its result (and maybe more text).
TOOL_ROUND = st.tuples(
    st.sampled_from(TOOL_NAMES),
    st.sampled_from(["toolu_01abc", "call_1"]),
    noisy(st.just({"city": "Paris"})),
    noisy(TEXT | st.lists(TEXT_BLOCK | IMAGE_BLOCK, max_size=2)),
    st.booleans(),
    st.lists(TEXT_BLOCK, max_size=1),
).map(
    lambda t: [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": t[1], "name": t[0], "input": t[2]},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": t[1], "content": t[3], "is_error": t[4]},
            *t[5],
        ]},
    ]
)  # fmt: skip
ANY_TURN = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", ""]) | JSON_VALUES},
    optional={"content": NOISY_CONTENT},
)
CONVERSATION = noisy(
    st.tuples(
        st.lists(st.tuples(USER_TURN, ASSISTANT_TURN), max_size=2),
        st.lists(turn("system", TEXT_BLOCK), max_size=1),
        USER_TURN | TOOL_ROUND.map(lambda ts: {"round": ts}),
    ).map(
        lambda t: [
            *[m for pair in t[0] for m in pair],
            *t[1],
            *(t[2]["round"] if "round" in t[2] else [t[2]]),
        ]
    ),
    st.lists(ANY_TURN, max_size=4) | JSON_VALUES,
)
SYSTEM = noisy(TEXT | st.lists(TEXT_BLOCK, min_size=1, max_size=2), st.lists(ANY_BLOCK, max_size=2))
SCHEMA = st.fixed_dictionaries(
    {"type": st.just("object")},
    optional={
        "properties": st.dictionaries(
            st.sampled_from(["city", "q", "n"]),
            st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "bogus"])}),
            max_size=2,
        ),
        "required": st.lists(st.sampled_from(["city", "q", "n"]), max_size=2, unique=True),
    },
)
CUSTOM_TOOL = st.fixed_dictionaries(
    {"name": TOOL_NAME, "input_schema": noisy(SCHEMA)},
    optional={"type": st.just("custom"), "description": noisy(TEXT), "cache_control": EXTRA},
)
SERVER_TOOL = st.sampled_from(
    [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "bogus_20990101", "name": "bogus"},
    ]
)
TOOLS = noisy(
    st.lists(CUSTOM_TOOL | SERVER_TOOL, max_size=3, unique_by=lambda t: str(t.get("name"))),
    st.lists(JSON_OBJECTS, max_size=2) | JSON_VALUES,
)
TOOL_CHOICE = noisy(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["auto", "any", "none"])},
        optional={"disable_parallel_tool_use": noisy(st.booleans())},
    )
    | st.fixed_dictionaries({"type": st.just("tool"), "name": TOOL_NAME}),
    st.fixed_dictionaries({"type": JSON_VALUES}) | JSON_VALUES,
)
THINKING = noisy(
    st.fixed_dictionaries(
        {"type": st.just("enabled"), "budget_tokens": st.integers(min_value=1024, max_value=4096)}
    )
    | st.sampled_from([{"type": "disabled"}, {"type": "adaptive"}]),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["enabled", "adaptive", "bogus"]) | JSON_VALUES},
        optional={
            "budget_tokens": st.integers(min_value=-5, max_value=2**33) | JSON_VALUES,
            "display": st.sampled_from(["summarized", "omitted"]) | JSON_VALUES,
        },
    ),
)
MAX_TOKENS = noisy(
    st.integers(min_value=1, max_value=64) | st.integers(min_value=1, max_value=2**31 - 1),
    st.integers(min_value=-5, max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 2**31, True, "16", None, 16.0]),
)
UNIT = noisy(
    st.floats(min_value=0, max_value=1),
    st.integers(min_value=-5, max_value=10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | JSON_VALUES,
)
OUTPUT_CONFIG = noisy(
    st.fixed_dictionaries(
        {},
        optional={
            "format": st.fixed_dictionaries(
                {"type": st.just("json_schema"), "schema": noisy(SCHEMA)}
            ),
            "effort": st.sampled_from(["low", "medium", "high"]),
        },
    ),
    st.fixed_dictionaries(
        {}, optional={"format": JSON_VALUES, "effort": st.sampled_from(["max", ""]) | JSON_VALUES}
    )
    | JSON_VALUES,
)

# Stands for the backend's own model, put in by the test (strategies are made before the
# fixture: drawing inside the test with `st.data()` breaks anyio's runner on an overrun).
RIGHT = "<the backend's model>"


def with_model(value: Any, model: str) -> Any:
    if isinstance(value, dict) and value.get("model") == RIGHT:
        return {**value, "model": model}
    return value


MODELS = noisy(
    st.just(RIGHT),
    st.sampled_from(
        [
            "claude-sonnet-4-5",
            "anthropic/claude-haiku-4-5",
            "openai/gpt-4o",
            "demo/echo",
            "gemini/gemini-flash",
            "nope/none",
            "demo",
            "",
        ]
    )
    | st.text(max_size=15)
    | JSON_VALUES,
)
MESSAGES_BODY = with_unknown(
    st.fixed_dictionaries(
        {"model": MODELS, "messages": CONVERSATION, "max_tokens": MAX_TOKENS},
        optional={
            "system": SYSTEM,
            "tools": TOOLS,
            "tool_choice": TOOL_CHOICE,
            "thinking": THINKING,
            "stream": noisy(st.booleans()),
            "metadata": noisy(st.fixed_dictionaries({"user_id": noisy(TEXT)})),
            "temperature": UNIT,
            "top_p": UNIT,
            "top_k": noisy(st.integers(min_value=0, max_value=500)),
            "stop_sequences": noisy(st.lists(TEXT, max_size=3)),
            "output_config": OUTPUT_CONFIG,
        },
    )
)


# -- tests ------------------------------------------------------------------------
@FUZZ
@given(value=JSON_VALUES | JSON_OBJECTS)
async def test_arbitrary_json_gets_an_anthropic_answer(client: Client, value: Any) -> None:
    await send_both(client, value)


@FUZZ
@given(raw=st.binary(max_size=200))
async def test_arbitrary_bytes_get_an_anthropic_answer(client: Client, raw: bytes) -> None:
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    await send_both(client, value, raw)


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6))
async def test_messages_fields_with_arbitrary_values_get_an_anthropic_answer(
    client: Client, fields: dict[str, Any]
) -> None:
    prompt = {"model": client.model, "messages": [{"role": "user", "content": "hi there"}]}
    value = {**prompt, "max_tokens": 16, **fields}
    await send_both(client, value, count={**prompt, **fields})


@settings(FUZZ, max_examples=200)
@given(value=MESSAGES_BODY)
async def test_near_valid_messages_bodies_get_an_anthropic_answer(
    client: Client, value: dict[str, Any]
) -> None:
    value = with_model(value, client.model)
    await send_both(client, value, count=prompt_of(value))


ANTHROPIC_FAILURES = st.fixed_dictionaries(
    {},
    optional={
        # Anthropic's own pairs of status and error type.
        "fail_next": st.sampled_from(
            [
                *TYPE_OF_STATUS.items(),
                (402, "billing_error"),
                (500, "api_error"),
                (504, "timeout_error"),
                (529, "overloaded_error"),
            ]
        ),
        # `cut_stream_after` (the stream ends early, cleanly): see the cut-stream test below.
        "stream_error_after": st.integers(min_value=0, max_value=9),
        "stream_error_type": st.sampled_from(["overloaded_error", "api_error"]),
        "refuse": st.booleans(),
    },
)
OPENAI_FAILURES = st.fixed_dictionaries(
    {},
    optional={
        "fail_status": st.sampled_from([400, 401, 403, 404, 408, 413, 422, 429, 500, 502, 503]),
        "malformed": st.booleans(),
        "cut_stream_after": st.integers(min_value=0, max_value=6),
        "stream_error_after": st.integers(min_value=0, max_value=6),
    },
)


def make_fail(client: Client, knobs: dict[str, Any]) -> None:
    assert client.recorder is not None
    fake = client.recorder.app
    if client.gw.backend.kind == "anthropic":
        fake.failures.clear()
        fake.cut_stream_after = fake.stream_error_after = None
        fake.stream_error_type, fake.refuse = "overloaded_error", False
        for name, value in knobs.items():
            if name == "fail_next":
                fake.fail_next(*value, "Injected failure")
            else:
                setattr(fake, name, value)
    else:
        fake.reset()
        for name, value in knobs.items():
            setattr(fake, name, value)


@FUZZ
@given(
    anthropic=ANTHROPIC_FAILURES,
    openai=OPENAI_FAILURES,
    stream=st.booleans(),
    tools=st.booleans(),
)
async def test_failing_upstreams_get_an_anthropic_answer(
    failing_client: Client,
    anthropic: dict[str, Any],
    openai: dict[str, Any],
    stream: bool,
    tools: bool,
) -> None:
    client = failing_client
    knobs = anthropic if client.gw.backend.kind == "anthropic" else openai
    make_fail(client, knobs)
    value: dict[str, Any] = {
        "model": client.model,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "hello there, how are you today?"}],
        "stream": stream,
    }
    if tools:
        value["tools"] = [
            {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
        ]
    await send_both(client, value, count=prompt_of(value), made_to_fail=bool(knobs))


@pytest.mark.parametrize("cut", [0, 1, 3])
async def test_a_cut_pass_through_stream_ends_with_an_error_event(cut: int) -> None:
    async with open_client("anthropic") as client:
        make_fail(client, {"cut_stream_after": cut})
        body = {
            "model": client.model,
            "max_tokens": 32,
            "stream": True,
            "messages": [{"role": "user", "content": "hello there"}],
        }
        await send_both(client, body, count=prompt_of(body), made_to_fail=True)
