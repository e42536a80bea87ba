"""A fake OpenAI and Anthropic upstream that answers in microseconds, so a gateway's cost shows.

Raw asyncio (uvloop when installed) with httptools when installed, else a small
keep-alive HTTP/1.1 parser of its own. It answers `POST .../chat/completions`:

- non-streamed: one fixed small `chat.completion` with `usage`;
- `"stream": true`: N `chat.completion.chunk` events, a finish chunk, a usage
  chunk and `data: [DONE]`, sent as chunked transfer encoding;

and, like Anthropic, `POST .../v1/messages`:

- non-streamed: one fixed small `message` with `usage`;
- `"stream": true`: Anthropic's events (`event:` and `data:` lines):
  `message_start`, `content_block_start`, `ping`, N `content_block_delta`
  (`text_delta`), `content_block_stop`, `message_delta` (stop reason, output
  tokens) and `message_stop`; the three opening events go with the first delta;

and `POST .../v1/messages/count_tokens` with `{"input_tokens": 9}`.

The model name (or a header, for clients that can set one) shapes the stream:
`...-c200` or `x-fake-chunks: 200` sends 200 content chunks (default 20);
`...-f30` / `x-fake-first-ms: 30` waits 30 ms before the first chunk;
`...-i5` / `x-fake-interval-ms: 5` waits 5 ms between chunks. Any other path
answers 404. Run: `python benchmarks/fake_upstream.py --port 9100`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import time
from typing import Any

try:  # the bench extra brings both; the fallbacks keep the harness usable without
    import httptools
except ImportError:  # pragma: no cover - exercised only without httptools
    httptools = None

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

DEFAULT_CHUNKS = 20
_SHAPE = re.compile(r"-(c|f|i)(\d+)")

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    },
    separators=(",", ":"),
).encode()

_JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_COMPLETION_RESPONSE = _JSON_HEAD % len(_COMPLETION) + _COMPLETION
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
_NOT_FOUND_BODY = b'{"error":{"message":"not found","type":"invalid_request_error"}}'
_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    % len(_NOT_FOUND_BODY)
    + _NOT_FOUND_BODY
)


def _event(obj: dict[str, Any]) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


_FIRST_EVENT = _event(_chunk({"role": "assistant", "content": "tok "}))
_TOKEN_EVENT = _event(_chunk({"content": "tok "}))
_FINISH_EVENT = _event(_chunk({}, "stop"))
_END_CHUNKS = b"0\r\n\r\n"
_DONE_EVENT = b"%x\r\n%s\r\n" % (len(b"data: [DONE]\n\n"), b"data: [DONE]\n\n") + _END_CHUNKS
_STREAM_CACHE: dict[tuple[str, int], bytes] = {}


def _usage_event(chunks: int) -> bytes:
    usage = {"prompt_tokens": 9, "completion_tokens": chunks, "total_tokens": 9 + chunks}
    return _event({**_chunk({}), "choices": [], "usage": usage})


# -- Anthropic Messages ------------------------------------------------------
_MESSAGE = json.dumps(
    {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "claude-bench",
        "content": [{"type": "text", "text": "Hello from the fake upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 7},
    },
    separators=(",", ":"),
).encode()
_MESSAGE_RESPONSE = _JSON_HEAD % len(_MESSAGE) + _MESSAGE
_COUNT = b'{"input_tokens":9}'
_COUNT_RESPONSE = _JSON_HEAD % len(_COUNT) + _COUNT
_MESSAGES_SSE_HEAD = _SSE_HEAD.replace(b"text/event-stream", b"text/event-stream; charset=utf-8")


def _named_event(obj: dict[str, Any]) -> bytes:
    """One Anthropic event, `event:` then `data:`, as one HTTP chunk."""
    data = b"event: %s\ndata: %s\n\n" % (
        obj["type"].encode(),
        json.dumps(obj, separators=(",", ":")).encode(),
    )
    return b"%x\r\n%s\r\n" % (len(data), data)


_MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "claude-bench",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 1},
    },
}
_MESSAGES_OPENING = (
    _named_event(_MESSAGE_START)
    + _named_event(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    )
    + _named_event({"type": "ping"})
)
_MESSAGES_TOKEN = _named_event(
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "tok "}}
)
_MESSAGES_BLOCK_STOP = _named_event({"type": "content_block_stop", "index": 0})
_MESSAGES_STOP = _named_event({"type": "message_stop"}) + _END_CHUNKS


def _messages_delta(chunks: int) -> bytes:
    return _named_event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": chunks},
        }
    )


class _Format:
    """What a stream of one API is made of: its head, first and next events, its end."""

    def __init__(self, name: str, head: bytes, first: bytes, token: bytes) -> None:
        self.name, self.head, self.first, self.token = name, head, first, token

    def tail(self, chunks: int) -> bytes:
        """What follows the content chunks (for Messages, the opening too if none was sent)."""
        if self.name == "messages":
            opening = b"" if chunks else _MESSAGES_OPENING
            return opening + _MESSAGES_BLOCK_STOP + _messages_delta(chunks) + _MESSAGES_STOP
        return _FINISH_EVENT + _usage_event(chunks) + _DONE_EVENT


CHAT_FORMAT = _Format("chat", _SSE_HEAD, _FIRST_EVENT, _TOKEN_EVENT)
MESSAGES_FORMAT = _Format(
    "messages", _MESSAGES_SSE_HEAD, _MESSAGES_OPENING + _MESSAGES_TOKEN, _MESSAGES_TOKEN
)


def _whole_stream(chunks: int, fmt: _Format = CHAT_FORMAT) -> bytes:
    """An unpaced stream is one write: the fake must never be the slow side."""
    cached = _STREAM_CACHE.get((fmt.name, chunks))
    if cached is None:
        body = [fmt.first] + [fmt.token] * (chunks - 1) if chunks else []
        cached = fmt.head + b"".join(body) + fmt.tail(chunks)
        if len(_STREAM_CACHE) < 64:
            _STREAM_CACHE[(fmt.name, chunks)] = cached
    return cached


def _shape(model: str, headers: dict[bytes, bytes]) -> tuple[int, float, float]:
    chunks, first_ms, interval_ms = DEFAULT_CHUNKS, 0.0, 0.0
    for letter, number in _SHAPE.findall(model):
        if letter == "c":
            chunks = int(number)
        elif letter == "f":
            first_ms = float(number)
        else:
            interval_ms = float(number)
    if b"x-fake-chunks" in headers:
        chunks = int(headers[b"x-fake-chunks"])
    if b"x-fake-first-ms" in headers:
        first_ms = float(headers[b"x-fake-first-ms"])
    if b"x-fake-interval-ms" in headers:
        interval_ms = float(headers[b"x-fake-interval-ms"])
    return chunks, first_ms, interval_ms


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path")

    def __init__(self) -> None:
        self.method = b""
        self.path = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.keep_alive = True


class UpstreamProtocol(asyncio.Protocol):
    """One connection: parse requests, answer each in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.current = _Request()
        self.pending: list[_Request] = []
        self.busy = False  # a paced stream is being written
        if httptools is not None:
            self.parser: Any = httptools.HttpRequestParser(self)
        else:
            self.buffer = b""

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if httptools is not None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self._close()
        else:
            self.buffer += data
            self._hand_parse()

    # -- httptools callbacks -----------------------------------------------
    def on_message_begin(self) -> None:
        self.current = _Request()

    def on_url(self, url: bytes) -> None:
        self.current.path += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.current.body.append(body)

    def on_message_complete(self) -> None:
        self.current.method = self.parser.get_method()
        self.current.keep_alive = self.parser.should_keep_alive()
        self._handle(self.current)

    # -- fallback parser: Content-Length bodies, keep-alive, pipelining ------
    def _hand_parse(self) -> None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].split(b"\r\n")
            request = _Request()
            try:
                request.method, request.path, version = head[0].split(b" ", 2)
            except ValueError:
                self._close()
                return
            for line in head[1:]:
                name, _, value = line.partition(b":")
                request.headers[name.strip().lower()] = value.strip()
            length = int(request.headers.get(b"content-length", b"0"))
            if len(self.buffer) < end + 4 + length:
                return
            request.body = [self.buffer[end + 4 : end + 4 + length]]
            self.buffer = self.buffer[end + 4 + length :]
            connection = request.headers.get(b"connection", b"").lower()
            request.keep_alive = connection != b"close" and (
                version == b"HTTP/1.1" or connection == b"keep-alive"
            )
            self._handle(request)

    # -- answering ---------------------------------------------------------
    def _handle(self, request: _Request) -> None:
        if self.busy:
            self.pending.append(request)
            return
        self._answer(request)

    def _answer(self, request: _Request) -> None:
        transport = self.transport
        if transport is None:
            return
        path = request.path.split(b"?")[0]
        post = request.method == b"POST"
        if post and path.endswith(b"/chat/completions"):
            fmt, whole = CHAT_FORMAT, _COMPLETION_RESPONSE
        elif post and path.endswith(b"/v1/messages"):
            fmt, whole = MESSAGES_FORMAT, _MESSAGE_RESPONSE
        else:
            count = post and path.endswith(b"/v1/messages/count_tokens")
            transport.write(_COUNT_RESPONSE if count else _NOT_FOUND)
            self._after(request)
            return
        raw = b"".join(request.body)
        # Cheap checks first: most benchmark bodies are not streams.
        stream = b'"stream"' in raw and _wants_stream(raw)
        if not stream:
            transport.write(whole)
            self._after(request)
            return
        model = _model_of(raw)
        chunks, first_ms, interval_ms = _shape(model, request.headers)
        if first_ms <= 0 and interval_ms <= 0:
            transport.write(_whole_stream(chunks, fmt))
            self._after(request)
            return
        self.busy = True
        asyncio.get_running_loop().create_task(
            self._paced(request, chunks, first_ms / 1000, interval_ms / 1000, fmt)
        )

    async def _paced(
        self,
        request: _Request,
        chunks: int,
        first_s: float,
        interval_s: float,
        fmt: _Format = CHAT_FORMAT,
    ) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(fmt.head)
        if first_s:
            await asyncio.sleep(first_s)
        for i in range(chunks):
            if self.transport is None:
                return
            self.transport.write(fmt.first if i == 0 else fmt.token)
            if interval_s and i < chunks - 1:
                await asyncio.sleep(interval_s)
        if self.transport is None:
            return
        self.transport.write(fmt.tail(chunks))
        self.busy = False
        self._after(request)
        while self.pending and not self.busy and self.transport is not None:
            self._answer(self.pending.pop(0))

    def _after(self, request: _Request) -> None:
        if not request.keep_alive:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def _wants_stream(raw: bytes) -> bool:
    try:
        return bool(json.loads(raw).get("stream"))
    except (ValueError, AttributeError):
        return False


def _model_of(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("model", ""))
    except (ValueError, AttributeError):
        return ""


async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled or signalled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        UpstreamProtocol, host, port, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not on the main thread (run in-process by a test): no signal handlers.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    print(
        f"fake upstream on http://{host}:{port}/v1 "
        f"(parser: {'httptools' if httptools else 'builtin'}, "
        f"loop: {'uvloop' if uvloop else 'asyncio'})",
        flush=True,
    )
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--duration", type=float, default=0, help="stop after N s (0: never)")
    args = parser.parse_args(argv)
    if uvloop is not None:
        uvloop.install()

    async def run() -> None:
        task = asyncio.create_task(serve(args.host, args.port))
        if args.duration > 0:
            await asyncio.sleep(args.duration)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(run())
    print(f"fake upstream stopped after {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
