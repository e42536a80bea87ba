"""The official openai SDK's `client.responses` against a real `axione serve` on 127.0.0.1.

One server for the module at its prefix `/api/v1` (the SDK's `base_url`),
SQLite for keys, the ledger and stored responses. Backends: the strict
Anthropic fake served by uvicorn in a thread (Responses translated to
Messages) and the offline `demo` provider. Sync and async clients.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
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

MODELS = [pytest.param("claude-sonnet-4-5", id="anthropic"), pytest.param("demo/echo", id="demo")]
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@dataclass
class Live:
    server: AxioneServer
    fake: FakeAnthropic
    db: Path
    key: str

    @property
    def base_url(self) -> str:
        return f"{self.server.base_url}/api/v1"

    def sync(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(api_key=key or self.key, base_url=self.base_url, max_retries=0)

    def aio(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=self.key, base_url=self.base_url, max_retries=0)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("responses-live")
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


@pytest.mark.parametrize("model", MODELS)
def test_create_stream_retrieve_and_delete_over_real_sockets(live: Live, model: str) -> None:
    client = live.sync()
    whole = client.responses.create(model=model, input="Over a real socket")
    with client.responses.stream(model=model, input="Over a real socket") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert whole.output_text == final.output_text == "".join(deltas) == "Over a real socket"
    assert client.responses.retrieve(whole.id).output_text == whole.output_text
    client.responses.delete(whole.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(whole.id)


@pytest.mark.parametrize("model", MODELS)
def test_three_turns_by_previous_response_id_are_kept_in_sqlite(live: Live, model: str) -> None:
    client = live.sync()
    one = client.responses.create(model=model, input="one")
    two = client.responses.create(model=model, input="two", previous_response_id=one.id)
    three = client.responses.create(model=model, input="three", previous_response_id=two.id)
    assert three.output_text == "three"
    with sqlite3.connect(live.db) as db:
        stored = dict(db.execute("SELECT id, response FROM stored_responses").fetchall())
    assert {one.id, two.id, three.id} <= set(stored)
    assert json.loads(stored[three.id])["output"][0]["content"][0]["text"] == "three"


def test_a_tool_round_trip_to_anthropic(live: Live) -> None:
    client = live.sync()
    first = client.responses.create(model="claude-sonnet-4-5", input="Weather?", tools=[WEATHER])
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(
        model="claude-sonnet-4-5",
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}],
    )
    assert "rain" in second.output_text


@pytest.mark.anyio
async def test_the_async_client_streams_too(live: Live) -> None:
    async with (
        live.aio() as client,  # closed here: its sockets belong to this test's loop
        client.responses.stream(model="demo/echo", input="async words") as stream,
    ):
        final = await stream.get_final_response()
    assert final.output_text == "async words"


def test_another_keys_response_is_not_found_and_errors_are_the_sdks(live: Live) -> None:
    kept = live.sync().responses.create(model="demo/echo", input="mine")
    with pytest.raises(openai.AuthenticationError):
        live.sync("sk-ax-not-a-key").responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        live.sync().responses.create(model="nobody/nothing", input="x")
