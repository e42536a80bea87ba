"""Redis counters under load and outage (issue 15): one bounded pool, SPEC errors, recovery.

The load tests use database 12 of the Redis on 127.0.0.1:6379. The outage
tests start a throwaway `redis-server` of their own on a free loopback port
(no persistence), kill it and start it again on the same port.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from axione_asgi import AxioneConfig
from axione_asgi.cache import ChatCache, RedisResponseCache
from axione_asgi.config import CacheConfig
from axione_asgi.quota.counters import (
    _POOLS,
    CACHE_HEALTH,
    COUNTER_HEALTH,
    RedisDailyCounters,
    StoreHealth,
)
from axione_asgi.quota.service import QuotaService
from axione_asgi.stores import MemoryKeyStore
from tests.quota_app import CHAT, REDIS_URL, Gateway, forget_redis_keys, gateway

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

LOAD_DB = 12
ROOMY = {"1": {"requests_per_day": 100_000, "tokens_per_day": 1_000_000_000}}


def _config(counters: str, *, cache: bool = False, **storage: Any) -> AxioneConfig:
    data: dict[str, Any] = {
        "storage": {"keys": "memory://", "ledger": "memory://", "counters": counters, **storage},
        "tiers": ROOMY,
        "providers": {"demo": {"kind": "demo"}},
        "key_cache_ttl_s": 60,
    }
    if cache:
        data["cache"] = {"enabled": True}
    return AxioneConfig.from_mapping(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ThrowawayRedis:
    """A `redis-server` on a loopback port of its own that a test may kill and restart."""

    def __init__(self, persistent_in: str | None = None) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # With a folder, an append-only file fsynced at every write: a killed
        # server restarts with its counters, as an operator's would.
        self.persistent_in = persistent_in

    @property
    def uri(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *(
                    ["--appendonly", "yes", "--appendfsync", "always", "--dir", self.persistent_in]
                    if self.persistent_in
                    else ["--appendonly", "no"]
                ),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("the throwaway redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def _eventually(check: Callable[[], Awaitable[bool]], within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await anyio.sleep(0.02)
    return await check()


@pytest.fixture(autouse=True)
def fresh_health(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees its own outages (the health objects are per process)."""
    for health in (COUNTER_HEALTH, CACHE_HEALTH):
        for name in ("down", "failures", "outages", "refused", "uncounted", "settle_failures"):
            monkeypatch.setattr(health, name, getattr(StoreHealth(health.name), name))


async def _burst(gw: Gateway, n: int, body: dict[str, Any] | None = None) -> Counter[int]:
    statuses: Counter[int] = Counter()

    async def one() -> None:
        statuses[(await gw.chat(body)).status_code] += 1

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
    return statuses


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]


def _recovery_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]


@contextlib.asynccontextmanager
async def _load_gateway(**storage: Any) -> AsyncIterator[Gateway]:
    async with gateway(_config(f"{REDIS_URL}/{LOAD_DB}", **storage)) as gw:
        try:
            yield gw
        finally:
            await forget_redis_keys(gw.key_id, LOAD_DB)


@pytest.mark.parametrize("storage", [{"redis_max_connections": 4}, {}], ids=["pool4", "default"])
async def test_200_concurrent_requests_on_a_small_pool_wait_for_a_connection_and_count_exactly(
    storage: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Before issue 15: redis-py's "Too many connections" answered 500 to half of them.
    async with _load_gateway(**storage) as gw:
        statuses = await _burst(gw, 200)
        assert statuses == Counter({200: 200})
        assert (await gw.usage())["used"]["requests"] == 200
        counters = gw.app.runtime.quota.counters
        assert isinstance(counters, RedisDailyCounters)
        expected = storage.get("redis_max_connections", 64)
        assert counters._pool.max_connections == expected
        # Never more connections than the pool allows.
        pool = counters._pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= expected
    assert not _outage_lines(caplog)


async def test_the_cache_shares_the_counters_pool() -> None:
    async with gateway(_config(f"{REDIS_URL}/{LOAD_DB}", cache=True)) as gw:
        try:
            counters = gw.app.runtime.quota.counters
            cache = gw.app.runtime.cache
            assert isinstance(counters, RedisDailyCounters) and cache is not None
            assert isinstance(cache.store, RedisResponseCache)
            assert cache.store._pool is counters._pool
            body = {**CHAT, "temperature": 0}
            assert (await _burst(gw, 50, body)) == Counter({200: 50})
        finally:
            await forget_redis_keys(gw.key_id, LOAD_DB)
    # The last user gave the pool back: nothing left for a later app (another event loop).
    assert f"{REDIS_URL}/{LOAD_DB}" not in _POOLS


async def test_counters_down_fail_closed_with_503_then_recover_without_restart(
    throwaway_redis: ThrowawayRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="axione")
    async with gateway(_config(throwaway_redis.uri)) as gw:
        assert (await gw.chat()).status_code == 200
        throwaway_redis.kill()
        statuses = Counter()
        for _ in range(5):
            response = await gw.chat()
            statuses[response.status_code] += 1
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "quota_unavailable"
            assert int(response.headers["retry-after"]) >= 1
        assert (await _burst(gw, 40)) == Counter({503: 40})
        # `/usage` reads the counters too: a SPEC error, not a 500.
        usage = await gw.client.get("/usage", headers=gw.auth)
        assert usage.status_code == 503
        assert usage.json()["error"]["code"] == "quota_unavailable"
        assert len(_outage_lines(caplog)) == 1
        assert COUNTER_HEALTH.refused == 45 and COUNTER_HEALTH.down
        assert not [r for r in caplog.records if r.exc_info]  # no traceback per request

        throwaway_redis.start()  # same port, empty data set
        response = await gw.chat()
        assert response.status_code == 200, response.text
        assert (await _burst(gw, 20)) == Counter({200: 20})
        assert (await gw.usage())["used"]["requests"] == 21
        assert len(_recovery_lines(caplog)) == 1
        assert len(_outage_lines(caplog)) == 1
        assert not COUNTER_HEALTH.down


async def test_counters_down_fail_open_admits_uncounted_and_logs_once(
    throwaway_redis: ThrowawayRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="axione")
    config = _config(throwaway_redis.uri, on_counter_failure="open")
    async with gateway(config) as gw:
        assert (await gw.chat()).status_code == 200
        throwaway_redis.kill()
        assert (await _burst(gw, 30)) == Counter({200: 30})
        assert COUNTER_HEALTH.uncounted == 30
        # The 30 are owed to the counters meanwhile, in one debt of the key's day.
        assert len(_outage_lines(caplog)) == 1
        assert not [r for r in caplog.records if r.exc_info]

        throwaway_redis.start()
        assert (await _burst(gw, 10)) == Counter({200: 10})
        # Counted once Redis is back (this Redis kept nothing: the request
        # before the outage went with its data): the 30 and the 10.
        assert (await gw.usage())["used"]["requests"] == 40
        assert COUNTER_HEALTH.uncounted == 30
        assert len(_recovery_lines(caplog)) == 1


async def test_an_uncounted_admission_is_counted_when_redis_is_back_by_settlement(
    throwaway_redis: ThrowawayRedis,
) -> None:
    config = _config(throwaway_redis.uri, on_counter_failure="open")
    store = MemoryKeyStore()
    key, _ = await store.create("outage", tier=1)
    service = QuotaService(config, key_store=store)
    await service.start()
    try:
        throwaway_redis.kill()
        admission = await service.admit(key, 50)
        assert not admission.counted
        throwaway_redis.start()
        await service.settle(admission, prompt_tokens=10, completion_tokens=5)

        async def counted() -> bool:
            snap = await service.snapshot(key)
            return (snap.requests, snap.tokens) == (1, 15)

        assert await _eventually(counted)
    finally:
        await service.stop()


async def test_a_settlement_that_cannot_reach_redis_is_sent_when_it_answers_again(
    persistent_redis: ThrowawayRedis,
) -> None:
    config = _config(persistent_redis.uri)
    store = MemoryKeyStore()
    key, _ = await store.create("outage", tier=1)
    service = QuotaService(config, key_store=store)
    await service.start()
    try:
        admission = await service.admit(key, 100)
        assert admission.counted and admission.reserved == 100
        persistent_redis.kill()
        await service.settle(admission, prompt_tokens=3, completion_tokens=4)  # never raises

        async def failed() -> bool:
            return COUNTER_HEALTH.settle_failures >= 1 and COUNTER_HEALTH.down

        assert await _eventually(failed)
        persistent_redis.start()

        async def settled() -> bool:
            snap = await service.snapshot(key)
            return (snap.requests, snap.tokens) == (1, 7)

        # The reservation of 100 was replaced by the 7 used, once Redis answered.
        assert await _eventually(settled)
    finally:
        await service.stop()


async def test_what_a_stopping_process_cannot_send_is_kept_in_the_ledger_and_paid_later(
    persistent_redis: ThrowawayRedis, tmp_path: Path
) -> None:
    ledger = f"sqlite:///{tmp_path}/ledger.db"
    config = _config(persistent_redis.uri, ledger=ledger)
    store = MemoryKeyStore()
    key, _ = await store.create("outage", tier=1)
    first = QuotaService(config, key_store=store)
    await first.start()
    admission = await first.admit(key, 100)
    persistent_redis.kill()
    await first.settle(admission, prompt_tokens=3, completion_tokens=4)
    await first.stop()  # Redis is down: the -93 tokens owed go to the ledger
    persistent_redis.start()
    second = QuotaService(config, key_store=store)
    await second.start()  # another replica, or this one restarted
    try:

        async def paid() -> bool:
            snap = await second.snapshot(key)
            return (snap.requests, snap.tokens) == (1, 7)

        assert await _eventually(paid)
        assert second.ledger.take_debts(10) == []  # type: ignore[attr-defined]
    finally:
        await second.stop()


async def test_the_cache_with_redis_down_is_a_miss_and_stores_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    cache = ChatCache(CacheConfig(enabled=True), RedisResponseCache(dead, 60))
    try:
        for _ in range(3):
            assert await cache.get("k") is None
            await cache.put("k", b"{}")
        assert CACHE_HEALTH.failures == 6 and CACHE_HEALTH.outages == 1
        assert len(_outage_lines(caplog)) == 1
    finally:
        await cache.aclose()


async def test_the_gateway_answers_with_cache_and_counters_down_when_open(
    throwaway_redis: ThrowawayRedis,
) -> None:
    config = _config(throwaway_redis.uri, cache=True, on_counter_failure="open")
    body = {**CHAT, "temperature": 0}
    async with gateway(config) as gw:
        first = await gw.chat(body)
        assert first.status_code == 200
        throwaway_redis.kill()
        assert (await _burst(gw, 10, body)) == Counter({200: 10})
        assert CACHE_HEALTH.down
        throwaway_redis.start()
        assert (await gw.chat(body)).status_code == 200
        assert not CACHE_HEALTH.down


async def test_the_store_metrics_are_exposed() -> None:
    from axione_asgi.observability.metrics import PrometheusMetrics

    COUNTER_HEALTH.refused = 3
    text = PrometheusMetrics().exposition().decode()
    assert "axione_quota_unavailable_total 3.0" in text
    assert 'axione_store_up{store="counters"} 1.0' in text
    assert "axione_quota_uncounted_admissions_total" in text


async def test_after_redis_restarts_stale_pooled_connections_fail_one_request_not_one_each(
    persistent_redis: ThrowawayRedis,
) -> None:
    async with gateway(_config(persistent_redis.uri)) as gw:
        # Many reads at once (not grouped, as admissions are): the pool holds
        # many connections.
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(gw.usage)
        assert (await _burst(gw, 5)) == Counter({200: 5})
        persistent_redis.kill()
        persistent_redis.start()
        statuses = [(await gw.chat()).status_code for _ in range(20)]
        # The first use finds a dead connection (503); the pool's idle ones are
        # dropped with it, so the next requests connect afresh and are admitted.
        assert statuses.count(503) <= 1, statuses
        assert statuses[-19:] == [200] * 19
