"""A slow OpenAI-format upstream that notices, and records, when its caller goes away.

A raw ASGI app (served on 127.0.0.1 with uvicorn: disconnects need real
sockets). `POST .../chat/completions` answers after `delay_s`; with
`"stream": true` it sends `chunks` content chunks `interval_s` apart, a
usage chunk and `data: [DONE]`. While it answers it listens for
`http.disconnect`: each call leaves a `Call` saying when it began, whether it
finished, and when it saw its caller hang up. `fail_every` makes every Nth
call answer 500 (the soak's failing share); the key is checked like OpenAI's.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

__all__ = ["Call", "SlowOpenAI"]

PIECE = "tok "  # one token for the fake, one estimated token (4 characters) for the gateway


@dataclass
class Call:
    """One upstream call as the fake lived it."""

    stream: bool
    began: float = field(default_factory=time.monotonic)
    sent_chunks: int = 0
    finished: bool = False
    disconnected_at: float | None = None


class SlowOpenAI:
    """The slow upstream; an ASGI app. Knobs are plain attributes."""

    def __init__(
        self,
        *,
        api_key: str,
        delay_s: float = 0.0,
        chunks: int = 5,
        interval_s: float = 0.05,
        fail_every: int = 0,
    ) -> None:
        self.api_key = api_key
        self.delay_s = delay_s
        self.chunks = chunks
        self.interval_s = interval_s
        self.fail_every = fail_every
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = dict(scope["headers"])
        if headers.get(b"authorization", b"") != f"Bearer {self.api_key}".encode():
            await _json(send, 401, {"error": {"message": "Incorrect API key provided"}})
            return
        request: dict[str, Any] = json.loads(body or b"{}")
        call = Call(stream=bool(request.get("stream")))
        with self._lock:
            self.calls.append(call)
            number = len(self.calls)
        if self.fail_every and number % self.fail_every == 0:
            await _json(send, 500, {"error": {"message": "The server had an error"}})
            call.finished = True
            return
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                call.disconnected_at = time.monotonic()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await self._answer(call, request, send)
            call.finished = True
            tg.cancel_scope.cancel()

    async def _answer(self, call: Call, request: dict[str, Any], send: Send) -> None:
        model = request.get("model", "gpt-4o")
        await anyio.sleep(self.delay_s)
        if not call.stream:
            text = PIECE * self.chunks
            await _json(send, 200, _completion(model, text, self.chunks))
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(self.chunks):
            if i:
                await anyio.sleep(self.interval_s)
            await _event(send, _chunk(model, {"content": PIECE}))
            call.sent_chunks += 1
        await _event(send, _chunk(model, {}, "stop"))
        usage = {"prompt_tokens": 10, "completion_tokens": self.chunks}
        usage["total_tokens"] = 10 + self.chunks
        await _event(send, {**_chunk(model, {}), "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-slow",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _completion(model: str, text: str, tokens: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-slow",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens},
    }


async def _event(send: Send, data: dict[str, Any]) -> None:
    body = f"data: {json.dumps(data)}\n\n".encode()
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _json(send: Send, status: int, data: dict[str, Any]) -> None:
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
