"""Fault-test plumbing: fake upstreams on real sockets, a gateway over them, a secret witness.

The gateway runs in-process (httpx2's ASGITransport); its upstreams are fakes
served by uvicorn on 127.0.0.1, so timeouts, refused connections and streams
cut mid-way are real socket events. Every response body a test sees and
every log line (all loggers, DEBUG) go to a `Witness`, which fails the test
if any gateway key or upstream key shows up in them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import pytest
from starlette.requests import Request
from starlette.responses import Response

from axione_asgi import AxioneConfig
from axione_asgi.quota import UsageRecord
from tests.fakes.openai_fake import FAKE_OPENAI_KEY, FakeOpenAI
from tests.helpers import closed_port, serve_in_thread
from tests.quota_app import Gateway, gateway

__all__ = [
    "UPSTREAM_KEY",
    "FlakyOpenAI",
    "Rig",
    "Upstreams",
    "Witness",
    "fault_config",
    "provider_table",
    "rig",
    "sse_events",
    "upstreams",
    "witness",
]

UPSTREAM_KEY = FAKE_OPENAI_KEY
USER = [{"role": "user", "content": "Say hello to the fault tests"}]


class FlakyOpenAI(FakeOpenAI):
    """FakeOpenAI that fails only its first `fail_times` chat calls, and times every call."""

    def reset(self) -> None:
        super().reset()
        self.fail_times: int | None = None  # with `fail_with`: fail the first N calls only
        self.fail_with: int = 500
        self.calls: list[float] = []

    async def _chat(self, request: Request) -> Response:
        self.calls.append(time.monotonic())
        if self.fail_times is not None:
            self.fail_status = self.fail_with if len(self.calls) <= self.fail_times else None
        return await super()._chat(request)


@dataclass
class Upstreams:
    """Two fake OpenAI upstreams on real sockets, and a port nothing listens on."""

    primary: FlakyOpenAI
    backup: FlakyOpenAI
    primary_url: str
    backup_url: str
    refused_url: str

    def reset(self) -> None:
        self.primary.reset()
        self.backup.reset()


@pytest.fixture(scope="module")
def served_upstreams() -> Iterator[Upstreams]:
    primary, backup = FlakyOpenAI(), FlakyOpenAI()
    with serve_in_thread(primary) as purl, serve_in_thread(backup) as burl:
        yield Upstreams(
            primary, backup, f"{purl}/v1", f"{burl}/v1", f"http://127.0.0.1:{closed_port()}/v1"
        )


@pytest.fixture
def upstreams(served_upstreams: Upstreams) -> Iterator[Upstreams]:
    served_upstreams.reset()
    yield served_upstreams
    served_upstreams.reset()


def provider_table(
    base_url: str, models: Mapping[str, str], *, timeout_s: float = 2.0, **extra: Any
) -> dict[str, Any]:
    """An `openai`-kind provider table for a fake at `base_url`."""
    return {
        "kind": "openai",
        "base_url": base_url,
        "api_key": UPSTREAM_KEY,
        "timeout_s": timeout_s,
        "connect_timeout_s": 1.0,
        "models": dict(models),
        **extra,
    }


def fault_config(
    providers: Mapping[str, Mapping[str, Any]],
    *,
    max_retries: int = 2,
    backoff_s: float = 0.01,
    deadline_s: float = 5.0,
    fallbacks: Mapping[str, list[str]] | None = None,
    **extra: Any,
) -> AxioneConfig:
    """A config over `providers` with memory stores and quick retries."""
    return AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", "counters": "memory://"},
            "providers": {name: dict(table) for name, table in providers.items()},
            "retry": {
                "max_retries": max_retries,
                "backoff_s": backoff_s,
                "backoff_max_s": 0.05,
                "deadline_s": deadline_s,
            },
            "fallbacks": dict(fallbacks or {}),
            "key_cache_ttl_s": 60,
            **extra,
        }
    )


def sse_events(text: str) -> list[Any]:
    """The decoded `data:` payloads of an SSE body (`[DONE]` kept as the string)."""
    import json

    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


class Witness:
    """Everything a client or an operator could read: response bodies and log lines."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.bodies: list[str] = []
        self.secrets: set[str] = {UPSTREAM_KEY}

    def saw(self, text: str) -> None:
        self.bodies.append(text)

    def logs(self) -> list[str]:
        out = []
        for record in self.caplog.records:
            out.append(record.getMessage())
            if record.exc_info:
                out.append(logging.Formatter().formatException(record.exc_info))
        return out

    def leaks(self, extra: Iterable[str] = ()) -> list[str]:
        """Every text that holds a secret (empty when nothing leaked)."""
        texts = [*self.bodies, *self.logs(), self.caplog.text, *extra]
        return [t for t in texts if any(s in t for s in self.secrets)]


@pytest.fixture
def witness(caplog: pytest.LogCaptureFixture) -> Iterator[Witness]:
    caplog.set_level(logging.DEBUG)  # the root logger: every library's DEBUG lines too
    seen = Witness(caplog)
    yield seen
    assert not seen.leaks(), "a key leaked into a response body or a log line"


@dataclass
class Rig:
    """A started gateway over the fakes, one key, and the witness of what it said."""

    gw: Gateway
    witness: Witness
    responses: list[httpx2.Response] = field(default_factory=list)

    async def chat(self, **fields: Any) -> httpx2.Response:
        body = {"model": "primary/gpt-4o", "messages": USER, **fields}
        response = await self.gw.client.post(
            "/chat/completions", json=body, headers=self.gw.auth, timeout=30
        )
        self.witness.saw(response.text)
        self.witness.saw(str(response.headers))
        return response

    async def usage(self) -> dict[str, Any]:
        report = await self.gw.usage()
        self.witness.saw(str(report))
        return report

    async def ledger(self, count: int = 1, timeout: float = 3.0) -> list[UsageRecord]:
        """This key's ledger records, once `count` of them are written."""
        quota = self.gw.app.runtime.quota
        deadline = time.monotonic() + timeout
        while True:
            records = quota.ledger.records(key_id=self.gw.key_id)
            if len(records) >= count or time.monotonic() > deadline:
                self.witness.saw(repr(records))
                return records
            await anyio.sleep(0.02)


@contextlib.asynccontextmanager
async def rig(config: AxioneConfig, witness: Witness) -> AsyncIterator[Rig]:
    """A started gateway for `config`; stops it (flushing the ledger) on exit."""
    async with gateway(config) as gw:
        witness.secrets.add(gw.secret)
        yield Rig(gw, witness)
