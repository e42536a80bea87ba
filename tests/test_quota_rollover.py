"""Day rollover with an injected clock: counters reset at 00:00 UTC; tiers rise once a day."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from axione_asgi import create_app
from axione_asgi.stores import LayeredKeyStore, MemoryKeyStore
from tests.quota_app import (
    CHAT,
    Gateway,
    MovableClock,
    asgi_client,
    forget_redis_keys,
    gateway,
    quota_config,
    redis_uri,
    static_key,
)

pytestmark = pytest.mark.anyio


class CountingStore(MemoryKeyStore):
    """A memory key store that counts tier changes."""

    def __init__(self) -> None:
        super().__init__()
        self.tier_changes: Counter[tuple[str, int]] = Counter()

    async def set_tier(self, key_id: str, tier: int) -> bool:
        self.tier_changes[(key_id, tier)] += 1
        return await super().set_tier(key_id, tier)


async def send(gw: Gateway, count: int) -> list[int]:
    return [(await gw.chat()).status_code for _ in range(count)]


async def limit_now(gw: Gateway) -> int:
    response = await gw.chat()
    assert response.status_code == 200, response.text
    return int(response.headers["x-ratelimit-limit-requests"])


async def test_counters_reset_at_midnight_utc() -> None:
    clock = MovableClock(datetime(2030, 5, 17, 23, 0, tzinfo=UTC))
    config = quota_config(policy={"auto_upgrade": False})
    async with gateway(config, clock=clock) as gw:
        assert await send(gw, 11) == [200] * 10 + [429]
        clock.now = datetime(2030, 5, 17, 23, 59, 59, 999_000, tzinfo=UTC)
        assert await send(gw, 1) == [429]
        clock.next_day()
        response = await gw.chat()
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining-requests"] == "9"
        usage = await gw.usage()
        assert usage["day"] == "2030-05-18"
        assert usage["used"]["requests"] == 1
        assert usage["resets_at"] == "2030-05-19T00:00:00Z"


async def test_key_that_used_eighty_percent_yesterday_moves_up_one_tier_exactly_once() -> None:
    clock = MovableClock()
    store = CountingStore()
    async with gateway(quota_config(), clock=clock, store=store) as gw:
        await send(gw, 8)  # 80% of tier 1's 10 requests
        clock.next_day(timedelta(hours=1))
        # Many first requests of the new day at once: one promotion.
        limits: list[int] = []
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(_append, limits, gw)
        assert limits == [20] * 5
        assert await limit_now(gw) == 20
        assert (await gw.usage())["tier"] == 2
        stored = await store.get(gw.key_id)
        assert stored is not None and stored.tier == 2
        assert store.tier_changes == {(gw.key_id, 2): 1}
        # Day 2 used 6 of 20 (30%): no further promotion on day 3.
        clock.next_day()
        assert await limit_now(gw) == 20
        assert store.tier_changes == {(gw.key_id, 2): 1}


async def _append(limits: list[int], gw: Gateway) -> None:
    limits.append(await limit_now(gw))


async def test_key_below_the_threshold_keeps_its_tier() -> None:
    clock = MovableClock()
    async with gateway(quota_config(), clock=clock) as gw:
        await send(gw, 7)
        clock.next_day()
        assert await limit_now(gw) == 10
        assert (await gw.usage())["tier"] == 1


async def test_token_use_at_the_threshold_promotes_too() -> None:
    clock = MovableClock()
    tiers = {
        1: {"requests_per_day": 1_000, "tokens_per_day": 100},
        2: {"requests_per_day": 2_000, "tokens_per_day": 200},
    }
    async with gateway(quota_config(tiers=tiers), clock=clock) as gw:
        while (await gw.usage())["used"]["tokens"] < 80:
            assert (await gw.chat({**CHAT, "max_tokens": 5})).status_code == 200
        clock.next_day()
        assert await limit_now(gw) == 2_000


async def test_automatic_promotion_stops_at_tier_four() -> None:
    clock = MovableClock()
    async with gateway(quota_config(), clock=clock, tier=3) as gw:
        await send(gw, 30)
        clock.next_day()
        assert await limit_now(gw) == 40  # 3 -> 4
        await send(gw, 39)
        clock.next_day()
        assert await limit_now(gw) == 40  # never 5 automatically
        assert (await gw.usage())["tier"] == 4


async def test_operator_set_tier_five_is_kept_and_never_demoted() -> None:
    clock = MovableClock()
    async with gateway(quota_config(), clock=clock, tier=5) as gw:
        clock.next_day()  # an idle day: no demotion
        assert await limit_now(gw) == 50
        assert (await gw.usage())["tier"] == 5


async def test_config_keys_are_never_promoted() -> None:
    clock = MovableClock()
    secret, entry = static_key(tier=1)
    config = quota_config(keys=[entry])
    store = CountingStore()
    app = create_app(config, key_store=LayeredKeyStore(config.keys, store), clock=clock)
    async with app.lifespan(), asgi_client(app) as client:
        gw = Gateway(app, store, "", secret, client)
        assert await send(gw, 10) == [200] * 10
        clock.next_day()
        assert await limit_now(gw) == 10
        assert (await gw.usage())["tier"] == 1
        assert not store.tier_changes


async def test_policy_is_configuration() -> None:
    clock = MovableClock()
    policy = {"auto_upgrade": True, "threshold": 0.5, "max_auto_tier": 2}
    async with gateway(quota_config(policy=policy), clock=clock) as gw:
        await send(gw, 5)
        clock.next_day()
        assert await limit_now(gw) == 20
        await send(gw, 19)
        clock.next_day()
        assert await limit_now(gw) == 20  # the configured ceiling


async def test_promotion_happens_once_with_two_workers_sharing_redis() -> None:
    clock = MovableClock()
    store = CountingStore()
    config = quota_config(counters=redis_uri())
    async with (
        gateway(config, clock=clock, store=store) as first,
        gateway(config, clock=clock, store=store) as second_owner,
    ):
        # The second "worker": another app on the same counters and store, same key.
        second = Gateway(second_owner.app, store, first.key_id, first.secret, second_owner.client)
        try:
            await send(first, 4)
            await send(second, 4)
            assert (await first.usage())["used"]["requests"] == 8
            clock.next_day()
            limits: list[int] = []
            async with anyio.create_task_group() as tg:
                for gw in (first, second, first, second):
                    tg.start_soon(_append, limits, gw)
            assert limits == [20] * 4
            assert store.tier_changes == {(first.key_id, 2): 1}
        finally:
            await forget_redis_keys(first.key_id)
            await forget_redis_keys(second_owner.key_id)


async def test_promoted_tier_applies_at_once_despite_the_auth_cache() -> None:
    # key_cache_ttl_s is 60 in these configs: the cached record still says
    # tier 1 when the promotion happens, and the new limit applies anyway.
    clock = MovableClock()
    async with gateway(quota_config(), clock=clock) as gw:
        await send(gw, 9)
        clock.next_day()
        response = await gw.chat()
        assert response.headers["x-ratelimit-limit-requests"] == "20"
        assert response.headers["x-ratelimit-remaining-requests"] == "19"
