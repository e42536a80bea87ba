"""The gateway's own CPU per request, in process: no server, no network, no upstream client.

Builds the app as `axione serve` would for the benchmark config (key auth,
memory quota, ledger, access log, response cache on), swaps the OpenAI and
Anthropic providers' upstream clients for ones that answer from memory, and calls the
ASGI app directly, one request after another. What is left is Axione's own
code plus Starlette and pydantic: the part of a request this project
controls. Far less noisy than the load benchmark, so it is the figure to
watch while changing the hot path (`run.py` stays the judge).

    python benchmarks/bench_app.py [--requests 20000] [--rounds 5]
    python benchmarks/bench_app.py --instructions --requests 200   # under callgrind

Prints CPU microseconds per request (the best round: interference only ever adds) for a non-streamed
chat, a 20-chunk stream, a cache hit, a `/models` listing, an Anthropic Messages
request passed through to the `anthropic` provider (`messages`, non-streamed) and
an OpenAI Responses request streamed (`responses`: `stream: true`, `store: false`),
which the `openai-compatible` provider translates into the same 20-chunk chat stream.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from axione_asgi import AxioneConfig, create_app
from axione_asgi.transports import UpstreamResponse

KEY = "sk-axione-bench-0000000000000000"

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()


MESSAGE = json.dumps(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "bench",
        "content": [{"type": "text", "text": "Hello from the fake upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 7},
    }
).encode()


def _stream_lines(chunks: int) -> list[str]:
    lines: list[str] = []
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000}
    for i in range(chunks):
        delta = {"content": f"tok{i} "} if i else {"role": "assistant", "content": "tok0 "}
        chunk = {**base, "model": "bench", "choices": [{"index": 0, "delta": delta}]}
        lines += [f"data: {json.dumps(chunk)}", ""]
    finish = {
        **base,
        "model": "bench",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    usage = {
        **base,
        "model": "bench",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks},
    }
    lines += [f"data: {json.dumps(finish)}", "", f"data: {json.dumps(usage)}", ""]
    return [*lines, "data: [DONE]", ""]


class _MemoryStream:
    status = 200
    headers: Mapping[str, str] = {"content-type": "text/event-stream"}

    def __init__(self, blocks: list[bytes]) -> None:
        self._blocks = blocks

    async def read(self) -> bytes:
        return b""

    async def chunks(self) -> AsyncIterator[bytes]:
        for block in self._blocks:
            yield block


class MemoryUpstream:
    """An `UpstreamClient` answering from memory: the upstream's cost is zero."""

    is_closed = False

    def __init__(self, chunks: int = 20, answer: bytes = COMPLETION) -> None:
        # One network read per event, as a real upstream's stream mostly arrives.
        lines = _stream_lines(chunks)
        self._blocks = [f"{data}\n\n".encode() for data in lines[::2]]
        self._answer = answer

    async def post(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        return UpstreamResponse(200, {"content-type": "application/json"}, self._answer)

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[_MemoryStream]:
        yield _MemoryStream(self._blocks)

    async def aclose(self) -> None:
        pass


def build(access_log: bool, counters: str = "memory://") -> Any:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    config = AxioneConfig.model_validate(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", "counters": counters},
            "providers": {
                "openai": {
                    "kind": "openai-compatible",
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key": "sk-unused",
                    "models": {"bench": "bench"},
                    # Responses requests to it become chat completions (as in run.py).
                    "responses": "translate",
                },
                # Messages requests to it are passed through (`forward`).
                "anthropic": {
                    "kind": "anthropic",
                    "base_url": "http://127.0.0.1:9",
                    "api_key": "sk-unused",
                    "models": {"bench": "bench"},
                },
            },
            "cache": {"enabled": True},
            "access_log": {"enabled": access_log},
            "keys": [{"name": "bench", "key_sha256": digest, "tier": 5}],
            "tiers": {"5": {"requests_per_day": 10**9, "tokens_per_day": 10**12}},
        }
    )
    return create_app(config)


def _scope(method: str, path: str, body: bytes) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {KEY}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if path.startswith("/messages"):
        headers.append((b"anthropic-version", b"2023-06-01"))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def one(app: Any, method: str, path: str, body: bytes) -> int:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope(method, path, body), receive, send)
    status: int = sent[0]["status"]
    last = sent[-2]["body"] if len(sent) > 2 else b""
    if len(sent) > 2 and not _stream_ended(path, last):
        raise SystemExit(f"{path}: the stream ended with {last[-200:]!r}")
    return status


def _stream_ended(path: str, last: bytes) -> bool:
    """Whether a stream's last body ends as it should: `[DONE]`, or for Responses
    a `response.completed` event."""
    if path == "/responses":
        block = last.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        return block.startswith(b"event: response.completed\n") and last.endswith(b"\n\n")
    return last == b"data: [DONE]\n\n"


# Streams run a tenth of the requests (a fifth under callgrind): each costs several.
STREAMED = ("stream20", "responses")


SCENARIOS = {
    "chat": (
        "POST",
        "/chat/completions",
        {"model": "openai/bench", "messages": [{"role": "user", "content": "Say hello."}]},
    ),
    "stream20": (
        "POST",
        "/chat/completions",
        {
            "model": "openai/bench",
            "messages": [{"role": "user", "content": "Say hello."}],
            "stream": True,
        },
    ),
    "cache_hit": (
        "POST",
        "/chat/completions",
        {
            "model": "openai/bench",
            "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}],
        },
    ),
    "models": ("GET", "/models", None),
    "messages": (
        "POST",
        "/messages",
        {
            "model": "anthropic/bench",
            "max_tokens": 32,
            "messages": [{"role": "user", "content": "Say hello."}],
        },
    ),
    "responses": (
        "POST",
        "/responses",
        {"model": "openai/bench", "input": "Say hello.", "stream": True, "store": False},
    ),
}


def _memory_upstreams(app: Any) -> None:
    providers = app.runtime.registry.providers
    providers["openai"]._client = MemoryUpstream()
    providers["anthropic"]._client = MemoryUpstream(answer=MESSAGE)


async def run(
    requests: int, rounds: int, access_log: bool, counters: str = "memory://"
) -> dict[str, float]:
    app = build(access_log, counters)
    figures: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    async with app.lifespan():
        _memory_upstreams(app)
        for _ in range(rounds):
            for name, (method, path, payload) in SCENARIOS.items():
                body = json.dumps(payload).encode() if payload is not None else b""
                n = requests // 10 if name in STREAMED else requests
                for _ in range(min(200, n)):  # warm-up
                    await one(app, method, path, body)
                began = time.process_time()
                for _ in range(n):
                    status = await one(app, method, path, body)
                    if status != 200:
                        raise SystemExit(f"{name}: status {status}")
                figures[name].append((time.process_time() - began) / n * 1e6)
    return {name: min(values) for name, values in figures.items()}


async def marked(name: str, requests: int) -> None:
    """One scenario between two `os.getppid()` calls: callgrind's dump marks."""
    app = build(True)
    method, path, payload = SCENARIOS[name]
    body = json.dumps(payload).encode() if payload is not None else b""
    async with app.lifespan():
        _memory_upstreams(app)
        for _ in range(50):  # warm-up
            await one(app, method, path, body)
        os.getppid()
        for _ in range(requests):
            await one(app, method, path, body)
        os.getppid()


def instructions(name: str, requests: int) -> float:
    """Instructions per request of one scenario, counted by callgrind (repeatable to ~1 %)."""
    with TemporaryDirectory() as tmp:
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--dump-before=os_getppid",
                f"--callgrind-out-file={tmp}/cg.%p",
                sys.executable,
                __file__,
                "--marked",
                name,
                "--requests",
                str(requests),
            ],
            check=True,
            capture_output=True,
        )
        # Part 2 holds what ran between the two marks.
        [part] = Path(tmp).glob("cg.*.2")
        for line in part.read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1]) / requests
    raise SystemExit("callgrind wrote no summary")


def _quiet_access_log() -> None:
    # Access lines go to a handler that drops them: their formatting is measured, not a tty.
    logger = logging.getLogger("axione.access")
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument(
        "--counters",
        default="memory://",
        help="the counters URI (redis://127.0.0.1:6379/10: what Redis adds, in process)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under callgrind instead (slow: use ~200 requests)",
    )
    parser.add_argument("--marked", choices=list(SCENARIOS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    _quiet_access_log()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.marked:
        asyncio.run(marked(args.marked, args.requests))
        return
    if args.instructions:
        for name in SCENARIOS:
            n = max(1, args.requests // 5) if name in STREAMED else args.requests
            print(f"{name:10s} {instructions(name, n) / 1000:8.1f} k instructions per request")
        return
    result = asyncio.run(run(args.requests, args.rounds, not args.no_access_log, args.counters))
    for name, micros in result.items():
        print(f"{name:10s} {micros:8.1f} µs CPU per request")


if __name__ == "__main__":
    main()
