"""With Redis counters a request costs one round trip to admit and one to settle (issue 5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

from tests.quota_app import forget_redis_keys, gateway, quota_config, redis_uri

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


async def test_a_request_takes_one_redis_round_trip_to_admit_and_one_to_settle(
    writes: list[str],
) -> None:
    config = quota_config(tiers=ROOMY, counters=redis_uri())
    async with gateway(config) as gw:
        try:
            # The first request loads the scripts into Redis (a miss, a load, a retry).
            assert (await gw.chat()).status_code == 200
            writes.clear()
            response = await gw.chat()
            assert response.status_code == 200
            # The admission is one script call; the settlement (the real token
            # count replacing the reservation) is one more.
            assert writes == ["EVALSHA", "EVALSHA"]
            usage = await gw.usage()
            assert usage["used"]["requests"] == 2
        finally:
            await forget_redis_keys(gw.key_id)
