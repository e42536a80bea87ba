"""A client that hangs up: the upstream call is cancelled at once, usage settles for what was made.

Real sockets end to end: the gateway and a slow upstream are both served by
uvicorn on 127.0.0.1, and the upstream records when it saw the gateway's
connection close.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import httpx
import pytest

from axione_asgi import create_app
from axione_asgi.app import AxioneApp
from axione_asgi.quota import UsageRecord
from axione_asgi.stores import MemoryKeyStore
from tests.fakes.slow_openai import Call, SlowOpenAI
from tests.faults import UPSTREAM_KEY, fault_config, provider_table
from tests.helpers import serve_in_thread

# How soon after the client hangs up the upstream must see its connection close.
PROMPT_S = 0.5


@dataclass
class Live:
    upstream: SlowOpenAI
    app: AxioneApp
    url: str
    secret: str
    key_id: str

    def calls(self) -> list[Call]:
        return self.upstream.calls

    def records(self) -> list[UsageRecord]:
        return self.app.runtime.quota.ledger.records(key_id=self.key_id)


@pytest.fixture
def live() -> Iterator[Live]:
    upstream = SlowOpenAI(api_key=UPSTREAM_KEY, delay_s=0, chunks=200, interval_s=0.05)
    store = MemoryKeyStore()
    record, secret = anyio.run(store.create, "disconnect")
    with serve_in_thread(upstream) as upstream_url:
        config = fault_config(
            {"slow": provider_table(f"{upstream_url}/v1", {"gpt-4o": "gpt-4o"}, timeout_s=30)}
        )
        app = create_app(config, key_store=store)
        with serve_in_thread(app, lifespan="on") as url:
            yield Live(upstream, app, url, secret, record.id)


def body(stream: bool) -> dict[str, object]:
    return {
        "model": "slow/gpt-4o",
        "stream": stream,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "a long answer please"}],
    }


def wait_for(predicate: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_stream_whose_client_hangs_up_cancels_the_upstream_stream_at_once(live: Live) -> None:
    headers = {"authorization": f"Bearer {live.secret}"}
    seen = 0
    with (
        httpx.Client(base_url=live.url) as client,
        client.stream("POST", "/chat/completions", json=body(True), headers=headers) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen == 4:
                break
    hung_up = time.monotonic()
    wait_for(lambda: live.calls() and live.calls()[0].disconnected_at is not None)
    (call,) = live.calls()
    assert call.disconnected_at is not None and call.disconnected_at - hung_up < PROMPT_S
    assert not call.finished and call.sent_chunks < 200


def test_a_stream_whose_client_hangs_up_is_charged_what_was_produced(live: Live) -> None:
    headers = {"authorization": f"Bearer {live.secret}"}
    with (
        httpx.Client(base_url=live.url) as client,
        client.stream("POST", "/chat/completions", json=body(True), headers=headers) as response,
    ):
        for seen, _ in enumerate(response.iter_lines()):
            if seen == 10:
                break
    wait_for(lambda: live.calls() and live.calls()[0].disconnected_at is not None)
    wait_for(lambda: len(live.records()) == 1)
    (record,) = live.records()
    (call,) = live.calls()
    assert record.status == 499 and record.estimated
    # One token a piece: at least what the client read, at most what the upstream sent.
    assert 3 <= record.completion_tokens <= call.sent_chunks
    assert record.prompt_tokens > 0


def test_a_waiting_client_that_hangs_up_cancels_the_upstream_call_at_once(live: Live) -> None:
    live.upstream.delay_s = 10
    headers = {"authorization": f"Bearer {live.secret}"}
    timeout = httpx.Timeout(5, read=0.3)
    with (
        httpx.Client(base_url=live.url, timeout=timeout) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post("/chat/completions", json=body(False), headers=headers)
    hung_up = time.monotonic()
    wait_for(lambda: live.calls() and live.calls()[0].disconnected_at is not None)
    (call,) = live.calls()
    assert call.disconnected_at is not None and call.disconnected_at - hung_up < PROMPT_S
    assert not call.finished


def test_a_waiting_client_that_hangs_up_is_charged_its_prompt_only(live: Live) -> None:
    live.upstream.delay_s = 10
    headers = {"authorization": f"Bearer {live.secret}"}
    timeout = httpx.Timeout(5, read=0.3)
    with (
        httpx.Client(base_url=live.url, timeout=timeout) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post("/chat/completions", json=body(False), headers=headers)
    wait_for(lambda: len(live.records()) == 1)
    (record,) = live.records()
    assert (record.status, record.completion_tokens, record.estimated) == (499, 0, True)
    usage = httpx.get(f"{live.url}/usage", headers=headers).json()
    assert usage["used"] == {"requests": 1, "tokens": record.prompt_tokens}
