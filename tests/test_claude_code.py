"""The real Claude Code CLI (`claude -p`) through a real `axione serve`, to fake upstreams.

One `axione serve` subprocess on 127.0.0.1 has three providers: `anthropic`
(kind anthropic, the strict Anthropic fake: the Messages pass-through),
`openai` (the OpenAI fake: the Messages dialect translated to Chat
Completions) and `google` (kind gemini, the strict Gemini fake: the Messages
dialect translated to generateContent). `[aliases]` sends `claude-*` to the
first, `gpt-4o` to the second and `gemini-2.5-flash` to the third. Each
`claude` run gets its own gateway key, an empty HOME and an empty working
directory, an environment holding nothing but what it needs, and only
127.0.0.1 URLs.

Between Claude Code and the gateway sits a recording proxy (in a thread, on
127.0.0.1): it forwards every request and answer unchanged and keeps both, so
the test can compare what Claude Code sent with what reached the upstream, and
what the upstream answered with what Claude Code got. The ledger (the serve's
SQLite file, read directly) must hold one row per request, on the key that made
it, with the dialect and Claude Code's session id.

Skipped when `claude` is not on PATH; CI installs it (`.ci/run`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_fake import FAKE_API_KEY, MID_CONVERSATION_SYSTEM_BETA, FakeAnthropic
from tests.fakes.gemini_fake import FAKE_KEY as FAKE_GEMINI_KEY
from tests.fakes.gemini_fake import GeminiFake
from tests.fakes.openai_fake import FAKE_OPENAI_KEY, FakeOpenAI
from tests.helpers import AxioneServer, free_port, serve_in_thread
from tests.recording_proxy import KeysAndLedger, RecordingProxy, Sent

CLAUDE = shutil.which("claude")
pytestmark = pytest.mark.skipif(
    CLAUDE is None,
    reason="Claude Code is not installed (`npm install -g @anthropic-ai/claude-code`); "
    "CI installs it",
)

# Claude Code's default model in 2.1.x: adaptive thinking, and `system` turns inside
# `messages` (the mid-conversation-system beta).
OPUS = "claude-opus-4-8"
# An older name: thinking with a budget, no system turns, signatures to send back.
SONNET = "claude-sonnet-4-5-20250929"
GEMINI = "gemini-2.5-flash"
CLAUDE_TIMEOUT_S = 90
MESSAGES_PATH = "/api/v1/messages"
SESSION_HEADER = "x-claude-code-session-id"

CONFIG = """\
prefix = "/api/v1"
key_cache_ttl_s = 0

[retry]
max_retries = 0

[storage]
keys = "sqlite:///{db}"
ledger = "sqlite:///{db}"
counters = "memory://"

[aliases]
"claude-*" = "anthropic/claude-*"
"gpt-4o" = "openai/gpt-4o"
"{gemini_model}" = "google/{gemini_model}"

[providers.anthropic]
kind = "anthropic"
base_url = "{anthropic}"
api_key = "{anthropic_key}"
timeout_s = 30
models = {{ "claude-*" = "claude-*" }}

[providers.openai]
kind = "openai"
base_url = "{openai}/v1"
api_key = "{openai_key}"
timeout_s = 30
models = {{ "gpt-4o" = "gpt-4o-2024-08-06" }}

[providers.google]
kind = "gemini"
base_url = "{gemini}"
api_key = "{gemini_key}"
timeout_s = 30
models = {{ "{gemini_model}" = "{gemini_model}" }}
"""


class ClaudeProxy(RecordingProxy):
    """The recording proxy, with Claude Code's Messages requests picked out."""

    def messages(self) -> list[Sent]:
        """The Messages requests received so far (not the probes)."""
        return [s for s in self.sent if s.method == "POST" and s.path == MESSAGES_PATH]


@dataclass
class Gateway(KeysAndLedger):
    server: AxioneServer
    proxy: ClaudeProxy
    proxy_url: str
    anthropic: FakeAnthropic
    openai: FakeOpenAI
    gemini: GeminiFake
    config: Path
    db: Path
    root: Path
    keys: dict[str, str] = field(default_factory=dict)  # key id -> key, made by the CLI


@dataclass
class Run:
    """One `claude -p` run: its output, and the Messages requests it made."""

    done: subprocess.CompletedProcess[str]
    sent: list[Sent]

    @property
    def result(self) -> dict[str, Any]:
        assert self.done.returncode == 0, self.explain()
        lines = [line for line in self.done.stdout.splitlines() if line.strip()]
        out: dict[str, Any] = json.loads(lines[-1])
        assert out.get("is_error") is False, self.explain()
        return out

    def explain(self) -> str:
        return (
            f"claude exited {self.done.returncode}\n--- stdout\n{self.done.stdout[-3000:]}"
            f"\n--- stderr\n{self.done.stderr[-3000:]}"
        )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("claude-code")
    anthropic, openai, gemini = FakeAnthropic(), FakeOpenAI(), GeminiFake()
    # Answer with text, though Claude Code offers tools.
    anthropic.tool_names = []
    gemini.tool_names = []
    with (
        serve_in_thread(anthropic) as anthropic_url,
        serve_in_thread(openai) as openai_url,
        serve_in_thread(gemini) as gemini_url,
    ):
        db = root / "axione.db"
        config = root / "axione.toml"
        config.write_text(
            CONFIG.format(
                db=db,
                anthropic=anthropic_url,
                anthropic_key=FAKE_API_KEY,
                openai=openai_url,
                openai_key=FAKE_OPENAI_KEY,
                gemini=gemini_url,
                gemini_key=FAKE_GEMINI_KEY,
                gemini_model=GEMINI,
            )
        )
        server = AxioneServer(["--config", str(config)], cwd=root, port=free_port())
        try:
            server.wait_ready()
            proxy = ClaudeProxy(server.base_url, CLAUDE_TIMEOUT_S)
            with serve_in_thread(proxy) as proxy_url:
                yield Gateway(server, proxy, proxy_url, anthropic, openai, gemini, config, db, root)
        finally:
            server.stop()


def run_claude(gateway: Gateway, key: str, model: str, prompt: str, *args: str) -> Run:
    """`claude -p PROMPT --model MODEL` against the gateway, isolated from this machine."""
    assert CLAUDE is not None
    home = Path(os.path.realpath(gateway.root)) / f"home-{len(gateway.proxy.sent)}-{time.time_ns()}"
    work = home.with_name(home.name.replace("home-", "work-"))
    home.mkdir()
    work.mkdir()
    path = [os.path.dirname(os.path.realpath(CLAUDE)), os.path.dirname(CLAUDE), "/usr/bin", "/bin"]
    env = {
        "PATH": os.pathsep.join(dict.fromkeys(path)),
        "HOME": str(home),
        "TERM": "dumb",
        "ANTHROPIC_BASE_URL": f"{gateway.proxy_url}/api",
        "ANTHROPIC_API_KEY": key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    before = len(gateway.proxy.messages())
    done = subprocess.run(
        [CLAUDE, "-p", prompt, "--model", model, "--output-format", "json", *args],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLAUDE_TIMEOUT_S,
    )
    return Run(done, gateway.proxy.messages()[before:])


def _betas(headers: dict[str, str]) -> list[str]:
    return [b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip()]


def _assert_charged(gateway: Gateway, key_id: str, run: Run, model: str) -> list[dict[str, Any]]:
    """One ledger row per Messages request of the run, on its key, dialect and session."""
    sessions = {s.headers[SESSION_HEADER] for s in run.sent}
    assert len(sessions) == 1, sessions
    (session,) = sessions
    assert run.result["session_id"] == session
    rows = gateway.ledger(key_id, expect=len(run.sent))
    assert len(rows) == len(run.sent), rows
    for row in rows:
        assert row["dialect"] == "anthropic-messages", row
        assert row["session_id"] == session, row
        assert (row["model"], row["provider"]) == (model, model.split("/")[0]), row
        assert row["status"] == 200 and not row["estimated"], row
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0, row
    # The whole ledger: each Messages request so far, once, on the key that made it.
    by_key = {key: kid for kid, key in gateway.keys.items()}
    made = [
        (by_key[s.headers["x-api-key"]], s.headers[SESSION_HEADER])
        for s in gateway.proxy.messages()
    ]
    assert [(r["key_id"], r["session_id"]) for r in gateway.ledger_rows()] == made
    return rows


def _assert_usage_matches(run: Run, row: dict[str, Any]) -> None:
    """What Claude Code was told it used is what the ledger charged."""
    usage = run.result["usage"]
    prompt = sum(
        usage[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    assert (prompt, usage["output_tokens"]) == (row["prompt_tokens"], row["completion_tokens"])


# -- pass-through to the Anthropic fake ----------------------------------------------


def test_claude_code_through_the_pass_through(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("claude-pass-through")
    fake = gateway.anthropic
    before, answered = len(fake.requests), len(fake.answers)
    run = run_claude(gateway, key, OPUS, "Reply with the word pineapple")
    result = run.result
    # The fake echoes the last user turn: Claude Code's reminder, then the prompt.
    assert result["result"].rstrip().endswith("Reply with the word pineapple"), result
    assert len(run.sent) == 1, [s.path for s in run.sent]
    sent = run.sent[0]
    assert sent.query == "beta=true" and sent.headers["x-api-key"] == key
    # What reached the upstream: the client's body, its model mapped (to the same name
    # here: `claude-*` = `claude-*`), and the dialect's headers verbatim.
    assert len(fake.requests) == before + 1
    body, headers = fake.requests[before], fake.request_headers[before]
    assert body == {**sent.json(), "model": OPUS}
    assert headers["anthropic-beta"] == sent.headers["anthropic-beta"]
    assert headers["anthropic-version"] == sent.headers["anthropic-version"]
    assert headers["x-api-key"] == FAKE_API_KEY
    assert key not in json.dumps(headers)
    # What Claude Code sends and the strict fake took: a system turn under its beta,
    # adaptive thinking with an effort, tools whose schemas carry `$schema`.
    assert MID_CONVERSATION_SYSTEM_BETA in _betas(sent.headers)
    assert [m["role"] for m in body["messages"]] == ["user", "system"]
    assert body["stream"] is True and body["thinking"] == {"type": "adaptive"}
    assert body["output_config"] == {"effort": "high"}
    assert len(body["tools"]) > 10 and all("$schema" in t["input_schema"] for t in body["tools"])
    # The stream came back as the fake wrote it, named after the model asked for.
    events = sent.events()
    assert sent.status == 200 and events[0][0] == "message_start"
    assert events[0][1]["message"]["model"] == OPUS
    assert [e for e, _ in events][-1] == "message_stop"
    assert [data for _, data in events] == [
        {**event, "message": {**event["message"], "model": OPUS}} if "message" in event else event
        for event in fake._event_list(fake.answers[answered])
    ]
    (row,) = _assert_charged(gateway, key_id, run, f"anthropic/{OPUS}")
    _assert_usage_matches(run, row)


def test_claude_code_tool_round_trip_through_the_pass_through(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("claude-tools")
    fake = gateway.anthropic
    before, answered, verified = len(fake.requests), len(fake.answers), fake.verified_signatures
    fake.tool_names = ["Bash"]
    fake.tool_input = {"command": "echo axione-tool-ran", "description": "Print a marker"}
    try:
        run = run_claude(gateway, key, SONNET, "Run the marker command", "--allowedTools", "Bash")
        result = run.result
    finally:
        fake.tool_names, fake.tool_input = [], None
    # The fake called Bash; Claude Code ran it and sent its output back, as a tool_result.
    assert len(run.sent) == 2, [s.path for s in run.sent]
    assert fake.requests[before:] == [s.json() for s in run.sent]
    first, second = (s.json() for s in run.sent)
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 31999}
    call = fake.answers[answered]["content"][-1]
    assert (call["type"], call["name"]) == ("tool_use", "Bash")
    assistant, results = second["messages"][-2:]
    assert assistant["role"] == "assistant"
    assert [b["type"] for b in assistant["content"]] == ["thinking", "text", "tool_use"]
    (tool_result,) = [b for b in results["content"] if b["type"] == "tool_result"]
    assert tool_result["tool_use_id"] == call["id"]
    assert "axione-tool-ran" in json.dumps(tool_result["content"])
    # The thinking block went out and came back through the gateway unchanged: the
    # fake verified its signature.
    assert fake.verified_signatures == verified + 1
    assert result["result"].startswith("Tool said:") and "axione-tool-ran" in result["result"]
    assert result["num_turns"] == 2
    _assert_charged(gateway, key_id, run, f"anthropic/{SONNET}")


# -- translated to the OpenAI fake ------------------------------------------------------


def test_claude_code_translated_to_openai(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("claude-translated")
    fake = gateway.openai
    before = len(fake.requests)
    run = run_claude(gateway, key, "gpt-4o", "Reply with the word mango")
    result = run.result
    # The OpenAI fake echoes the last user message, which ends with the prompt.
    assert result["result"].rstrip().endswith("Reply with the word mango"), result
    assert len(run.sent) == 1, [s.path for s in run.sent]
    sent = run.sent[0].json()
    assert len(fake.requests) == before + 1
    chat = fake.requests[before]
    assert chat["model"] == "gpt-4o-2024-08-06"
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert fake.last_headers["authorization"] == f"Bearer {FAKE_OPENAI_KEY}"
    assert key not in json.dumps(fake.last_headers)
    # Claude Code's system prompt, its user turn, its steering system turn; its tools
    # as functions.
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "system"]
    assert chat["messages"][1]["content"].rstrip().endswith("Reply with the word mango")
    assert [t["function"]["name"] for t in chat["tools"]] == [t["name"] for t in sent["tools"]]
    # The translated stream: Anthropic's events, named after the model asked for.
    events = run.sent[0].events()
    names = [e for e, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    assert {"content_block_start", "content_block_delta", "message_delta"} <= set(names)
    assert events[0][1]["message"]["model"] == "gpt-4o"
    (row,) = _assert_charged(gateway, key_id, run, "openai/gpt-4o")
    _assert_usage_matches(run, row)


# -- translated to the Gemini fake ------------------------------------------------------


def test_claude_code_translated_to_gemini(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("claude-gemini")
    fake = gateway.gemini
    before = len(fake.requests)
    run = run_claude(gateway, key, GEMINI, "Reply with the word papaya")
    result = run.result
    # The Gemini fake echoes the last user turn: Claude Code's reminder, then the prompt.
    assert result["result"].rstrip().endswith("Reply with the word papaya"), result
    assert len(run.sent) == 1, [s.path for s in run.sent]
    sent = run.sent[0].json()
    # One streamed generateContent call, on the provider's key, that the strict fake took.
    assert len(fake.requests) == before + 1
    got = fake.requests[before]
    assert (got.path, got.query) == (
        f"/v1beta/models/{GEMINI}:streamGenerateContent",
        {"alt": "sse"},
    )
    assert got.headers["x-goog-api-key"] == FAKE_GEMINI_KEY
    assert key not in json.dumps(got.headers)
    assert run.sent[0].status == 200
    body = fake.validate(got.body, GEMINI)
    # Claude Code's system blocks and its steering system turn are the system
    # instruction; its user turn the one content; its tools, function declarations.
    (instruction,) = body["systemInstruction"]["parts"]
    steering = [m["content"] for m in sent["messages"] if m["role"] == "system"]
    assert steering and all(
        (c if isinstance(c, str) else "".join(b["text"] for b in c)) in instruction["text"]
        for c in steering
    )
    assert all(block["text"] in instruction["text"] for block in sent["system"])
    assert [c["role"] for c in body["contents"]] == ["user"]
    assert body["contents"][0]["parts"][-1]["text"].rstrip().endswith("Reply with the word papaya")
    (tools,) = body["tools"]
    assert [d["name"] for d in tools["functionDeclarations"]] == [t["name"] for t in sent["tools"]]
    # Adaptive thinking asks for Gemini's thoughts; max_tokens is maxOutputTokens.
    config = body["generationConfig"]
    assert config["maxOutputTokens"] == sent["max_tokens"]
    assert config["thinkingConfig"]["includeThoughts"] is True
    # The translated stream: Anthropic's events, the thought summary a thinking block,
    # named after the model asked for.
    events = run.sent[0].events()
    names = [e for e, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    assert events[0][1]["message"]["model"] == GEMINI
    blocks = [data["content_block"]["type"] for e, data in events if e == "content_block_start"]
    assert blocks == ["thinking", "text"], blocks
    thought = "".join(
        data["delta"].get("thinking", "") for e, data in events if e == "content_block_delta"
    )
    assert thought == "Thinking it over."
    (row,) = _assert_charged(gateway, key_id, run, f"google/{GEMINI}")
    _assert_usage_matches(run, row)
