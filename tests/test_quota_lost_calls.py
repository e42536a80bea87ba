"""A Redis call whose answer was lost is settled once, from Redis' own record of it (issue 15).

A Redis killed as it ran a script (its append-only file already holding the
call), or a reply cut on the way, leaves the gateway not knowing whether the
call ran. Sent again, what it carried would count twice; dropped, it would
be lost. Each call is recorded under its number, and a lost one is settled
from that record: these tests lose answers on purpose, both ways.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import date
from typing import Any

import anyio
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from axione_asgi.config import AxioneConfig
from axione_asgi.keys import KeyRecord
from axione_asgi.quota.counters import COUNTER_HEALTH, RedisDailyCounters, StoreHealth
from axione_asgi.quota.service import QuotaService
from axione_asgi.quota.settlement import Unresolved, carried_group
from axione_asgi.stores import MemoryKeyStore
from tests.quota_app import forget_redis_keys, redis_uri

pytestmark = pytest.mark.anyio

ROOMY = {"1": {"requests_per_day": 1_000, "tokens_per_day": 1_000_000}}


def _config(on_counter_failure: str = "closed") -> AxioneConfig:
    return AxioneConfig.from_mapping(
        {
            "storage": {
                "keys": "memory://",
                "ledger": "memory://",
                "counters": redis_uri(),
                "on_counter_failure": on_counter_failure,
            },
            "tiers": ROOMY,
            "providers": {"demo": {"kind": "demo"}},
        }
    )


@pytest.fixture(autouse=True)
def fresh_health(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("down", "failures", "outages", "refused", "uncounted", "settle_failures"):
        monkeypatch.setattr(COUNTER_HEALTH, name, getattr(StoreHealth(COUNTER_HEALTH.name), name))
    yield


class LostAnswers:
    """Makes the counters' next calls fail on the client side: after running, or before."""

    def __init__(self, counters: RedisDailyCounters) -> None:
        self.original = counters._call
        self.plan: list[str] = []  # "ran" or "never", one per call to fail
        counters._call = self._call  # type: ignore[method-assign]

    async def _call(self, keys: list[str], args: list[Any]) -> Any:
        if not self.plan:
            return await self.original(keys, args)
        fate = self.plan.pop(0)
        if fate == "ran":
            await self.original(keys, args)
        raise RedisConnectionError("the answer was lost")


@pytest.fixture
async def service() -> AsyncIterator[tuple[QuotaService, KeyRecord]]:
    store = MemoryKeyStore()
    key, _ = await store.create("lost-calls", tier=1)
    service = QuotaService(_config(), key_store=store)
    await service.start()
    try:
        yield service, key
    finally:
        await service.stop()
        await forget_redis_keys(key.id)


async def _settled(service: QuotaService) -> None:
    """Until nothing is owed or unresolved (the queue's timer sends it)."""
    for _ in range(200):
        if not len(service.settlements) and not service.settlements.pending_calls:
            return
        await anyio.sleep(0.01)
    raise AssertionError("settlements still pending")


async def _use(service: QuotaService, key: KeyRecord) -> tuple[int, int]:
    snap = await service.snapshot(key)
    return snap.requests, snap.tokens


async def _admit_and_settle(service: QuotaService, key: KeyRecord, used: int) -> None:
    admission = await service.admit(key, 100)
    await service.settle(admission, prompt_tokens=used)


@pytest.mark.parametrize("fate", ["ran", "never"])
async def test_a_refused_admission_whose_answer_was_lost_counts_nothing(
    service: tuple[QuotaService, KeyRecord], fate: str
) -> None:
    quota, key = service
    counters = quota.counters
    assert isinstance(counters, RedisDailyCounters)
    await _admit_and_settle(quota, key, 7)  # its settlement (-93) waits for the next call
    lost = LostAnswers(counters)
    lost.plan = [fate]
    with pytest.raises(Exception) as refused:
        await quota.admit(key, 100)
    assert refused.value.__class__.__name__ == "QuotaUnavailable"
    await _settled(quota)
    # One request of 7 tokens, whether the lost call ran (its count undone,
    # what it carried kept) or not (what it carried sent again).
    assert await _use(quota, key) == (1, 7)


@pytest.mark.parametrize("fate", ["ran", "never"])
async def test_a_settlement_flush_whose_answer_was_lost_arrives_once(
    service: tuple[QuotaService, KeyRecord], fate: str
) -> None:
    quota, key = service
    counters = quota.counters
    assert isinstance(counters, RedisDailyCounters)
    lost = LostAnswers(counters)
    await _admit_and_settle(quota, key, 7)
    lost.plan = [fate]  # the timer's flush of the -93
    await _settled(quota)
    assert await _use(quota, key) == (1, 7)


@pytest.mark.parametrize("fate", ["ran", "never"])
async def test_fail_open_an_admission_whose_answer_was_lost_is_counted_once(
    fate: str,
) -> None:
    store = MemoryKeyStore()
    key, _ = await store.create("lost-calls", tier=1)
    quota = QuotaService(_config("open"), key_store=store)
    await quota.start()
    try:
        counters = quota.counters
        assert isinstance(counters, RedisDailyCounters)
        lost = LostAnswers(counters)
        lost.plan = [fate]
        admission = await quota.admit(key, 100)
        assert not admission.counted and admission.call
        await quota.settle(admission, prompt_tokens=5, completion_tokens=6)
        await _settled(quota)
        assert await _use(quota, key) == (1, 11)
    finally:
        await quota.stop()
        await forget_redis_keys(key.id)


async def test_a_resolution_sent_twice_settles_once_and_a_late_copy_does_nothing(
    service: tuple[QuotaService, KeyRecord],
) -> None:
    quota, key = service
    counters = quota.counters
    assert isinstance(counters, RedisDailyCounters)
    day = quota.clock().date()
    call = counters.new_call()
    # A lost flush of +3 requests: resolved (it never ran, so they are added) twice.
    from axione_asgi.quota.settlement import CounterDebt

    debts = [CounterDebt(key.id, day, 3, 30)]
    group = carried_group(call, debts)
    await counters.resolve([group])
    await counters.resolve([group])
    assert await _use(quota, key) == (3, 30)
    # The lost call itself, arriving late: its number is taken, it does nothing.
    with pytest.raises(Exception, match="late copy"):
        await counters.adjust_many(debts, call)
    assert await _use(quota, key) == (3, 30)


async def test_parts_of_one_call_are_settled_each_once(
    service: tuple[QuotaService, KeyRecord],
) -> None:
    quota, key = service
    counters = quota.counters
    assert isinstance(counters, RedisDailyCounters)
    day: date = quota.clock().date()
    call = counters.new_call()
    # The call ran and admitted, granting a reservation of 100.
    await counters.admit(key.id, day, request_limit=10, token_limit=10_000, reserve=100, call=call)
    assert await _use(quota, key) == (1, 100)
    refund = Unresolved(call, "c", key.id, day, (-1, 0, -1), (0, 0), (0, 0))
    settle = Unresolved(call, "s", key.id, day, (0, 40, -1), (1, 40), (1, 40))
    await counters.resolve([[refund]])
    assert await _use(quota, key) == (0, 0)
    await counters.resolve([[settle], [refund]])  # the refund again: nothing
    assert await _use(quota, key) == (0, -60)


async def test_an_admission_whose_client_went_away_counts_nothing(
    service: tuple[QuotaService, KeyRecord],
) -> None:
    quota, key = service
    counters = quota.counters
    assert isinstance(counters, RedisDailyCounters)
    await _admit_and_settle(quota, key, 7)  # its -93 rides on the next call
    original = counters._call

    async def ran_then_hung(keys: list[str], args: list[Any]) -> Any:
        await original(keys, args)  # the call runs (counted, -93 applied) ...
        await anyio.sleep(10)  # ... and its answer never comes back in time

    counters._call = ran_then_hung  # type: ignore[method-assign]
    with anyio.move_on_after(0.2):  # the client goes away meanwhile
        await quota.admit(key, 100)
        raise AssertionError("admitted")
    counters._call = original  # type: ignore[method-assign]
    await _settled(quota)
    assert await _use(quota, key) == (1, 7)
