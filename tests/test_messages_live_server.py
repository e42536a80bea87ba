"""The official anthropic SDK against a real `axione serve` subprocess on 127.0.0.1.

One server for the module, its prefix `/api/v1`, so the SDK's `base_url` is
`http://127.0.0.1:PORT/api` (the prefix without its last `/v1`, which the SDK
adds itself). Two backends: `anthropic` (kind anthropic, the strict Anthropic
fake served by uvicorn in a thread: the Messages pass-through, reached by bare
Claude names through `[aliases] "claude-*" = "anthropic/claude-*"`) and the
offline `demo` provider (`demo/echo`: the Messages dialect translated through
the hub). Each case runs with the sync `anthropic.Anthropic` and with
`anthropic.AsyncAnthropic`, over real sockets.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.fakes.anthropic_fake import FAKE_API_KEY, FakeAnthropic
from tests.helpers import AxioneServer, free_port, serve_in_thread

CONFIG = """\
prefix = "/api/v1"

[retry]
max_retries = 0

[storage]
keys = "sqlite:///{db}"
ledger = "sqlite:///{db}"
counters = "memory://"

[aliases]
"claude-*" = "anthropic/claude-*"

[providers.demo]
kind = "demo"

[providers.anthropic]
kind = "anthropic"
base_url = "{upstream}"
api_key = "{secret}"
timeout_s = 5
models = {{ "claude-*" = "claude-*" }}
"""

# (the model the client names, whether the gateway passes the request through)
CLAUDE = "claude-sonnet-4-5-20250929"
TARGETS = [pytest.param(CLAUDE, id="pass-through"), pytest.param("demo/echo", id="translated")]
WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


@dataclass
class Live:
    server: AxioneServer
    fake: FakeAnthropic
    db: Path
    key: str

    @property
    def base_url(self) -> str:
        return f"{self.server.base_url}/api"

    def sync(self, key: str | None = None) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key=key or self.key, base_url=self.base_url, max_retries=0)

    def aio(self, key: str | None = None) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=key or self.key, base_url=self.base_url, max_retries=0
        )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("messages-live")
    fake = FakeAnthropic()
    db = folder / "axione.db"
    with serve_in_thread(fake) as upstream:
        config = folder / "axione.toml"
        config.write_text(CONFIG.format(db=db, upstream=upstream, secret=FAKE_API_KEY))
        server = AxioneServer(["--config", str(config)], cwd=folder, port=free_port())
        try:
            server.wait_ready()
            keys = [line for line in server.output().splitlines() if line.startswith("sk-")]
            assert len(keys) == 1, server.output()
            yield Live(server, fake, db, keys[0])
        finally:
            server.stop()


def _text(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def _tool_turns(first: anthropic.types.Message, call_id: str) -> Any:
    return [
        *user("What is the weather in Paris?"),
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "sunny, 21 C"}],
        },
    ]


# -- the sync SDK ------------------------------------------------------------------
@pytest.mark.parametrize("model", TARGETS)
def test_sync_create_names_the_model_asked(live: Live, model: str) -> None:
    message = live.sync().messages.create(
        model=model, max_tokens=100, messages=user("Hello from the live test")
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == model
    assert _text(message) == "Hello from the live test"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_sync_pass_through_reaches_the_upstream_as_sent(live: Live) -> None:
    before = len(live.fake.requests)
    live.sync().messages.create(
        model=CLAUDE, max_tokens=50, messages=user("As sent"), extra_body={"top_k": 3}
    )
    assert len(live.fake.requests) == before + 1
    sent = live.fake.last_request
    assert sent["model"] == CLAUDE and sent["top_k"] == 3
    assert live.fake.request_headers[-1]["anthropic-version"]
    assert live.key not in str(live.fake.request_headers[-1])  # the client's key stays here


@pytest.mark.parametrize("model", TARGETS)
def test_sync_stream_text_equals_the_whole_answer(live: Live, model: str) -> None:
    client = live.sync()
    with client.messages.stream(
        model=model, max_tokens=100, messages=user("Stream these few words")
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "Stream these few words"
    assert len(pieces) > 1  # in pieces, not one buffered block
    assert final.model == model and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model", TARGETS)
def test_sync_count_tokens(live: Live, model: str) -> None:
    client = live.sync()
    counted = client.messages.count_tokens(model=model, messages=user("How many tokens is it?"))
    assert counted.input_tokens > 0
    if model == CLAUDE:  # Anthropic's own count: what the answer reports
        message = client.messages.create(
            model=model, max_tokens=20, messages=user("How many tokens is it?")
        )
        assert counted.input_tokens == message.usage.input_tokens


@pytest.mark.parametrize("model", TARGETS)
def test_sync_tool_round_trip(live: Live, model: str) -> None:
    client = live.sync()
    first = client.messages.create(
        model=model, max_tokens=200, tools=[WEATHER], messages=user("What is the weather in Paris?")
    )
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict)
    second = client.messages.create(
        model=model, max_tokens=200, tools=[WEATHER], messages=_tool_turns(first, call.id)
    )
    assert second.stop_reason == "end_turn"
    assert "sunny, 21 C" in _text(second)


@pytest.mark.parametrize("model", [CLAUDE, "demo/nothing", "nobody/nothing"])
def test_sync_unknown_model_is_not_found_error(live: Live, model: str) -> None:
    name = "claude-no-such-model" if model == CLAUDE else model
    if model == CLAUDE:
        # Through the alias the name is Anthropic's to judge: its own 404 comes back.
        live.fake.fail_next(404, "not_found_error", f"model: {name}")
    with pytest.raises(anthropic.NotFoundError) as missing:
        live.sync().messages.create(model=name, max_tokens=10, messages=user("x"))
    assert missing.value.status_code == 404
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert name in missing.value.body["error"]["message"]  # type: ignore[index]


@pytest.mark.parametrize("model", TARGETS)
def test_sync_bad_key_is_authentication_error(live: Live, model: str) -> None:
    before = len(live.fake.requests)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        live.sync("sk-ax-wrong").messages.create(model=model, max_tokens=10, messages=user("x"))
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert len(live.fake.requests) == before  # refused here, never sent upstream


def test_sync_upstream_error_keeps_its_status_and_words(live: Live) -> None:
    live.fake.fail_next(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000")
    with pytest.raises(anthropic.BadRequestError) as bad:
        live.sync().messages.create(model=CLAUDE, max_tokens=10, messages=user("x"))
    assert bad.value.body["error"]["message"] == (  # type: ignore[index]
        "prompt is too long: 250000 tokens > 200000"
    )


def test_sync_rate_limit_headers_and_session_in_the_ledger(live: Live) -> None:
    response = live.sync().messages.with_raw_response.create(
        model="demo/echo",
        max_tokens=10,
        messages=user("ledger me"),
        extra_headers={"X-Claude-Code-Session-Id": "live-session-1"},
    )
    assert int(response.headers["x-ratelimit-remaining-requests"]) >= 0
    assert response.headers["x-request-id"].startswith("req_")
    response.parse()
    # The ledger's writer flushes every 0.2 s; the docs' query sums the session.
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(live.db) as conn:
            row = conn.execute(
                "SELECT COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), MIN(dialect) "
                "FROM usage_ledger WHERE session_id = ?",
                ("live-session-1",),
            ).fetchone()
        if row[0] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert row[0] == 1 and row[3] == "anthropic-messages"
    assert row[1] > 0 and row[2] > 0


# -- the async SDK -----------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("model", TARGETS)
async def test_async_create_stream_count_and_tools(live: Live, model: str) -> None:
    async with live.aio() as client:
        message = await client.messages.create(
            model=model, max_tokens=100, messages=user("Hello async world")
        )
        async with client.messages.stream(
            model=model, max_tokens=100, messages=user("Hello async world")
        ) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        counted = await client.messages.count_tokens(model=model, messages=user("Count me"))
        first = await client.messages.create(
            model=model,
            max_tokens=200,
            tools=[WEATHER],
            messages=user("What is the weather in Paris?"),
        )
        call = next(b for b in first.content if b.type == "tool_use")
        second = await client.messages.create(
            model=model, max_tokens=200, tools=[WEATHER], messages=_tool_turns(first, call.id)
        )
    assert message.model == model and _text(message) == "Hello async world"
    assert "".join(pieces) == "Hello async world" and final.model == model
    assert counted.input_tokens > 0
    assert first.stop_reason == "tool_use" and "sunny, 21 C" in _text(second)


@pytest.mark.anyio
@pytest.mark.parametrize("model", TARGETS)
async def test_async_errors_are_the_sdks_own_classes(live: Live, model: str) -> None:
    async with live.aio("sk-ax-wrong") as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(model=model, max_tokens=10, messages=user("x"))
    async with live.aio() as client:
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(model="nobody/nothing", max_tokens=10, messages=user("x"))
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model=model, max_tokens=10, messages=[])
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


# -- raw HTTP, as Claude Code sends it ---------------------------------------------
def test_raw_http_x_api_key_and_a_stream_end_with_message_stop(live: Live) -> None:
    with httpx.stream(
        "POST",
        f"{live.base_url}/v1/messages?beta=true",
        headers={"x-api-key": live.key, "anthropic-version": "2023-06-01"},
        json={"model": CLAUDE, "max_tokens": 50, "stream": True, "messages": user("raw")},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("event: ")]
    assert events[0] == "event: message_start" and events[-1] == "event: message_stop"
