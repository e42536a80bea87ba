"""A restart changes nothing a key can see: memory counters start from the ledger's day.

Memory counters live in one process; the SQLite ledger outlives it. At start
the gateway seeds today's counters (and yesterday's, for the day-rollover
promotion) from the ledger. Shared counters (Redis) outlive a restart
themselves, so nothing is seeded there and nothing is counted twice.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from axione_asgi import create_app
from axione_asgi.stores import MemoryKeyStore
from tests.quota_app import (
    CHAT,
    Gateway,
    MovableClock,
    asgi_client,
    forget_redis_keys,
    gateway,
    quota_config,
    redis_uri,
)

pytestmark = pytest.mark.anyio


async def send(gw: Gateway, count: int) -> list[int]:
    return [(await gw.chat()).status_code for _ in range(count)]


async def test_after_a_restart_a_key_has_the_same_day_left(tmp_path: Path) -> None:
    clock = MovableClock()
    config = quota_config(ledger=f"sqlite:///{tmp_path / 'l.db'}")
    store = MemoryKeyStore()
    async with gateway(config, clock=clock, store=store) as gw:
        assert await send(gw, 3) == [200] * 3
        before = await gw.usage()
        key_id, secret = gw.key_id, gw.secret
    # A new process: new memory counters, the same ledger file and keys.
    app = create_app(config, key_store=store, clock=clock)
    async with app.lifespan(), asgi_client(app) as client:
        gw = Gateway(app, store, key_id, secret, client)
        after = await gw.usage()
        assert after["used"] == before["used"]
        assert after["used"]["requests"] == 3
        assert after["remaining"] == before["remaining"]
        response = await gw.chat()
        assert response.headers["x-ratelimit-remaining-requests"] == "6"  # 10 - 3 - this one


async def test_a_restart_does_not_hand_out_a_fresh_quota(tmp_path: Path) -> None:
    clock = MovableClock()
    config = quota_config(ledger=f"sqlite:///{tmp_path / 'l.db'}")
    store = MemoryKeyStore()
    async with gateway(config, clock=clock, store=store) as gw:
        assert await send(gw, 7) == [200] * 7
        key_id, secret = gw.key_id, gw.secret
    app = create_app(config, key_store=store, clock=clock)
    async with app.lifespan(), asgi_client(app) as client:
        gw = Gateway(app, store, key_id, secret, client)
        assert await send(gw, 4) == [200, 200, 200, 429]  # the day's 10, not 10 more


async def test_a_promotion_due_today_survives_a_restart_before_the_first_request(
    tmp_path: Path,
) -> None:
    clock = MovableClock()
    config = quota_config(ledger=f"sqlite:///{tmp_path / 'l.db'}")
    store = MemoryKeyStore()
    async with gateway(config, clock=clock, store=store) as gw:
        assert await send(gw, 8) == [200] * 8  # 80% of tier 1's 10
        key_id, secret = gw.key_id, gw.secret
    clock.next_day(timedelta(hours=1))
    app = create_app(config, key_store=store, clock=clock)
    async with app.lifespan(), asgi_client(app) as client:
        gw = Gateway(app, store, key_id, secret, client)
        response = await gw.chat()
        assert response.headers["x-ratelimit-limit-requests"] == "20"


async def test_a_key_promoted_before_the_restart_is_not_promoted_twice(tmp_path: Path) -> None:
    clock = MovableClock()
    # Tier 2's limit is reached by yesterday's use too: a second check would promote again.
    tiers = {
        1: {"requests_per_day": 10, "tokens_per_day": 100_000},
        2: {"requests_per_day": 11, "tokens_per_day": 200_000},
        3: {"requests_per_day": 12, "tokens_per_day": 300_000},
    }
    config = quota_config(ledger=f"sqlite:///{tmp_path / 'l.db'}", tiers=tiers)
    store = MemoryKeyStore()
    async with gateway(config, clock=clock, store=store) as gw:
        assert await send(gw, 10) == [200] * 10
        clock.next_day()
        assert (await gw.chat()).headers["x-ratelimit-limit-requests"] == "11"
        key_id, secret = gw.key_id, gw.secret
    app = create_app(config, key_store=store, clock=clock)
    async with app.lifespan(), asgi_client(app) as client:
        gw = Gateway(app, store, key_id, secret, client)
        response = await gw.chat()
        assert response.headers["x-ratelimit-limit-requests"] == "11"
        assert response.headers["x-ratelimit-remaining-requests"] == "9"


async def test_starting_the_same_app_again_counts_nothing_twice(tmp_path: Path) -> None:
    clock = MovableClock()
    config = quota_config(ledger=f"sqlite:///{tmp_path / 'l.db'}")
    store = MemoryKeyStore()
    record, secret = await store.create("again")
    app = create_app(config, key_store=store, clock=clock)
    async with asgi_client(app) as client:
        gw = Gateway(app, store, record.id, secret, client)
        async with app.lifespan():
            assert await send(gw, 3) == [200] * 3
        # The same process, the same memory counters: they already hold the day.
        async with app.lifespan():
            assert (await gw.usage())["used"]["requests"] == 3


async def test_shared_counters_are_not_seeded_twice(tmp_path: Path) -> None:
    clock = MovableClock()
    config = quota_config(counters=redis_uri(), ledger=f"sqlite:///{tmp_path / 'l.db'}")
    store = MemoryKeyStore()
    async with gateway(config, clock=clock, store=store) as gw:
        key_id, secret = gw.key_id, gw.secret
        try:
            assert await send(gw, 3) == [200] * 3
            app = create_app(config, key_store=store, clock=clock)
            async with app.lifespan(), asgi_client(app) as client:
                again = Gateway(app, store, key_id, secret, client)
                assert (await again.usage())["used"]["requests"] == 3
        finally:
            await forget_redis_keys(key_id)


async def test_a_restart_keeps_the_days_tokens(tmp_path: Path) -> None:
    clock = MovableClock()
    config = quota_config(ledger=f"sqlite:///{tmp_path / 'l.db'}")
    store = MemoryKeyStore()
    async with gateway(config, clock=clock, store=store) as gw:
        await gw.chat(CHAT)
        tokens = (await gw.usage())["used"]["tokens"]
        key_id, secret = gw.key_id, gw.secret
    assert tokens > 0
    app = create_app(config, key_store=store, clock=clock)
    async with app.lifespan(), asgi_client(app) as client:
        gw = Gateway(app, store, key_id, secret, client)
        assert (await gw.usage())["used"]["tokens"] == tokens
