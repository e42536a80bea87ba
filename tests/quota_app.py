"""Quota test plumbing: small configs, a movable clock, in-process clients, and an app factory.

`create()` is the factory `uvicorn --factory tests.quota_app:create` serves in
the multi-worker tests; it reads its settings from `AXIONE_QUOTA_TEST_*`
environment variables so every worker builds the same app.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import redis.asyncio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp
from axione_asgi.keys import hash_key
from axione_asgi.stores import MemoryKeyStore

REDIS_URL = "redis://127.0.0.1:6379"
# A database of its own for the quota tests; keys in it are named after a
# fresh random key id per test, so tests never see each other's counters.
REDIS_DB = 13
REDIS_WORKERS_DB = 14

# Small tiers so that limits are reached in a handful of requests.
SMALL_TIERS: dict[int, dict[str, int]] = {
    1: {"requests_per_day": 10, "tokens_per_day": 100_000},
    2: {"requests_per_day": 20, "tokens_per_day": 200_000},
    3: {"requests_per_day": 30, "tokens_per_day": 300_000},
    4: {"requests_per_day": 40, "tokens_per_day": 400_000},
    5: {"requests_per_day": 50, "tokens_per_day": 500_000},
}

CHAT = {"model": "demo/echo", "messages": [{"role": "user", "content": "hello there world"}]}


class MovableClock:
    """An injected clock: returns `now` until a test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2030, 5, 17, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    def next_day(self, at: timedelta = timedelta(0)) -> None:
        """Move to 00:00 UTC of the next day (plus `at`)."""
        day = self.now.date() + timedelta(days=1)
        self.now = datetime(day.year, day.month, day.day, tzinfo=UTC) + at


def quota_config(
    *,
    counters: str = "memory://",
    ledger: str = "memory://",
    tiers: Mapping[int, Mapping[str, int]] | None = None,
    policy: Mapping[str, Any] | None = None,
    keys: list[dict[str, Any]] | None = None,
) -> AxioneConfig:
    """A config with the demo provider, memory key store and small tiers."""
    data: dict[str, Any] = {
        "storage": {"keys": "memory://", "ledger": ledger, "counters": counters},
        "tiers": {str(k): dict(v) for k, v in (tiers or SMALL_TIERS).items()},
        "providers": {"demo": {"kind": "demo"}},
        "key_cache_ttl_s": 60,
    }
    if policy is not None:
        data["tier_policy"] = dict(policy)
    if keys is not None:
        data["keys"] = keys
    return AxioneConfig.from_mapping(data)


def redis_uri(db: int = REDIS_DB) -> str:
    """The counters URI of a test Redis database."""
    return f"{REDIS_URL}/{db}"


async def forget_redis_keys(key_id: str, db: int = REDIS_DB) -> None:
    """Delete every counter of one key id (the tests' cleanup)."""
    client = redis.asyncio.Redis.from_url(redis_uri(db))
    try:
        found = [k async for k in client.scan_iter(match=f"*{key_id}*")]
        if found:
            await client.delete(*found)
    finally:
        await client.aclose()


def asgi_client(app: Any) -> httpx2.AsyncClient:
    """An httpx2 client that calls `app` in-process."""
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t")


@dataclass
class Gateway:
    """A gateway app under test, its key store, one key and a client."""

    app: AxioneApp
    store: MemoryKeyStore
    key_id: str
    secret: str
    client: httpx2.AsyncClient

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.secret}"}

    async def chat(self, body: Mapping[str, Any] | None = None) -> httpx2.Response:
        return await self.client.post("/chat/completions", json=body or CHAT, headers=self.auth)

    async def usage(self) -> dict[str, Any]:
        response = await self.client.get("/usage", headers=self.auth)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@contextlib.asynccontextmanager
async def gateway(
    config: AxioneConfig,
    *,
    tier: int = 1,
    clock: MovableClock | None = None,
    store: MemoryKeyStore | None = None,
    providers: Mapping[str, Any] | None = None,
) -> AsyncIterator[Gateway]:
    """A started gateway with one fresh key; stops it (flushing the ledger) on exit."""
    store = store or MemoryKeyStore()
    record, secret = await store.create("quota-test", tier=tier)
    app = create_app(config, key_store=store, clock=clock, providers=providers)
    async with app.lifespan(), asgi_client(app) as client:
        yield Gateway(app, store, record.id, secret, client)


def static_key(tier: int = 1) -> tuple[str, dict[str, Any]]:
    """A fresh secret and its `[[keys]]` entry."""
    secret = "sk-ax-test-" + secrets.token_urlsafe(24)
    return secret, {"name": "static", "key_sha256": hash_key(secret), "tier": tier}


def create() -> ASGIApp:
    """The app `uvicorn --factory` serves in the worker tests (settings from the environment).

    A `[[keys]]` key whose secret is `AXIONE_QUOTA_TEST_SECRET`, tier 1 with
    `AXIONE_QUOTA_TEST_LIMIT` requests a day, counters on
    `AXIONE_QUOTA_TEST_COUNTERS` and the ledger at `AXIONE_QUOTA_TEST_LEDGER`.
    Each response names the worker's pid in `x-worker-pid`.
    """
    env = os.environ
    limit = int(env.get("AXIONE_QUOTA_TEST_LIMIT", "10"))
    secret = env["AXIONE_QUOTA_TEST_SECRET"]
    config = quota_config(
        counters=env["AXIONE_QUOTA_TEST_COUNTERS"],
        ledger=env["AXIONE_QUOTA_TEST_LEDGER"],
        tiers={1: {"requests_per_day": limit, "tokens_per_day": 10_000_000}},
        keys=[{"name": "workers", "key_sha256": hash_key(secret), "tier": 1}],
    )
    return _PidStamp(create_app(config))


class _PidStamp:
    """Names the worker process in `x-worker-pid`, so a test sees both workers answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pid = str(os.getpid()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"x-worker-pid", self.pid)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, stamped)
