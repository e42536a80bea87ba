"""Daily request and token counters per key on a `limits` async storage.

Counters are keyed by key id and UTC day, so a day's counters start at zero at
00:00 UTC without anyone resetting them; they expire a few days later. Any
`limits` async storage works (`memory://`, `redis://`, `memcached://`, ...):
admission there is an atomic increment, then a check, then a refund on
refusal, so no worker ever admits request number limit+1. On Redis the same
decision is one Lua script, one round trip and atomic as a whole.

Redis connections come from one `BlockingConnectionPool` per process and
server URL (`shared_redis_pool`), shared with the response cache and sized by
`[storage] redis_max_connections`: a request waits up to
`redis_pool_timeout_s` for a free connection rather than failing. Whatever
the store raises is one of `COUNTER_ERRORS`; `COUNTER_HEALTH` counts failures
and outages (logged once each) for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib.util
import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.errors import StorageError
from limits.storage import storage_from_string

from axione_asgi.quota.tiers import DayUse

if TYPE_CHECKING:
    from axione_asgi.config import StorageConfig
    from axione_asgi.quota.settlement import CounterDebt, Unresolved

__all__ = [
    "CACHE_HEALTH",
    "COUNTER_ERRORS",
    "COUNTER_EXPIRY_S",
    "COUNTER_HEALTH",
    "CounterResult",
    "CountersBusy",
    "DailyCounters",
    "RedisDailyCounters",
    "StoreHealth",
    "Verdict",
    "open_counters",
    "release_redis_pool",
    "shared_redis_pool",
]

logger = logging.getLogger("axione")

# Long enough that yesterday's counters are still there when the rollover
# looks at them, short enough that a store never fills up with old days.
COUNTER_EXPIRY_S = 3 * 86_400


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [StorageError, OSError, TimeoutError, asyncio.TimeoutError]
    if importlib.util.find_spec("redis") is not None:
        from redis.exceptions import RedisError

        errors.append(RedisError)
    return tuple(errors)


# What a counters (or cache) store raises when it cannot answer: connection
# refused or lost, a timeout, no free pooled connection in time, Redis still
# loading its data set, a read-only replica, ... Callers map these to SPEC
# errors (503 `quota_unavailable`) or let the request through.
COUNTER_ERRORS: tuple[type[BaseException], ...] = _store_errors()


@dataclass(slots=True)
class StoreHealth:
    """Failures of one kind of store in this process, read by the metrics at scrape time.

    An outage is logged twice: at its first failure and when the store
    answers again, never once per request.
    """

    name: str
    failures: int = 0
    outages: int = 0
    refused: int = 0
    uncounted: int = 0
    settle_failures: int = 0
    down: bool = False
    _last_error: str = field(default="", repr=False)

    def failed(self, exc: BaseException, what: str) -> None:
        """Count one failed operation; log it when it opens an outage."""
        self.failures += 1
        if not self.down:
            self.down = True
            self.outages += 1
            self._last_error = type(exc).__name__
            logger.error(
                "%s unreachable (%s: %s, while %s); logged once until it answers again",
                self.name,
                type(exc).__name__,
                exc,
                what,
            )

    def ok(self) -> None:
        """The store answered: close the outage, if one was open."""
        if self.down:
            self.down = False
            logger.warning("%s reachable again (after %s)", self.name, self._last_error)


COUNTER_HEALTH = StoreHealth("quota counters store")
CACHE_HEALTH = StoreHealth("response cache store")


@dataclass(slots=True)
class _SharedPool:
    pool: Any
    users: int = 0


# One pool per Redis URL in this process, shared by every user of that server.
_POOLS: dict[str, _SharedPool] = {}


def _redis_url(uri: str) -> str:
    return uri.removeprefix("async+")


def shared_redis_pool(
    uri: str,
    *,
    max_connections: int = 64,
    timeout_s: float = 2.0,
    socket_timeout_s: float = 2.0,
) -> Any:
    """The process's `redis.asyncio.BlockingConnectionPool` for `uri` (one more user).

    The first user's sizes stand; a user waits up to `timeout_s` for a free
    connection (then redis-py raises `ConnectionError`, one of
    `COUNTER_ERRORS`). Each user gives it back with `release_redis_pool`;
    the last one disconnects it.
    """
    from redis.asyncio import BlockingConnectionPool

    url = _redis_url(uri)
    shared = _POOLS.get(url)
    if shared is None:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
        shared = _POOLS[url] = _SharedPool(pool)
    shared.users += 1
    return shared.pool


async def release_redis_pool(pool: Any) -> None:
    """One user of a shared pool is done; the last one disconnects and forgets it."""
    for url, shared in list(_POOLS.items()):
        if shared.pool is pool:
            shared.users -= 1
            if shared.users > 0:
                return
            del _POOLS[url]
            break
    await pool.disconnect()


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
        carried: Sequence[CounterDebt] = (),
        call: int = 0,
    ) -> CounterResult:
        """Count one request and reserve tokens for it, or refuse and leave no trace.

        A request is refused when the day already holds `request_limit`
        requests, or (when it reserves tokens) when what is left of the day's
        tokens, open reservations included, is below `minimum` (or nothing).
        The reservation granted is at most what is left. `carried`
        adjustments (earlier requests' settlements) are applied first. `call`
        is the number `new_call` gave (stores that record their calls).
        """
        if carried:
            await self.adjust_many(carried)
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

    # Whether settlements should be queued and carried by admissions
    # (`quota.settlement`) rather than sent one round trip each.
    batches_settlement = False

    async def settle(self, key_id: str, day: date, delta: int) -> None:
        """Move the day's tokens by `delta` (real count minus reservation)."""
        if delta:
            await self.storage.incr(_day_key(key_id, day, "tok"), self.expiry_s, delta)

    def new_call(self) -> int:
        """A number to record the next call under; 0: this store records no calls."""
        return 0

    async def resolve(self, groups: Sequence[Sequence[Unresolved]]) -> None:
        """Settle calls whose answer was lost (only stores that record calls have any)."""
        raise NotImplementedError("these counters record no calls")

    async def adjust_many(self, debts: Sequence[CounterDebt], call: int = 0) -> None:
        """Move each key's day counters by its debt (either sign)."""
        storage, expiry = self.storage, self.expiry_s
        for debt in debts:
            if debt.requests:
                await storage.incr(_day_key(debt.key_id, debt.day, "req"), expiry, debt.requests)
            if debt.tokens:
                await storage.incr(_day_key(debt.key_id, debt.day, "tok"), expiry, debt.tokens)

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


# Each call of the admission script is recorded under its number in this
# process's hash of calls (KEYS[3]): the reservation it granted (0 when it
# refused, or carried settlements only: -1). A call whose answer was lost (Redis
# killed as it ran, a reply cut) is looked up there later (`_RESOLVE_LUA`):
# recorded, it ran (-1: and admitted nothing), and what it counted is undone
# or completed; not recorded,
# it never ran, and the lookup marks it so that it never will (a late copy
# of it finds its number taken and does nothing). The hash keeps the last
# `window` calls (each call deletes the one `window` before it), so its size
# stays flat whatever the load.
#
# KEYS: request counter, token counter, the hash of calls, then the counters
# carried settlements move. ARGV: request limit (-1: carry settlements only),
# token limit, reserve, expiry, minimum, call number (0: not recorded),
# window, then one delta per carried counter (KEYS[i] moves by ARGV[i + 4]).
# The settlements apply first (earlier requests', so the check below sees
# them). Returns {verdict, requests, tokens, reserved}: verdict 0 admitted,
# 1 requests spent, 2 tokens spent, 3 the call was given up (it did
# nothing), 4 settlements only. The same rule as `DailyCounters.admit`, but
# whole: nothing else runs in between.
_ADMIT_LUA = """
local call = tonumber(ARGV[6])
if call > 0 and redis.call('HEXISTS', KEYS[3], ARGV[6]) == 1 then
  return {3, 0, 0, 0}
end
for i = 4, #KEYS do
  local delta = tonumber(ARGV[i + 4])
  if redis.call('INCRBY', KEYS[i], delta) == delta then redis.call('EXPIRE', KEYS[i], ARGV[4]) end
end
local verdict, requests, tokens, reserve = 4, 0, 0, 0
if tonumber(ARGV[1]) >= 0 then
  requests = tonumber(redis.call('GET', KEYS[1]) or '0')
  tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
  reserve = tonumber(ARGV[3])
  local token_limit = tonumber(ARGV[2])
  if requests >= tonumber(ARGV[1]) then
    verdict, reserve = 1, 0
  elseif reserve > 0 and (tokens >= token_limit or token_limit - tokens < tonumber(ARGV[5])) then
    verdict, reserve = 2, 0
  else
    verdict = 0
    requests = redis.call('INCR', KEYS[1])
    if requests == 1 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
    if reserve > 0 then
      reserve = math.min(reserve, token_limit - tokens)
      tokens = redis.call('INCRBY', KEYS[2], reserve)
      if tokens == reserve then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
    else
      reserve = 0
    end
  end
end
if call > 0 then
  redis.call('HSET', KEYS[3], ARGV[6], verdict == 0 and reserve or -1)
  redis.call('HDEL', KEYS[3], call - tonumber(ARGV[7]))
  redis.call('EXPIRE', KEYS[3], 86400)
end
return {verdict, requests, tokens, reserve}
"""

# Settles calls whose answer was lost, from the hash of calls (KEYS[1]).
# KEYS: the hash, then a request and a token counter per entry. ARGV:
# expiry, then 9 per entry: call number, part, the requests and tokens to
# add if the call ran and admitted (tokens plus this sign times the
# reservation it granted: 3 values), if it ran and admitted nothing (2), and
# if it never ran (2). A part is a group of entries settled once
# (`call:part` is recorded in the hash): a retried resolution changes nothing.
_RESOLVE_LUA = """
local decided = {}
local k = 2
for a = 2, #ARGV, 9 do
  local call, field = ARGV[a], ARGV[a] .. ':' .. ARGV[a + 1]
  if decided[field] == nil then
    decided[field] = redis.call('HEXISTS', KEYS[1], field) == 0
  end
  if decided[field] then
    local state = redis.call('HGET', KEYS[1], call)
    if not state then
      redis.call('HSET', KEYS[1], call, 'n')
      state = 'n'
    end
    local dr, dt
    if state == 'n' then
      dr, dt = tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])
    elseif tonumber(state) < 0 then
      dr, dt = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
    else
      dr = tonumber(ARGV[a + 2])
      dt = tonumber(ARGV[a + 3]) + tonumber(ARGV[a + 4]) * tonumber(state)
    end
    if dr ~= 0 and redis.call('INCRBY', KEYS[k], dr) == dr then
      redis.call('EXPIRE', KEYS[k], ARGV[1])
    end
    if dt ~= 0 and redis.call('INCRBY', KEYS[k + 1], dt) == dt then
      redis.call('EXPIRE', KEYS[k + 1], ARGV[1])
    end
  end
  k = k + 2
end
for field, fresh in pairs(decided) do
  if fresh then redis.call('HSET', KEYS[1], field, 1) end
end
redis.call('EXPIRE', KEYS[1], 86400)
return 1
"""

_VERDICTS = (Verdict.ADMITTED, Verdict.REQUESTS_SPENT, Verdict.TOKENS_SPENT)
# How many of a process's last calls its record keeps (a lost call is
# settled within seconds, thousands of calls at most).
CALL_WINDOW = 100_000


class CountersBusy(TimeoutError):
    """No pooled Redis connection came free in time: too many requests at once, not an outage."""


class _FairGate:
    """At most `size` callers at once, the others served in arrival order.

    redis-py's `BlockingConnectionPool` wakes a waiter when a connection comes
    back, but a caller arriving meanwhile may take it first; under sustained
    load some waiters lose that race until their timeout, and a request fails
    after seconds with Redis healthy. An `asyncio.Semaphore` queues arrivals
    behind waiters (Python 3.11.1 and later), so in front of the pool it
    keeps the pool from ever blocking and every request waits its turn.
    """

    def __init__(self, size: int, timeout_s: float) -> None:
        self.size = size
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def _for_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:  # a semaphore is bound to one loop
            self._loop, self._semaphore = loop, asyncio.Semaphore(self.size)
        return self._semaphore

    async def acquire(self) -> asyncio.Semaphore:
        semaphore = self._for_loop()
        if not semaphore.locked():
            await semaphore.acquire()  # returns at once: the common case costs no timer
            return semaphore
        try:
            await asyncio.wait_for(semaphore.acquire(), self.timeout_s)
        except TimeoutError:
            raise CountersBusy(
                f"no Redis connection came free within {self.timeout_s:g} s "
                f"({self.size} in use by this process: see redis_max_connections)"
            ) from None
        return semaphore


class _GroupedScript:
    """One Lua script's calls on a connection of their own, those made while one
    is in flight sent together.

    A call made while none is in flight goes at once, alone: no added wait
    at low load. Calls made meanwhile queue, and go in one pipeline when the
    call in flight returns: under load, one write and one read carry many
    requests' admissions, where most of a round trip's CPU is the system
    call, not Redis. Each script still runs whole and in order on the
    server, so admission stays exact.

    Only one call is ever in flight, so it holds one connection of the pool
    for good and speaks on it through redis-py's connection API: the
    client's per-command pool checkout, retry wrapper and bookkeeping cost
    about 40 % of a call's CPU. A failed read or write disconnects it
    (redis-py does), and the next call connects again.
    """

    def __init__(self, pool: Any, script: Any) -> None:
        self._pool = pool
        self._script = script
        self._connection: Any = None
        self._queue: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._busy = False

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        if self._busy:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((keys, args, future))
            return await future
        self._busy = True
        try:
            connection = self._connection or await self._connect()
            [answer] = await self._run(connection, [(keys, args)])
            if isinstance(answer, Exception):
                raise answer
            return answer
        finally:
            self._next()

    async def _connect(self) -> Any:
        self._connection = await self._pool.get_connection()
        return self._connection

    async def close(self) -> None:
        """Give the connection back to the pool."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            return
        batch, self._queue = self._queue, []
        asyncio.get_running_loop().create_task(self._send(batch), name="axione-admissions")

    async def _send(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            try:
                connection = self._connection or await self._connect()
                results = await self._run(connection, [(k, a) for k, a, _ in batch])
            except Exception as exc:  # the whole pipeline failed: each caller sees why
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            except BaseException:  # cancelled (the loop is closing): so are its callers
                for _, _, future in batch:
                    future.cancel()
                raise
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller went away (the call is settled: see service)
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._next()

    async def _run(self, connection: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Each call's answer, or the error Redis answered it with, in order."""
        from redis.exceptions import NoScriptError, ResponseError

        answers = await self._write_read(connection, calls, ResponseError)
        again = [i for i, a in enumerate(answers) if isinstance(a, NoScriptError)]
        if again:
            # Redis restarted and forgot the script: load it, run those again.
            await connection.send_command("SCRIPT", "LOAD", self._script.script)
            sha = await connection.read_response()
            self._script.sha = sha.decode() if isinstance(sha, bytes) else sha
            retried = await self._write_read(connection, [calls[i] for i in again], ResponseError)
            for i, answer in zip(again, retried, strict=True):
                answers[i] = answer
        return answers

    async def _write_read(
        self, connection: Any, calls: list[tuple[list[str], list[Any]]], errors: type[Exception]
    ) -> list[Any]:
        sha = self._script.sha
        commands = [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]
        await connection.send_packed_command(connection.pack_commands(commands))
        answers: list[Any] = []
        for _ in commands:
            try:
                answers.append(await connection.read_response())
            except errors as exc:  # an error reply: that call's, the others still read
                answers.append(exc)
        return answers


class RedisDailyCounters(DailyCounters):
    """The same counters on `limits`' Redis storage, admission in one round trip."""

    def __init__(
        self,
        storage: RedisStorage,
        *,
        expiry_s: int = COUNTER_EXPIRY_S,
        pool: Any = None,
        max_connections: int = 64,
        pool_timeout_s: float = 2.0,
    ) -> None:
        super().__init__(storage, expiry_s=expiry_s)
        self._pool = pool
        bridge: Any = storage.bridge
        self._bridge = bridge
        self._client: Any = bridge.get_connection()
        self._admit_script: Any = self._client.register_script(_ADMIT_LUA)
        self._resolve_script: Any = self._client.register_script(_RESOLVE_LUA)
        # This process's record of its calls (see _ADMIT_LUA), and their numbers.
        self._calls_key = bridge.prefixed_key(f"axione:calls:{os.urandom(8).hex()}")
        self._call_numbers = itertools.count(1)
        # A few connections stay free for the pool's other users (the key
        # change listener holds one, the response cache, the rollover checks).
        self._gate = _FairGate(max(1, max_connections - 4), pool_timeout_s)
        self._admit_grouped = _GroupedScript(
            pool if pool is not None else self._client.connection_pool, self._admit_script
        )
        self._dropped_at = 0.0

    async def _drop_idle_connections(self) -> None:
        """After a failure, close the pool's idle connections (they reconnect on next use).

        A Redis that restarted leaves every pooled connection dead, and each
        fails once when next used: without this, requests go on failing for
        seconds after Redis answers again, one per stale connection.
        """
        now = time.monotonic()
        if now - self._dropped_at < 0.1:
            return
        self._dropped_at = now
        pool = self._pool if self._pool is not None else self._client.connection_pool
        with contextlib.suppress(Exception):
            await pool.disconnect(inuse_connections=False)

    batches_settlement = True

    def _carry(self, debts: Sequence[CounterDebt], keys: list[str], args: list[Any]) -> None:
        prefixed = self._bridge.prefixed_key
        for debt in debts:
            if debt.requests:
                keys.append(prefixed(_day_key(debt.key_id, debt.day, "req")))
                args.append(debt.requests)
            if debt.tokens:
                keys.append(prefixed(_day_key(debt.key_id, debt.day, "tok")))
                args.append(debt.tokens)

    async def admit(
        self,
        key_id: str,
        day: date,
        *,
        request_limit: int,
        token_limit: int,
        reserve: int,
        minimum: int = 0,
        carried: Sequence[CounterDebt] = (),
        call: int = 0,
    ) -> CounterResult:
        keys = [
            self._bridge.prefixed_key(_day_key(key_id, day, "req")),
            self._bridge.prefixed_key(_day_key(key_id, day, "tok")),
            self._calls_key,
        ]
        args: list[Any] = [
            request_limit,
            token_limit,
            max(0, reserve),
            self.expiry_s,
            max(0, minimum),
            call,
            CALL_WINDOW,
        ]
        if carried:
            self._carry(carried, keys, args)
        verdict, requests, tokens, reserved = await self._call(keys, args)
        return CounterResult(_VERDICTS[int(verdict)], int(requests), int(tokens), int(reserved))

    def new_call(self) -> int:
        return next(self._call_numbers)

    async def _call(self, keys: list[str], args: list[Any]) -> Any:
        try:
            answer = await self._admit_grouped(keys, args)
        except COUNTER_ERRORS:
            await self._drop_idle_connections()
            raise
        if int(answer[0]) == 3:  # a copy of a call given up for lost: it did nothing
            raise StorageError(RuntimeError("a late copy of a call given up for lost"))
        return answer

    async def adjust_many(self, debts: Sequence[CounterDebt], call: int = 0) -> None:
        # The admission script, carrying settlements only (request limit -1).
        calls = self._calls_key
        keys: list[str] = [calls, calls, calls]
        args: list[Any] = [-1, 0, 0, self.expiry_s, 0, call, CALL_WINDOW]
        self._carry(debts, keys, args)
        if len(keys) > 3:
            await self._call(keys, args)

    async def resolve(self, groups: Sequence[Sequence[Unresolved]]) -> None:
        prefixed = self._bridge.prefixed_key
        keys: list[str] = [self._calls_key]
        args: list[Any] = [self.expiry_s]
        for group in groups:
            for e in group:
                keys.append(prefixed(_day_key(e.key_id, e.day, "req")))
                keys.append(prefixed(_day_key(e.key_id, e.day, "tok")))
                args.extend((e.call, e.part, *e.if_admitted, *e.if_refused, *e.if_not_run))
        if len(keys) == 1:
            return
        gate = await self._gate.acquire()
        try:
            await self._resolve_script(keys, args)
        except COUNTER_ERRORS:
            await self._drop_idle_connections()
            raise
        finally:
            gate.release()

    async def read(self, key_id: str, day: date) -> DayUse:
        keys = [
            self._bridge.prefixed_key(_day_key(key_id, day, "req")),
            self._bridge.prefixed_key(_day_key(key_id, day, "tok")),
        ]
        requests, tokens = await self._client.mget(keys)
        return DayUse(int(requests or 0), int(tokens or 0))

    async def close(self) -> None:
        await self._admit_grouped.close()
        pool, self._pool = self._pool, None
        try:
            await self._client.aclose()
        finally:
            if pool is not None:
                await release_redis_pool(pool)


def open_counters(uri: str, config: StorageConfig | None = None) -> DailyCounters:
    """Counters on the `limits` storage a `storage.counters` URI names.

    `memory://` (one process), `redis://host:6379/N` (shared by workers and
    hosts; needs the `axione-asgi[redis]` extra), or any other `limits` URI.
    A plain `redis://` or `rediss://` server is reached through the process's
    shared pool (`shared_redis_pool`), sized from `config`.
    """
    bare = uri.removeprefix("async+")
    options: dict[str, Any] = {}
    # `limits` defaults to coredis for Redis; the `redis` extra installs redis-py.
    redispy = bare.startswith("redis") and importlib.util.find_spec("redis") is not None
    pool: Any = None
    if redispy:
        options["implementation"] = "redispy"
        if bare.startswith(("redis://", "rediss://")):
            sizes: dict[str, Any] = {}
            if config is not None:
                sizes = {
                    "max_connections": config.redis_max_connections,
                    "timeout_s": config.redis_pool_timeout_s,
                    "socket_timeout_s": config.redis_socket_timeout_s,
                }
            pool = options["connection_pool"] = shared_redis_pool(bare, **sizes)
    storage = storage_from_string(f"async+{bare}", **options)
    if not isinstance(storage, Storage):
        raise ValueError(f"counters storage {uri!r} has no async variant in `limits`")
    # Only the plain Redis storage: a cluster or sentinel keeps the generic path.
    if redispy and type(storage) is RedisStorage:
        sizes = {}
        if config is not None:
            sizes = {
                "max_connections": config.redis_max_connections,
                "pool_timeout_s": config.redis_pool_timeout_s,
            }
        return RedisDailyCounters(storage, pool=pool, **sizes)
    return DailyCounters(storage)
