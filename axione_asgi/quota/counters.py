"""Daily request and token counters per key on a `limits` async storage.

Counters are keyed by key id and UTC day, so a day's counters start at zero at
00:00 UTC without anyone resetting them; they expire a few days later. Any
`limits` async storage works (`memory://`, `redis://`, `memcached://`, ...):
admission there is an atomic increment, then a check, then a refund on
refusal, so no worker ever admits request number limit+1. On Redis the same
decision is one Lua script, one round trip and atomic as a whole.
"""

from __future__ import annotations

import enum
import importlib.util
from dataclasses import dataclass
from datetime import date
from typing import Any

from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.storage import storage_from_string

from axione_asgi.quota.tiers import DayUse

__all__ = [
    "COUNTER_EXPIRY_S",
    "CounterResult",
    "DailyCounters",
    "RedisDailyCounters",
    "Verdict",
    "open_counters",
]

# Long enough that yesterday's counters are still there when the rollover
# looks at them, short enough that a store never fills up with old days.
COUNTER_EXPIRY_S = 3 * 86_400


class Verdict(enum.Enum):
    """The outcome of one admission attempt."""

    ADMITTED = "admitted"
    REQUESTS_SPENT = "requests"
    TOKENS_SPENT = "tokens"


@dataclass(frozen=True, slots=True)
class CounterResult:
    """The day's counters right after an admission attempt.

    `requests` includes this request when it was admitted; `tokens` includes
    every reservation still open (this one's too). `reserved` is what this
    request reserved: the asked reserve, capped at what the day had left.
    """

    verdict: Verdict
    requests: int
    tokens: int
    reserved: int = 0


def _day_key(key_id: str, day: date, what: str) -> str:
    # The braces are a Redis Cluster hash tag: one key's day stays on one
    # node, so the Lua admission may touch its request and token counters.
    return f"axione:{{{key_id}:{day.isoformat()}}}:{what}"


class DailyCounters:
    """Per-key, per-UTC-day counters on any `limits` async storage."""

    def __init__(self, storage: Storage, *, expiry_s: int = COUNTER_EXPIRY_S) -> None:
        self.storage = storage
        self.expiry_s = expiry_s

    @property
    def per_process(self) -> bool:
        """Whether these counters live in this process only (and so start empty at each start)."""
        return isinstance(self.storage, MemoryStorage)

    async def seed(self, key_id: str, day: date, requests: int, tokens: int) -> None:
        """Add a day's use counted elsewhere (the ledger, at start) to the counters."""
        if requests > 0:
            await self.storage.incr(_day_key(key_id, day, "req"), self.expiry_s, requests)
        if tokens > 0:
            await self.storage.incr(_day_key(key_id, day, "tok"), self.expiry_s, tokens)

    async def admit(
        self,
        key_id: str,
        day: date,
        *,
        request_limit: int,
        token_limit: int,
        reserve: int,
        minimum: int = 0,
    ) -> CounterResult:
        """Count one request and reserve tokens for it, or refuse and leave no trace.

        A request is refused when the day already holds `request_limit`
        requests, or (when it reserves tokens) when what is left of the day's
        tokens, open reservations included, is below `minimum` (or nothing).
        The reservation granted is at most what is left.
        """
        storage, expiry = self.storage, self.expiry_s
        req_key = _day_key(key_id, day, "req")
        tok_key = _day_key(key_id, day, "tok")
        # Increment first: the counter's answer orders concurrent requests, so
        # exactly `request_limit` of them see a count within the limit.
        requests = await storage.incr(req_key, expiry, 1)
        if requests > request_limit:
            await storage.incr(req_key, expiry, -1)
            return CounterResult(Verdict.REQUESTS_SPENT, requests - 1, await storage.get(tok_key))
        if reserve <= 0:
            return CounterResult(Verdict.ADMITTED, requests, await storage.get(tok_key))
        tokens = await storage.incr(tok_key, expiry, reserve)
        before = tokens - reserve
        if before >= token_limit or token_limit - before < minimum:
            await storage.incr(tok_key, expiry, -reserve)
            await storage.incr(req_key, expiry, -1)
            return CounterResult(Verdict.TOKENS_SPENT, requests - 1, before)
        excess = tokens - token_limit
        if excess > 0:
            # Keep only what the day has left: the reservation guards against
            # concurrent overshoot, it is not a demand for the whole output cap.
            tokens = await storage.incr(tok_key, expiry, -excess)
            reserve -= excess
        return CounterResult(Verdict.ADMITTED, requests, tokens, reserve)

    async def settle(self, key_id: str, day: date, delta: int) -> None:
        """Move the day's tokens by `delta` (real count minus reservation)."""
        if delta:
            await self.storage.incr(_day_key(key_id, day, "tok"), self.expiry_s, delta)

    async def read(self, key_id: str, day: date) -> DayUse:
        """The day's request and token counts (tokens include open reservations)."""
        return DayUse(
            await self.storage.get(_day_key(key_id, day, "req")),
            await self.storage.get(_day_key(key_id, day, "tok")),
        )

    async def claim_rollover(self, key_id: str, day: date) -> bool:
        """True for exactly one caller per key and day, across every worker.

        An increment that returns 1 only for the first: `limits` storages
        offer no set-if-absent, and this is one just as atomic.
        """
        return await self.storage.incr(_day_key(key_id, day, "rollover"), self.expiry_s, 1) == 1

    async def publish_tier(self, key_id: str, day: date, tier: int) -> None:
        """Tell other workers the tier a key was promoted to on `day`."""
        await self.storage.incr(_day_key(key_id, day, "tier"), self.expiry_s, tier)

    async def published_tier(self, key_id: str, day: date) -> int:
        """The tier published for `day`, or 0 when none was."""
        return await self.storage.get(_day_key(key_id, day, "tier"))

    async def clear(self, key_id: str, day: date) -> None:
        """Forget a key's day (tests and operators)."""
        for what in ("req", "tok", "rollover", "tier"):
            await self.storage.clear(_day_key(key_id, day, what))

    async def close(self) -> None:
        """Release connections; the counters reconnect on next use."""
        return None


# KEYS: request counter, token counter. ARGV: request limit, token limit,
# reserve, expiry, minimum. Returns {verdict, requests, tokens, reserved} where verdict
# is 0 admitted, 1 requests spent, 2 tokens spent. The same rule as
# `DailyCounters.admit`, but whole: nothing else runs in between.
_ADMIT_LUA = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local reserve = tonumber(ARGV[3])
if requests >= tonumber(ARGV[1]) then
  return {1, requests, tokens, 0}
end
local token_limit = tonumber(ARGV[2])
if reserve > 0 and (tokens >= token_limit or token_limit - tokens < tonumber(ARGV[5])) then
  return {2, requests, tokens, 0}
end
requests = redis.call('INCR', KEYS[1])
if requests == 1 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
if reserve > 0 then
  reserve = math.min(reserve, token_limit - tokens)
  tokens = redis.call('INCRBY', KEYS[2], reserve)
  if tokens == reserve then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
else
  reserve = 0
end
return {0, requests, tokens, reserve}
"""

_VERDICTS = (Verdict.ADMITTED, Verdict.REQUESTS_SPENT, Verdict.TOKENS_SPENT)


class RedisDailyCounters(DailyCounters):
    """The same counters on `limits`' Redis storage, admission in one round trip."""

    def __init__(self, storage: RedisStorage, *, expiry_s: int = COUNTER_EXPIRY_S) -> None:
        super().__init__(storage, expiry_s=expiry_s)
        bridge: Any = storage.bridge
        self._bridge = bridge
        self._client: Any = bridge.get_connection()
        self._admit_script: Any = self._client.register_script(_ADMIT_LUA)

    async def admit(
        self,
        key_id: str,
        day: date,
        *,
        request_limit: int,
        token_limit: int,
        reserve: int,
        minimum: int = 0,
    ) -> CounterResult:
        keys = [
            self._bridge.prefixed_key(_day_key(key_id, day, "req")),
            self._bridge.prefixed_key(_day_key(key_id, day, "tok")),
        ]
        verdict, requests, tokens, reserved = await self._admit_script(
            keys, [request_limit, token_limit, max(0, reserve), self.expiry_s, max(0, minimum)]
        )
        return CounterResult(_VERDICTS[int(verdict)], int(requests), int(tokens), int(reserved))

    async def read(self, key_id: str, day: date) -> DayUse:
        keys = [
            self._bridge.prefixed_key(_day_key(key_id, day, "req")),
            self._bridge.prefixed_key(_day_key(key_id, day, "tok")),
        ]
        requests, tokens = await self._client.mget(keys)
        return DayUse(int(requests or 0), int(tokens or 0))

    async def close(self) -> None:
        await self._client.aclose()


def open_counters(uri: str) -> DailyCounters:
    """Counters on the `limits` storage a `storage.counters` URI names.

    `memory://` (one process), `redis://host:6379/N` (shared by workers and
    hosts; needs the `axione-asgi[redis]` extra), or any other `limits` URI.
    """
    bare = uri.removeprefix("async+")
    options: dict[str, Any] = {}
    # `limits` defaults to coredis for Redis; the `redis` extra installs redis-py.
    redispy = bare.startswith("redis") and importlib.util.find_spec("redis") is not None
    if redispy:
        options["implementation"] = "redispy"
    storage = storage_from_string(f"async+{bare}", **options)
    if not isinstance(storage, Storage):
        raise ValueError(f"counters storage {uri!r} has no async variant in `limits`")
    # Only the plain Redis storage: a cluster or sentinel keeps the generic path.
    if redispy and type(storage) is RedisStorage:
        return RedisDailyCounters(storage)
    return DailyCounters(storage)
