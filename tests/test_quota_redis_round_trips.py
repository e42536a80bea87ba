"""With Redis counters a request costs one round trip: admission carries settlement (issue 15)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from redis.asyncio.connection import AbstractConnection

from axione_asgi.quota.ledger import UsageRecord
from tests.quota_app import Gateway, forget_redis_keys, gateway, quota_config, redis_uri

pytestmark = pytest.mark.anyio

ROOMY = {1: {"requests_per_day": 1_000, "tokens_per_day": 10_000_000}}


def _command_name(packed: Any) -> str:
    """The first command's name in what redis-py writes (RESP: *N, $len, NAME, ...)."""
    parts = packed if isinstance(packed, list | tuple) else [packed]
    raw = b"".join(p if isinstance(p, bytes) else bytes(p) for p in parts)
    return raw.split(b"\r\n")[2].decode().upper()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every write to a Redis connection, by the first command's name.

    One write is one round trip: redis-py writes a pipeline, or a script call,
    whole, then reads its answers.
    """
    seen: list[str] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        seen.append(_command_name(command))
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    yield seen


async def test_a_request_takes_one_redis_round_trip_its_settlement_riding_on_the_next(
    writes: list[str],
) -> None:
    config = quota_config(tiers=ROOMY, counters=redis_uri())
    async with gateway(config) as gw:
        try:
            # The first request loads the scripts into Redis (a miss, a load, a retry).
            assert (await gw.chat()).status_code == 200
            await anyio.sleep(0.1)  # its settlement is sent while the process is idle
            writes.clear()
            for _ in range(5):
                assert (await gw.chat()).status_code == 200
            # Each admission is one script call, and it carries the settlement
            # (the real token count replacing the reservation) of the request
            # before it: no round trip of its own.
            assert writes == ["EVALSHA"] * 5
            # The last settlement waits for no admission: a short timer sends it.
            await anyio.sleep(0.1)
            assert writes == ["EVALSHA"] * 6
            usage = await gw.usage()
            assert usage["used"]["requests"] == 6
            records = await _ledger(gw, 6)
            assert usage["used"]["tokens"] == sum(r.total_tokens for r in records)
        finally:
            await forget_redis_keys(gw.key_id)


async def test_concurrent_admissions_share_round_trips(writes: list[str]) -> None:
    config = quota_config(tiers=ROOMY, counters=redis_uri())
    async with gateway(config) as gw:
        try:
            assert (await gw.chat()).status_code == 200
            await anyio.sleep(0.1)
            writes.clear()
            async with anyio.create_task_group() as tg:
                for _ in range(64):
                    tg.start_soon(gw.chat)
            await anyio.sleep(0.1)
            # New pooled connections say hello first; that is not per request.
            commands = [w for w in writes if w not in ("HELLO", "CLIENT", "SELECT", "AUTH")]
            # 64 admissions, with the settlements riding on them: the ones made
            # while one is in flight go together in one pipeline, so a handful
            # of writes carry them all (at most one a request, whatever the load).
            assert 1 <= len(commands) <= 8, commands
            assert set(commands) == {"EVALSHA"}
            usage = await gw.usage()
            records = await _ledger(gw, 65)
            assert usage["used"]["requests"] == 65 == len(records)
            assert usage["used"]["tokens"] == sum(r.total_tokens for r in records)
        finally:
            await forget_redis_keys(gw.key_id)


async def _ledger(gw: Gateway, count: int) -> list[UsageRecord]:
    """The key's ledger records, once the writer has flushed `count` of them."""
    ledger = gw.app.runtime.quota.ledger
    for _ in range(200):
        records = ledger.records(key_id=gw.key_id)
        if len(records) >= count:
            return records
        await anyio.sleep(0.01)
    raise AssertionError(f"the ledger holds {len(records)} records, not {count}")
