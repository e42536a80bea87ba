"""The real Codex CLI (`codex exec`) through a real `axione serve`, to fake upstreams.

One `axione serve` subprocess on 127.0.0.1 has three providers: `openai`
(kind openai, the strict Responses fake: the Responses pass-through),
`anthropic` (the strict Anthropic fake: Responses translated to Messages) and
`google` (kind gemini, the strict Gemini fake: Responses translated to
generateContent). `[aliases]` sends Codex's bare model names to them. Each
`codex exec` run gets its own gateway key, an empty HOME, a CODEX_HOME holding
only a `config.toml` that points the `axione` model provider at the gateway
(telemetry, plugin sync and update checks off), an empty working directory, an
environment holding nothing but what it needs, and only 127.0.0.1 URLs.

Between Codex and the gateway sits a recording proxy (in a thread, on
127.0.0.1): it forwards every request and answer unchanged and keeps both, so
the test can compare what Codex sent with what reached the upstream, and what
the upstream answered with what Codex got. Each backend gets a text turn and a
turn with one round trip of Codex's shell tool (`exec_command`), which writes
a file in the scratch folder. Codex keeps its default tools, so the strict
fakes take (and the translation handles) what it really sends: developer
messages, a `namespace` tool, `web_search`, `client_metadata`, encrypted
reasoning sent back with `store: false`. (Gemini's shell-tool turn goes without
`web_search`: Gemini 2.x takes no built-in tool beside function declarations.)
Codex retries nothing (its provider says so), so a failure shows at once. The
ledger (the serve's SQLite file, read directly) must hold one row per request,
on the key that made it, with the dialect `openai-responses`, and add up to the
usage Codex reports.

Skipped when `codex` is not on PATH; CI installs it (`.ci/run`).
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

from tests.fakes.anthropic_fake import FAKE_API_KEY, FakeAnthropic
from tests.fakes.gemini_fake import FAKE_KEY as FAKE_GEMINI_KEY
from tests.fakes.gemini_fake import GeminiFake
from tests.fakes.openai_responses_fake import FAKE_RESPONSES_KEY, THOUGHT, FakeOpenAIResponses
from tests.helpers import AxioneServer, free_port, serve_in_thread
from tests.recording_proxy import KeysAndLedger, RecordingProxy, Sent

CODEX = shutil.which("codex")
pytestmark = pytest.mark.skipif(
    CODEX is None,
    reason="Codex CLI is not installed (`npm install -g @openai/codex`); CI installs it",
)

GPT = "gpt-5-codex"  # Codex's name; the gateway maps it to GPT_UPSTREAM
GPT_UPSTREAM = "gpt-5.1-codex"
CLAUDE = "claude-sonnet-4-5"
CLAUDE_UPSTREAM = "claude-sonnet-4-5-20250929"
GEMINI = "gemini-2.5-flash"
CODEX_TIMEOUT_S = 90
RESPONSES_PATH = "/api/v1/responses"
IGNORED_TOOLS = "x-axione-ignored-tools"
SHELL_COMMAND = "echo hi > out.txt"
# Run the model's commands without asking (no one answers in `exec`) and without
# Codex's sandbox (which needs kernel features a container may lack).
RUN_COMMANDS = ("--dangerously-bypass-approvals-and-sandbox",)

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
"{gpt}" = "openai/{gpt}"
"{claude}" = "anthropic/{claude}"
"{gemini_model}" = "google/{gemini_model}"

[providers.openai]
kind = "openai"
base_url = "{openai}/v1"
api_key = "{openai_key}"
timeout_s = 30
models = {{ "{gpt}" = "{gpt_upstream}" }}

[providers.anthropic]
kind = "anthropic"
base_url = "{anthropic}"
api_key = "{anthropic_key}"
timeout_s = 30
models = {{ "{claude}" = "{claude_upstream}" }}

[providers.google]
kind = "gemini"
base_url = "{gemini}"
api_key = "{gemini_key}"
timeout_s = 30
models = {{ "{gemini_model}" = "{gemini_model}" }}
"""

# Codex's config.toml: the gateway as its model provider, and nothing that leaves
# 127.0.0.1 (analytics and plugin sync would reach chatgpt.com and github.com).
CODEX_CONFIG = """\
model = "{model}"
model_provider = "axione"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false

[model_providers.axione]
name = "Axione"
base_url = "{base_url}/api/v1"
env_key = "AXIONE_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


@dataclass
class Gateway(KeysAndLedger):
    server: AxioneServer
    proxy: RecordingProxy
    proxy_url: str
    openai: FakeOpenAIResponses
    anthropic: FakeAnthropic
    gemini: GeminiFake
    config: Path
    db: Path
    root: Path
    keys: dict[str, str] = field(default_factory=dict)  # key id -> key, made by the CLI


@dataclass
class Run:
    """One `codex exec --json` run: its output, its scratch folder, the requests it made."""

    done: subprocess.CompletedProcess[str]
    work: Path
    sent: list[Sent]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Codex's JSONL events, the run having succeeded."""
        assert self.done.returncode == 0, self.explain()
        return [json.loads(line) for line in self.done.stdout.splitlines() if line.strip()]

    def items(self, kind: str) -> list[dict[str, Any]]:
        """The completed items of a kind (`agent_message`, `command_execution`...)."""
        return [
            e["item"]
            for e in self.events
            if e["type"] == "item.completed" and e["item"]["type"] == kind
        ]

    @property
    def answer(self) -> str:
        """The turn's last agent message: what `codex exec` prints as the answer."""
        messages = self.items("agent_message")
        assert messages, self.explain()
        return str(messages[-1]["text"])

    def explain(self) -> str:
        return (
            f"codex exited {self.done.returncode}\n--- stdout\n{self.done.stdout[-3000:]}"
            f"\n--- stderr\n{self.done.stderr[-3000:]}"
        )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("codex-cli")
    openai, anthropic, gemini = FakeOpenAIResponses(), FakeAnthropic(), GeminiFake()
    # Answer with text, though Codex offers tools; the tool tests name the shell tool.
    openai.tool_names = []
    anthropic.tool_names = []
    gemini.tool_names = []
    with (
        serve_in_thread(openai) as openai_url,
        serve_in_thread(anthropic) as anthropic_url,
        serve_in_thread(gemini) as gemini_url,
    ):
        db = root / "axione.db"
        config = root / "axione.toml"
        config.write_text(
            CONFIG.format(
                db=db,
                gpt=GPT,
                gpt_upstream=GPT_UPSTREAM,
                claude=CLAUDE,
                claude_upstream=CLAUDE_UPSTREAM,
                openai=openai_url,
                openai_key=FAKE_RESPONSES_KEY,
                anthropic=anthropic_url,
                anthropic_key=FAKE_API_KEY,
                gemini=gemini_url,
                gemini_key=FAKE_GEMINI_KEY,
                gemini_model=GEMINI,
            )
        )
        server = AxioneServer(["--config", str(config)], cwd=root, port=free_port())
        try:
            server.wait_ready()
            proxy = RecordingProxy(server.base_url, CODEX_TIMEOUT_S)
            with serve_in_thread(proxy) as proxy_url:
                yield Gateway(server, proxy, proxy_url, openai, anthropic, gemini, config, db, root)
        finally:
            server.stop()


def run_codex(gateway: Gateway, key: str, model: str, prompt: str, *args: str) -> Run:
    """`codex exec --json PROMPT` with MODEL against the gateway, isolated from this machine."""
    assert CODEX is not None
    run = Path(os.path.realpath(gateway.root)) / f"run-{len(gateway.proxy.sent)}-{time.time_ns()}"
    home, codex_home, work = run / "home", run / "codex-home", run / "work"
    for folder in (home, codex_home, work):
        folder.mkdir(parents=True)
    (codex_home / "config.toml").write_text(
        CODEX_CONFIG.format(model=model, base_url=gateway.proxy_url)
    )
    path = [os.path.dirname(os.path.realpath(CODEX)), os.path.dirname(CODEX), "/usr/bin", "/bin"]
    env = {
        "PATH": os.pathsep.join(dict.fromkeys(path)),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "TERM": "dumb",
        "AXIONE_API_KEY": key,
    }
    before = len(gateway.proxy.sent)
    done = subprocess.run(
        [CODEX, "exec", "--json", "--skip-git-repo-check", "--ephemeral", *args, prompt],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,  # an open stdin is read as more prompt: codex waits on it
        capture_output=True,
        text=True,
        timeout=CODEX_TIMEOUT_S,
    )
    made = gateway.proxy.sent[before:]
    # Codex asks the provider for nothing else (no model list, no probes).
    assert [(s.method, s.path) for s in made] == [("POST", RESPONSES_PATH)] * len(made)
    assert all(s.headers["authorization"] == f"Bearer {key}" for s in made)
    return Run(done, work, made)


def _tools(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(t["type"], t.get("name")) for t in body["tools"]]


def _assert_codex_request(body: dict[str, Any], prompt: str, *, web_search: bool = True) -> None:
    """What Codex sends (and the strict fakes take, as the real APIs do)."""
    assert body["stream"] is True and body["store"] is False
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["reasoning"] == {"summary": "auto"}
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is True
    assert isinstance(body["prompt_cache_key"], str) and body["prompt_cache_key"]
    assert isinstance(body["client_metadata"], dict) and body["client_metadata"]
    tools = _tools(body)
    assert ("function", "exec_command") in tools and ("namespace", "multi_agent_v1") in tools
    assert (("web_search", None) in tools) is web_search
    roles = [i.get("role") for i in body["input"] if i["type"] == "message"]
    assert roles[0] == "developer" and roles[-1] == "user", roles
    users = [i for i in body["input"] if i.get("role") == "user"]
    assert users[-1]["content"] == [{"type": "input_text", "text": prompt}]


def _assert_charged(gateway: Gateway, key_id: str, run: Run, model: str) -> list[dict[str, Any]]:
    """One ledger row per request of the run, on its key and dialect; Codex's usage is theirs."""
    rows = gateway.ledger(key_id, expect=len(run.sent))
    assert len(rows) == len(run.sent), rows
    for row in rows:
        assert row["dialect"] == "openai-responses", row
        assert (row["model"], row["provider"]) == (model, model.split("/")[0]), row
        assert row["status"] == 200 and not row["estimated"], row
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0, row
    # What Codex says the turn used is the sum of what the ledger charged.
    (usage,) = [e["usage"] for e in run.events if e["type"] == "turn.completed"]
    assert usage["input_tokens"] == sum(r["prompt_tokens"] for r in rows), (usage, rows)
    assert usage["output_tokens"] == sum(r["completion_tokens"] for r in rows), (usage, rows)
    # The whole ledger: each request so far, once, on the key that made it.
    by_key = {f"Bearer {key}": kid for kid, key in gateway.keys.items()}
    made = [by_key[s.headers["authorization"]] for s in gateway.proxy.sent]
    assert [r["key_id"] for r in gateway.ledger_rows()] == made
    return rows


def _renamed(event: dict[str, Any], model: str) -> dict[str, Any]:
    if "response" in event:
        return {**event, "response": {**event["response"], "model": model}}
    return event


def _assert_passed_through(gateway: Gateway, run: Run, before: int, answered: int) -> None:
    """Codex's bodies reached the fake as sent but for the model, its events came back."""
    fake = gateway.openai
    assert len(fake.requests) == before + len(run.sent)
    for n, sent in enumerate(run.sent):
        assert fake.requests[before + n] == {**sent.json(), "model": GPT_UPSTREAM}
        headers = fake.request_headers[before + n]
        assert headers["authorization"] == f"Bearer {FAKE_RESPONSES_KEY}"
        assert sent.headers["authorization"].split()[1] not in json.dumps(headers)
        assert sent.status == 200 and IGNORED_TOOLS not in sent.answer_headers
        assert [data for _, data in sent.events()] == [
            _renamed(event, GPT) for event in fake._event_list(fake.answers[answered + n])
        ]


# -- pass-through to the Responses fake ---------------------------------------------


def test_codex_text_turn_through_the_pass_through(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("codex-pass-through")
    fake = gateway.openai
    before, answered = len(fake.requests), len(fake.answers)
    prompt = "Reply with the word pineapple"
    run = run_codex(gateway, key, GPT, prompt)
    # The fake echoes the last user message: Codex's prompt, printed as its answer.
    assert run.answer == prompt, run.explain()
    assert len(run.sent) == 1
    _assert_codex_request(run.sent[0].json(), prompt)
    _assert_passed_through(gateway, run, before, answered)
    # A reasoning model answers with a reasoning item first; Codex shows its summary.
    assert [i["text"] for i in run.items("reasoning")] == [THOUGHT]
    _assert_charged(gateway, key_id, run, f"openai/{GPT}")


def test_codex_shell_tool_round_trip_through_the_pass_through(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("codex-pass-through-tools")
    fake = gateway.openai
    before, answered, verified = len(fake.requests), len(fake.answers), fake.verified_reasoning
    fake.tool_names = ["exec_command"]
    fake.tool_arguments = json.dumps({"cmd": SHELL_COMMAND})
    try:
        run = run_codex(gateway, key, GPT, "Run the command", *RUN_COMMANDS)
    finally:
        fake.tool_names, fake.tool_arguments = [], None
    assert run.events, run.explain()
    # The fake called exec_command; Codex ran it in the scratch folder.
    assert (run.work / "out.txt").read_text() == "hi\n"
    (command,) = run.items("command_execution")
    assert SHELL_COMMAND in command["command"] and command["exit_code"] == 0, command
    # Then it sent the call, its reasoning and the output back (stateless: store false).
    assert len(run.sent) == 2
    first, second = (s.json() for s in run.sent)
    _assert_codex_request(first, "Run the command")
    reasoning, call = fake.answers[answered]["output"]
    assert (call["type"], call["name"]) == ("function_call", "exec_command")
    assert second["input"][: len(first["input"])] == first["input"]
    returned, called, output = second["input"][len(first["input"]) :]
    assert (returned["id"], returned["encrypted_content"]) == (
        reasoning["id"],
        reasoning["encrypted_content"],
    )
    assert (called["call_id"], called["name"], called["arguments"]) == (
        call["call_id"],
        "exec_command",
        call["arguments"],
    )
    assert output["type"] == "function_call_output" and output["call_id"] == call["call_id"]
    assert isinstance(output["output"], str) and "exited with code 0" in output["output"]
    # The encrypted reasoning went out and came back through the gateway unchanged.
    assert fake.verified_reasoning == verified + 1
    _assert_passed_through(gateway, run, before, answered)
    assert run.answer == f"The tool answered: {output['output']}"
    _assert_charged(gateway, key_id, run, f"openai/{GPT}")


# -- translated to the Anthropic fake -------------------------------------------------


def _assert_translated(gateway: Gateway, run: Run, before: int) -> list[dict[str, Any]]:
    """Each Codex request became one Messages request, its stream a Responses stream."""
    fake = gateway.anthropic
    bodies = fake.requests[before:]
    assert len(bodies) == len(run.sent)
    for sent, body, headers in zip(run.sent, bodies, fake.request_headers[before:], strict=True):
        codex = sent.json()
        assert body["model"] == CLAUDE_UPSTREAM and body["stream"] is True
        assert headers["x-api-key"] == FAKE_API_KEY
        assert sent.headers["authorization"].split()[1] not in json.dumps(headers)
        # Codex's developer messages are the system prompt (a block each, its parts
        # joined); its function tools, tools; its web_search becomes Anthropic's own
        # when it asks for live access (full-access runs do), and is left out, and
        # named, when it asks for none (`external_web_access: false`), which no
        # backend search promises; the namespace has no equivalent: left out, named.
        developer = [
            "".join(part["text"] for part in item["content"])
            for item in codex["input"]
            if item.get("role") == "developer"
        ]
        assert [block["text"] for block in body["system"]] == developer
        functions = [name for kind, name in _tools(codex) if kind == "function"]
        searches = [t for t in codex["tools"] if t.get("type") == "web_search"]
        live = any(t.get("external_web_access") is not False for t in searches)
        custom = [t for t in body["tools"] if "input_schema" in t]
        assert [t["name"] for t in custom] == functions
        server = [t for t in body["tools"] if "input_schema" not in t]
        assert [t["name"] for t in server] == (["web_search"] if live else [])
        left_out = "multi_agent_v1,web_search" if searches and not live else "multi_agent_v1"
        assert sent.answer_headers[IGNORED_TOOLS] == left_out
        names = [event for event, _ in sent.events()]
        assert names[:2] == ["response.created", "response.in_progress"], names
        assert names[-1] == "response.completed", names
        models = {data["response"]["model"] for _, data in sent.events() if "response" in data}
        assert models == {CLAUDE}, models
    return bodies


def test_codex_text_turn_translated_to_anthropic(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("codex-anthropic")
    before = len(gateway.anthropic.requests)
    prompt = "Reply with the word mango"
    run = run_codex(gateway, key, CLAUDE, prompt)
    # The fake echoes the last user turn: Codex's environment context, then the prompt.
    assert run.answer.endswith(prompt), run.explain()
    assert len(run.sent) == 1
    _assert_codex_request(run.sent[0].json(), prompt)
    (body,) = _assert_translated(gateway, run, before)
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["messages"][0]["content"][-1] == {"type": "text", "text": prompt}
    _assert_charged(gateway, key_id, run, f"anthropic/{CLAUDE}")


def test_codex_shell_tool_round_trip_translated_to_anthropic(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("codex-anthropic-tools")
    fake = gateway.anthropic
    before, answered = len(fake.requests), len(fake.answers)
    fake.tool_names = ["exec_command"]
    fake.tool_input = {"cmd": SHELL_COMMAND}
    try:
        run = run_codex(gateway, key, CLAUDE, "Run the command", *RUN_COMMANDS)
    finally:
        fake.tool_names, fake.tool_input = [], None
    assert run.events, run.explain()
    assert (run.work / "out.txt").read_text() == "hi\n"
    (command,) = run.items("command_execution")
    assert SHELL_COMMAND in command["command"] and command["exit_code"] == 0, command
    # The fake's tool_use reached Codex as a function_call; its output came back to the
    # fake as a tool_result for that tool_use.
    assert len(run.sent) == 2
    first, second = _assert_translated(gateway, run, before)
    _assert_codex_request(run.sent[0].json(), "Run the command")
    said, call = fake.answers[answered]["content"]
    assert call["type"] == "tool_use" and call["name"] == "exec_command"
    assert call["input"] == {"cmd": SHELL_COMMAND}
    codex_call = next(i for i in run.sent[1].json()["input"] if i["type"] == "function_call")
    assert (codex_call["call_id"], codex_call["name"]) == (call["id"], "exec_command")
    assert json.loads(codex_call["arguments"]) == {"cmd": SHELL_COMMAND}
    assert second["messages"][:1] == first["messages"]
    assistant, results = second["messages"][1:]
    assert assistant == {"role": "assistant", "content": [said, call]}
    (result,) = results["content"]
    assert (result["type"], result["tool_use_id"]) == ("tool_result", call["id"])
    assert "exited with code 0" in json.dumps(result["content"])
    assert run.answer.startswith("Tool said: ") and "exited with code 0" in run.answer
    # The fake's opening text is an agent message of its own.
    assert run.items("agent_message")[0]["text"] == said["text"]
    _assert_charged(gateway, key_id, run, f"anthropic/{CLAUDE}")


# -- translated to the Gemini fake ----------------------------------------------------

# Codex without its web_search tool, so that the request is the lean one.
NO_WEB_SEARCH = ("-c", 'web_search="disabled"')


def _assert_translated_to_gemini(gateway: Gateway, run: Run, before: int) -> list[dict[str, Any]]:
    """Each Codex request became one streamed generateContent call the strict fake took."""
    fake = gateway.gemini
    got = fake.requests[before:]
    assert len(got) == len(run.sent)
    bodies = []
    for sent, request in zip(run.sent, got, strict=True):
        codex = sent.json()
        assert request.path == f"/v1beta/models/{GEMINI}:streamGenerateContent"
        assert request.query == {"alt": "sse"}
        assert request.headers["x-goog-api-key"] == FAKE_GEMINI_KEY
        assert sent.headers["authorization"].split()[1] not in json.dumps(request.headers)
        assert sent.status == 200, sent.answer
        body = fake.validate(request.body, GEMINI)
        bodies.append(body)
        # Codex's developer messages are the system instruction (joined); its user
        # messages the first user turn's parts; its function tools, declarations; the
        # namespace is left out, and named.
        developer = [
            "".join(part["text"] for part in item["content"])
            for item in codex["input"]
            if item.get("role") == "developer"
        ]
        assert body["systemInstruction"] == {"parts": [{"text": "\n\n".join(developer)}]}
        users = [
            part["text"]
            for item in codex["input"]
            if item.get("role") == "user"
            for part in item["content"]
        ]
        assert body["contents"][0] == {"role": "user", "parts": [{"text": t} for t in users]}
        functions = [name for kind, name in _tools(codex) if kind == "function"]
        declared = [d["name"] for t in body["tools"] for d in t.get("functionDeclarations", [])]
        assert declared == functions
        assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
        searched = ("web_search", None) in _tools(codex)
        left_out = "multi_agent_v1,web_search" if searched else "multi_agent_v1"
        assert sent.answer_headers[IGNORED_TOOLS] == left_out
        names = [event for event, _ in sent.events()]
        assert names[:2] == ["response.created", "response.in_progress"], names
        assert names[-1] == "response.completed", names
        models = {data["response"]["model"] for _, data in sent.events() if "response" in data}
        assert models == {GEMINI}, models
    return bodies


def test_codex_text_turn_translated_to_gemini(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("codex-gemini")
    before = len(gateway.gemini.requests)
    prompt = "Reply with the word papaya"
    run = run_codex(gateway, key, GEMINI, prompt)
    # The fake echoes the last user turn: Codex's environment context, then the prompt.
    assert run.answer.endswith(prompt), run.explain()
    assert len(run.sent) == 1
    _assert_codex_request(run.sent[0].json(), prompt)
    (body,) = _assert_translated_to_gemini(gateway, run, before)
    assert [c["role"] for c in body["contents"]] == ["user"]
    assert body["contents"][0]["parts"][-1] == {"text": prompt}
    _assert_charged(gateway, key_id, run, f"google/{GEMINI}")


def test_codex_shell_tool_round_trip_translated_to_gemini(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("codex-gemini-tools")
    fake = gateway.gemini
    before = len(fake.requests)
    fake.tool_names = ["exec_command"]
    fake.tool_args = {"cmd": SHELL_COMMAND}
    try:
        run = run_codex(gateway, key, GEMINI, "Run the command", *NO_WEB_SEARCH, *RUN_COMMANDS)
    finally:
        fake.tool_names, fake.tool_args = [], None
    assert run.events, run.explain()
    assert (run.work / "out.txt").read_text() == "hi\n"
    (command,) = run.items("command_execution")
    assert SHELL_COMMAND in command["command"] and command["exit_code"] == 0, command
    # The fake's functionCall reached Codex as a function_call; its output came back to
    # the fake as the functionResponse answering that call.
    assert len(run.sent) == 2
    first, second = _assert_translated_to_gemini(gateway, run, before)
    _assert_codex_request(run.sent[0].json(), "Run the command", web_search=False)
    assert all(list(t) == ["functionDeclarations"] for t in first["tools"] + second["tools"])
    codex_call, codex_output = (
        i for i in run.sent[1].json()["input"] if i["type"].startswith("function_call")
    )
    assert codex_call["name"] == "exec_command"
    assert json.loads(codex_call["arguments"]) == {"cmd": SHELL_COMMAND}
    assert codex_output["call_id"] == codex_call["call_id"]
    assert second["contents"][:1] == first["contents"]
    called, answered = second["contents"][1:]
    assert called == {
        "role": "model",
        "parts": [{"functionCall": {"name": "exec_command", "args": {"cmd": SHELL_COMMAND}}}],
    }
    (response,) = answered["parts"]
    assert answered["role"] == "user" and response["functionResponse"]["name"] == "exec_command"
    assert response["functionResponse"]["response"] == {"content": codex_output["output"]}
    assert "exited with code 0" in codex_output["output"]
    # The fake reports the function's response, as the turn's answer.
    assert run.answer.startswith("exec_command returned ") and "exited with code 0" in run.answer
    _assert_charged(gateway, key_id, run, f"google/{GEMINI}")
