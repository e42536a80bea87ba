"""Key changes reach every replica at once through Redis pub/sub (issue 15).

Two gateway apps stand for two replicas: one key store between them, the
counters on one Redis, and a key cache TTL of a minute. Without the push, the
second replica would go on admitting a revoked key for that minute.
"""

from __future__ import annotations

import time

import anyio
import pytest

from axione_asgi import create_app
from axione_asgi.admin.service import AdminService
from axione_asgi.key_events import open_key_events
from axione_asgi.stores import MemoryKeyStore
from tests.quota_app import CHAT, asgi_client, forget_redis_keys, quota_config, redis_uri

pytestmark = pytest.mark.anyio


async def _refused_after(client: object, secret: str, within_s: float) -> float | None:
    """Seconds until the client's replica answers 401 for `secret`, or None."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        response = await client.post(  # type: ignore[attr-defined]
            "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"}
        )
        if response.status_code == 401:
            assert response.json()["error"]["code"] == "invalid_api_key"
            return time.monotonic() - start
        assert response.status_code == 200, response.text
        await anyio.sleep(0.01)
    return None


async def test_a_revocation_on_one_replica_is_refused_on_the_other_at_once() -> None:
    config = quota_config(
        counters=redis_uri(), tiers={1: {"requests_per_day": 10_000, "tokens_per_day": 10**8}}
    )
    assert config.key_cache_ttl_s == 60
    store = MemoryKeyStore()
    record, secret = await store.create("replicated", tier=1)
    first, second = create_app(config, key_store=store), create_app(config, key_store=store)
    events = open_key_events(config.storage.counters)
    assert events is not None
    admin = AdminService(config, store, key_events=events)
    try:
        async with (
            first.lifespan(),
            second.lifespan(),
            asgi_client(first) as one,
            asgi_client(second) as two,
        ):
            auth = {"authorization": f"Bearer {secret}"}
            # Both replicas have the key's record cached now.
            assert (await one.post("/chat/completions", json=CHAT, headers=auth)).is_success
            assert (await two.post("/chat/completions", json=CHAT, headers=auth)).is_success
            await anyio.sleep(0.2)  # both listeners subscribed
            await admin.revoke_key(record.id)
            delay = await _refused_after(two, secret, within_s=3.0)
            assert delay is not None, "the other replica still admits the revoked key"
            assert delay < 1.0
    finally:
        await events.aclose()
        await forget_redis_keys(record.id)


async def test_without_redis_a_replica_sees_the_change_only_when_its_cache_expires() -> None:
    # The control: memory counters, no push, so the cached record stands.
    config = quota_config(tiers={1: {"requests_per_day": 10_000, "tokens_per_day": 10**8}})
    assert open_key_events(config.storage.counters) is None
    store = MemoryKeyStore()
    record, secret = await store.create("replicated", tier=1)
    first, second = create_app(config, key_store=store), create_app(config, key_store=store)
    admin = AdminService(config, store)
    async with first.lifespan(), second.lifespan(), asgi_client(second) as two:
        auth = {"authorization": f"Bearer {secret}"}
        assert (await two.post("/chat/completions", json=CHAT, headers=auth)).is_success
        await admin.revoke_key(record.id)
        assert await _refused_after(two, secret, within_s=0.5) is None


async def test_a_tier_change_is_pushed_too() -> None:
    config = quota_config(counters=redis_uri())
    store = MemoryKeyStore()
    record, secret = await store.create("replicated", tier=1)
    app = create_app(config, key_store=store)
    events = open_key_events(config.storage.counters)
    assert events is not None
    admin = AdminService(config, store, key_events=events)
    try:
        async with app.lifespan(), asgi_client(app) as client:
            auth = {"authorization": f"Bearer {secret}"}
            first = await client.post("/chat/completions", json=CHAT, headers=auth)
            assert first.headers["x-ratelimit-limit-requests"] == "10"
            await anyio.sleep(0.2)
            await admin.set_tier(record.id, 3)
            limit = ""
            for _ in range(100):
                response = await client.post("/chat/completions", json=CHAT, headers=auth)
                limit = response.headers["x-ratelimit-limit-requests"]
                if limit == "30":
                    break
                await anyio.sleep(0.01)
            assert limit == "30"
    finally:
        await events.aclose()
        await forget_redis_keys(record.id)
