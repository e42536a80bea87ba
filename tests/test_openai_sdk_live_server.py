"""A real `axione serve` subprocess on 127.0.0.1, driven by the openai SDK, the CLI and raw HTTP.

One server per module: its openai-kind provider points at the fake OpenAI
upstream served by uvicorn in a thread, its keys live in SQLite, and its key
cache TTL is 0 so a revocation made by the CLI takes effect at the next request.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.openai_fake import FAKE_OPENAI_KEY, FakeOpenAI
from tests.helpers import AxioneServer, assert_spec_error, free_port, run_cli, serve_in_thread

MODEL = "openai/gpt-4o"
USER = [{"role": "user", "content": "Hello from the live test"}]
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}

CONFIG = """\
prefix = "/api/v1"
key_cache_ttl_s = 0

[retry]
max_retries = 0

[storage]
keys = "sqlite:///{db}"
ledger = "sqlite:///{db}"
counters = "memory://"

[providers.demo]
kind = "demo"

[providers.openai]
kind = "openai"
base_url = "{upstream}/v1"
api_key = "{secret}"
timeout_s = 5
models = {{ "gpt-4o" = "gpt-4o-2024-08-06" }}
"""


@dataclass
class Live:
    server: AxioneServer
    fake: FakeOpenAI
    config: Path
    folder: Path
    first_key: str

    @property
    def api(self) -> str:
        return f"{self.server.base_url}/api/v1"

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(api_key=key or self.first_key, base_url=self.api, max_retries=0)

    def create_key(self, name: str) -> tuple[str, str]:
        """`axione keys create`; returns the key id and the key."""
        done = run_cli("keys", "create", "--config", str(self.config), "--name", name)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        key_id = next(w for w in lines[0].split() if w.startswith("key_"))
        return key_id, lines[-1]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("live")
    fake = FakeOpenAI()
    with serve_in_thread(fake) as upstream:
        config = folder / "axione.toml"
        config.write_text(
            CONFIG.format(db=folder / "axione.db", upstream=upstream, secret=FAKE_OPENAI_KEY)
        )
        server = AxioneServer(["--config", str(config)], cwd=folder, port=free_port())
        try:
            server.wait_ready()
            keys = [line for line in server.output().splitlines() if line.startswith("sk-")]
            assert len(keys) == 1, server.output()
            yield Live(server, fake, config, folder, keys[0])
        finally:
            server.stop()


@pytest.fixture
def fresh(live: Live) -> Iterator[Live]:
    live.fake.reset()
    yield live
    live.fake.reset()


# -- first start ---------------------------------------------------------------


def test_first_start_prints_one_key_alone_on_its_line(live: Live) -> None:
    lines = live.server.output().splitlines()
    assert live.first_key in lines
    assert live.first_key.startswith("sk-ax-")


def test_first_start_key_works(live: Live) -> None:
    response = httpx.get(
        f"{live.api}/models", headers={"Authorization": f"Bearer {live.first_key}"}
    )
    assert response.status_code == 200
    ids = {m["id"] for m in response.json()["data"]}
    assert {"demo/echo", MODEL} <= ids


# -- the sync SDK ------------------------------------------------------------------


def test_sync_sdk_chat_through_the_fake_upstream(fresh: Live) -> None:
    completion = fresh.client().chat.completions.create(model=MODEL, messages=USER)
    assert completion.choices[0].message.content == "Hello from the live test"
    assert completion.model == MODEL
    assert fresh.fake.last_body is not None
    assert fresh.fake.last_body["model"] == "gpt-4o-2024-08-06"
    expected = fresh.fake.completion(fresh.fake.last_body)["usage"]
    assert completion.usage is not None
    assert completion.usage.total_tokens == expected["total_tokens"]


def test_sync_sdk_chat_on_the_demo_provider(live: Live) -> None:
    completion = live.client().chat.completions.create(model="demo/echo", messages=USER)
    assert completion.choices[0].message.content == "Hello from the live test"


def test_sync_sdk_stream_with_usage(fresh: Live) -> None:
    stream = fresh.client().chat.completions.create(
        model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert text == "Hello from the live test"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_sync_sdk_tool_calls_pass_through(fresh: Live) -> None:
    completion = fresh.client().chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=[TOOL],  # type: ignore[list-item]
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "lookup"
    assert completion.choices[0].finish_reason == "tool_calls"


def test_sync_sdk_bad_key_raises_authentication_error(live: Live) -> None:
    with pytest.raises(openai.AuthenticationError):
        live.client("sk-ax-wrong").chat.completions.create(model=MODEL, messages=USER)


def test_sync_sdk_unknown_model_raises_not_found_error(live: Live) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        live.client().chat.completions.create(model="nope/nothing", messages=USER)
    assert info.value.code == "model_not_found"


def test_sync_sdk_invalid_body_raises_bad_request_error(live: Live) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        live.client().chat.completions.create(model=MODEL, messages=[])
    assert info.value.param == "messages"


def test_sync_sdk_upstream_429_raises_rate_limit_error(fresh: Live) -> None:
    fresh.fake.fail_status, fresh.fake.retry_after = 429, "3"
    with pytest.raises(openai.RateLimitError) as info:
        fresh.client().chat.completions.create(model=MODEL, messages=USER)
    assert info.value.response.headers["retry-after"] == "3"


def test_sync_sdk_upstream_500_raises_api_status_error_502(fresh: Live) -> None:
    fresh.fake.fail_status = 500
    fresh.fake.echo_key_in_errors = True
    with pytest.raises(openai.APIStatusError) as info:
        fresh.client().chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 502
    assert FAKE_OPENAI_KEY not in info.value.response.text


def test_server_output_never_holds_the_upstream_secret(fresh: Live) -> None:
    fresh.fake.fail_status = 500
    fresh.fake.echo_key_in_errors = True
    with pytest.raises(openai.APIStatusError):
        fresh.client().chat.completions.create(model=MODEL, messages=USER)
    time.sleep(0.2)
    assert FAKE_OPENAI_KEY not in fresh.server.output()


# -- the async SDK over a real socket -------------------------------------------------


@pytest.mark.anyio
async def test_async_sdk_chat_and_stream(fresh: Live) -> None:
    async with openai.AsyncOpenAI(
        api_key=fresh.first_key, base_url=fresh.api, max_retries=0
    ) as client:
        completion = await client.chat.completions.create(model=MODEL, messages=USER)
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        pieces = [c.delta.content or "" async for chunk in stream for c in chunk.choices]
    assert completion.choices[0].message.content == "".join(pieces)


# -- curl-like raw HTTP --------------------------------------------------------------


def test_raw_http_chat_has_rate_limit_headers_and_request_id(live: Live) -> None:
    response = httpx.post(
        f"{live.api}/chat/completions",
        headers={"Authorization": f"Bearer {live.first_key}"},
        content=json.dumps({"model": "demo/echo", "messages": USER}),
    )
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    for name in ("requests", "tokens"):
        assert int(response.headers[f"x-ratelimit-limit-{name}"]) > 0
        assert f"x-ratelimit-remaining-{name}" in response.headers
        assert f"x-ratelimit-reset-{name}" in response.headers
    assert response.headers["x-request-id"].startswith("req_")


def test_raw_http_stream_ends_with_done(live: Live) -> None:
    body = {"model": "demo/echo", "messages": USER, "stream": True}
    with httpx.stream(
        "POST",
        f"{live.api}/chat/completions",
        headers={"Authorization": f"Bearer {live.first_key}"},
        json=body,
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_raw_http_path_outside_the_prefix_is_a_spec_404(live: Live) -> None:
    response = httpx.get(f"{live.server.base_url}/elsewhere")
    assert_spec_error(response, 404, "not_found")


# -- keys made and revoked by the CLI ---------------------------------------------------


def test_cli_created_key_works_at_once(live: Live) -> None:
    _, key = live.create_key("made-by-cli")
    completion = live.client(key).chat.completions.create(model="demo/echo", messages=USER)
    assert completion.choices[0].message.content == "Hello from the live test"


def test_cli_revoked_key_gets_401_invalid_api_key(live: Live) -> None:
    key_id, key = live.create_key("to-revoke")
    client = live.client(key)
    client.chat.completions.create(model="demo/echo", messages=USER)
    done = run_cli("keys", "revoke", "--config", str(live.config), key_id)
    assert done.returncode == 0, done.stderr
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="demo/echo", messages=USER)
    assert info.value.code == "invalid_api_key"


def test_cli_lists_the_first_start_key(live: Live) -> None:
    done = run_cli("keys", "list", "--config", str(live.config))
    assert done.returncode == 0, done.stderr
    assert "default" in done.stdout
    assert live.first_key not in done.stdout


# -- JavaScript fetch, as the README shows it ---------------------------------------
_FETCH_SCRIPT = """
const [base, key] = process.argv.slice(2);
const headers = { Authorization: `Bearer ${key}`, "Content-Type": "application/json" };
const body = { model: "demo/echo", messages: [{ role: "user", content: "Hi from fetch" }] };
const whole = await (await fetch(`${base}/chat/completions`, {
  method: "POST", headers, body: JSON.stringify(body),
})).json();
const streamed = await fetch(`${base}/chat/completions`, {
  method: "POST", headers, body: JSON.stringify({ ...body, stream: true }),
});
const reader = streamed.body.getReader();
const decoder = new TextDecoder();
let raw = "";
for (;;) {
  const { done, value } = await reader.read();
  if (done) break;
  raw += decoder.decode(value, { stream: true });
}
const events = raw.split("\\n\\n").filter((e) => e.startsWith("data: ")).map((e) => e.slice(6));
const text = events.slice(0, -1).map((e) => JSON.parse(e))
  .map((c) => (c.choices[0] && c.choices[0].delta.content) || "").join("");
console.log(JSON.stringify({
  whole: whole.choices[0].message.content,
  streamed: text,
  last: events[events.length - 1],
  type: streamed.headers.get("content-type"),
}));
"""


def test_javascript_fetch_gets_a_completion_and_a_stream(live: Live, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed on this machine")
    script = tmp_path / "fetch.mjs"
    script.write_text(_FETCH_SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [node, str(script), live.api, live.first_key],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["whole"] == "Hi from fetch"
    assert result["streamed"] == "Hi from fetch"
    assert result["last"] == "[DONE]"
    assert result["type"].startswith("text/event-stream")
