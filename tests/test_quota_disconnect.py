"""A client that goes away mid-stream is charged what was produced, and the reservation is freed."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import httpx
import pytest

from axione_asgi.exchange.estimate import estimate_prompt_tokens
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    new_id,
)
from axione_asgi.quota import UsageRecord
from tests.helpers import serve_in_thread
from tests.quota_app import Gateway, gateway, quota_config

pytestmark = pytest.mark.anyio

PIECE = "abcd"  # 4 characters: one estimated token each
PRODUCED = 5
BODY = {
    "model": "slow/stall",
    "stream": True,
    "max_tokens": 500,
    "messages": [{"role": "user", "content": "Tell me a long story about quotas"}],
}


class StallingProvider:
    """Streams `PRODUCED` pieces, then stalls as a slow upstream would; never reports usage."""

    def models(self) -> Sequence[str]:
        return ["stall"]

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        raise NotImplementedError

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        cid = new_id()
        yield ChatCompletionChunk(
            id=cid, choices=[ChunkChoice(delta=Delta(role="assistant", content=""))]
        )
        for _ in range(PRODUCED):
            yield ChatCompletionChunk(id=cid, choices=[ChunkChoice(delta=Delta(content=PIECE))])
        await anyio.sleep(3600)

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def expected_charge() -> tuple[int, int]:
    prompt = estimate_prompt_tokens(ChatCompletionRequest.model_validate(BODY))
    return prompt, math.ceil(PRODUCED * len(PIECE) / 4)


def scope_for(gw: Gateway) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/chat/completions",
        "raw_path": b"/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {gw.secret}".encode()),
            (b"content-type", b"application/json"),
        ],
        "server": ("t", 80),
        "client": ("127.0.0.1", 1234),
    }


async def stream_until_produced(gw: Gateway, *, by_cancelling: bool) -> list[dict[str, Any]]:
    """Call the app directly; leave once every produced piece arrived."""
    body = json.dumps(BODY).encode()
    sent: list[dict[str, Any]] = []
    gone = anyio.Event()
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        if text.count(f'"content":"{PIECE}"'.encode()) == PRODUCED:
            gone.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(gw.app, scope_for(gw), receive, send)
            await gone.wait()
            if by_cancelling:
                tg.cancel_scope.cancel()
    return sent


async def ledger_record(gw: Gateway) -> UsageRecord:
    quota = gw.app.runtime.quota
    await quota.writer.stop()
    (record,) = quota.ledger.records(key_id=gw.key_id)
    return record


@pytest.mark.parametrize("by_cancelling", [False, True], ids=["http.disconnect", "cancelled"])
async def test_client_disconnect_mid_stream_is_charged_what_was_produced(
    by_cancelling: bool,
) -> None:
    config = quota_config()
    async with gateway(config, providers={"slow": StallingProvider()}) as gw:
        sent = await stream_until_produced(gw, by_cancelling=by_cancelling)
        assert sent[0]["status"] == 200
        prompt, completion = expected_charge()
        usage = await gw.usage()
        assert usage["used"] == {"requests": 1, "tokens": prompt + completion}
        record = await ledger_record(gw)
        assert (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
        assert record.estimated
        assert record.status == 499
        assert record.model == "slow/stall"


async def test_client_closing_a_real_connection_mid_stream_is_charged_what_was_produced() -> None:
    async with gateway(quota_config(), providers={"slow": StallingProvider()}) as gw:
        quota = gw.app.runtime.quota
        key = await gw.store.get(gw.key_id)
        assert key is not None
        prompt, completion = expected_charge()
        with serve_in_thread(gw.app) as base:
            async with (
                httpx.AsyncClient(base_url=base, timeout=10) as client,
                client.stream("POST", "/chat/completions", json=BODY, headers=gw.auth) as r,
            ):
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.count(f'"content":"{PIECE}"')
                    if seen == PRODUCED:
                        break
            # Leaving the block closed the connection; the server settles on its own time.
            deadline = time.monotonic() + 10
            while (await quota.usage(key))["used"]["tokens"] != prompt + completion:
                assert time.monotonic() < deadline, await quota.usage(key)
                await anyio.sleep(0.05)
        record = await ledger_record(gw)
        assert (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
        assert record.status == 499
