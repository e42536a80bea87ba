"""QuotaService: joins tiers, daily counters and the ledger for the middleware and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio
from cachetools import LRUCache

from axione_asgi.config import AxioneConfig, TierLimits
from axione_asgi.errors import QuotaUnavailable, RateLimited
from axione_asgi.keys import KeyRecord, KeyStore
from axione_asgi.quota.counters import (
    COUNTER_ERRORS,
    COUNTER_HEALTH,
    DailyCounters,
    Verdict,
    open_counters,
)
from axione_asgi.quota.days import Clock, next_midnight, seconds_until, utc_day, utc_now
from axione_asgi.quota.ledger import DebtLedger, Ledger, LedgerWriter, UsageRecord, open_ledger
from axione_asgi.quota.settlement import CounterDebt, SettlementQueue, Unresolved, carried_group
from axione_asgi.quota.tiers import DayUse, TierTable

__all__ = ["Admission", "Clock", "QuotaExceeded", "QuotaService", "Snapshot"]

logger = logging.getLogger("axione")

# How long a worker that lost a key's rollover claim waits for the winner's decision.
_DECISION_WAIT_S = 1.0
# `Retry-After` of a 503 `quota_unavailable`: the counters store may be back soon.
_UNAVAILABLE_RETRY_S = 2
# How often a replica looks in the ledger for debts owed to the shared counters.
_DEBTS_EVERY_S = 5.0
_DEBTS_PER_LOOK = 500


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A key's day as the headers and `/usage` report it.

    `requests` and `tokens` are the day's counts; after an admission they
    include the current request and its token reservation (OpenAI's
    convention for `x-ratelimit-remaining-*`).
    """

    tier: int
    limits: TierLimits
    day: date
    requests: int
    tokens: int

    @property
    def resets_at(self) -> datetime:
        """00:00 UTC after `day`."""
        return next_midnight(self.day)

    @property
    def remaining_requests(self) -> int:
        """Requests left today, never below zero."""
        return max(0, self.limits.requests_per_day - self.requests)

    @property
    def remaining_tokens(self) -> int:
        """Tokens left today, never below zero."""
        return max(0, self.limits.tokens_per_day - self.tokens)


@dataclass(frozen=True, slots=True)
class Admission:
    """One admitted request: what to settle, and the counters as admitted."""

    key_id: str
    admitted_at: datetime
    snapshot: Snapshot
    reserved: int
    # False when admitted while the counters store was down
    # (`on_counter_failure = "open"`): settlement counts it then, if it can.
    counted: bool = True
    # The number the counters recorded the failed admission call under (0:
    # none): it may have run, and counted this request, all the same.
    call: int = 0

    @property
    def day(self) -> date:
        """The UTC day the request counts on (even if it ends after midnight)."""
        return self.snapshot.day


@dataclass(slots=True)
class _KeyState:
    checked: date | None = None
    promoted_from: int = 0
    promoted_to: int = 0
    # The key record the promotion was decided on, and whether the key store
    # took the new tier. Once the store has it, a record other than this one
    # was read from the store after the promotion: its tier is the truth,
    # also when an operator set it back to `promoted_from`.
    record: KeyRecord | None = None
    stored: bool = True

    def promote(self, record: KeyRecord, tier: int, *, stored: bool = True) -> None:
        self.promoted_from, self.promoted_to = record.tier, tier
        self.record, self.stored = record, stored


class QuotaExceeded(RateLimited):
    """429 with `Retry-After`, carrying the counters that refused the request."""

    def __init__(self, message: str, *, code: str, snapshot: Snapshot, retry_after: int) -> None:
        super().__init__(message, code=code, headers={"retry-after": str(max(1, retry_after))})
        self.snapshot = snapshot


def _utc_clock(clock: Clock) -> Clock:
    """`clock`, with a naive moment it returns taken as UTC."""

    def now() -> datetime:
        moment = clock()
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

    return now


class QuotaService:
    """Counts requests and tokens per key and UTC day, promotes tiers, feeds the ledger.

    One per app (and so per worker). Counters live on the `limits` storage
    `storage.counters` names; share a Redis among workers so their limits are
    one. The ledger is written by a background thread; `stop()` flushes it.
    """

    def __init__(
        self,
        config: AxioneConfig,
        *,
        key_store: KeyStore,
        clock: Clock | None = None,
        counters: DailyCounters | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self.key_store = key_store
        # Every reader of the clock (the middleware, /usage, the admin API, the
        # dashboard) goes through this one: a naive moment is UTC (`quota.days`).
        self.clock = _utc_clock(clock) if clock is not None else utc_now
        self.tiers = TierTable(config.tier_table(), config.tier_policy)
        self.counters = counters or open_counters(config.storage.counters, config.storage)
        self.ledger = ledger or open_ledger(config.storage.ledger)
        self.writer = LedgerWriter(
            self.ledger, flush_timeout_s=config.storage.ledger_flush_timeout_s
        )
        self._seeded = False
        # Settlements owed to the counters: carried by the next admission
        # (one round trip a request on Redis), or sent after a short linger.
        self.settlements = SettlementQueue(self.counters)
        self._debts_task: asyncio.Task[None] | None = None
        # What this process knows of each key's days: when its rollover was
        # last looked at, and the promotion it got. KeyAuthMiddleware caches
        # key records for a while, so a new tier applies through here until
        # the cached record shows it.
        self._keys: LRUCache[str, _KeyState] = LRUCache(maxsize=200_000)
        self._pending: dict[str, anyio.Event] = {}

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        """Replay what the ledger spilled, seed per-process counters from it, start its writer.

        Memory counters start empty in a new process while the ledger holds
        the day: they are seeded from the ledger's records of today (what a
        key has used) and of yesterday (what its day-rollover promotion
        looks at), once per service, so a restart changes nothing a key can
        see. Shared counters (Redis) outlive a restart and are left alone.
        """
        await anyio.to_thread.run_sync(self.writer.replay)
        if self.counters.per_process and not self._seeded:
            self._seeded = True
            await self._seed_counters()
        self.writer.start()
        if (
            not self.counters.per_process
            and isinstance(self.ledger, DebtLedger)
            and self._debts_task is None
        ):
            self._debts_task = asyncio.get_running_loop().create_task(
                self._collect_debts(self.ledger), name="axione-counter-debts"
            )

    async def _collect_debts(self, ledger: DebtLedger) -> None:
        """Take the debts stopped processes left in the ledger, and pay them.

        Debts are taken only while the counters answer; they join this
        process's queue, so they are paid the same way as its own
        settlements (and kept if the store fails again before that).
        """
        while True:
            if COUNTER_HEALTH.down:
                # Nothing may have tried the store since it failed: look.
                try:
                    await self.counters.read("axione-debts-probe", utc_day(self.clock()))
                except COUNTER_ERRORS:
                    pass
                else:
                    COUNTER_HEALTH.ok()
            if not COUNTER_HEALTH.down:
                try:
                    debts = await anyio.to_thread.run_sync(ledger.take_debts, _DEBTS_PER_LOOK)
                except Exception as exc:
                    logger.warning("counter debts could not be read from the ledger: %s", exc)
                    debts = []
                if debts:
                    logger.info("paying %d counter debts left in the ledger", len(debts))
                    self.settlements.give_back(debts)
                    if len(debts) == _DEBTS_PER_LOOK:
                        continue
            await asyncio.sleep(_DEBTS_EVERY_S)

    async def _seed_counters(self) -> None:
        today = utc_day(self.clock())
        yesterday = today - timedelta(days=1)
        ledger = self.ledger
        try:
            days = await anyio.to_thread.run_sync(
                lambda: (ledger.totals(day=today), ledger.totals(day=yesterday))
            )
        except Exception:
            logger.exception("the usage ledger could not be read: today's counters start at zero")
            return
        used_today, used_yesterday = days
        for key_id, t in used_today.items():
            await self.counters.seed(key_id, today, t.requests, t.total_tokens)
        for key_id, t in used_yesterday.items():
            # A key seen today already had its rollover looked at before the
            # restart (and its promotion stored): yesterday must not promote it again.
            if key_id not in used_today:
                await self.counters.seed(key_id, yesterday, t.requests, t.total_tokens)
        if used_today:
            logger.info(
                "counters seeded from the usage ledger: %d keys used the gateway on %s",
                len(used_today),
                today.isoformat(),
            )

    async def stop(self) -> None:
        """Send what the counters are owed, flush the ledger, release the connections.

        Settlements the counters store cannot take now are written to the
        ledger as debts (when it keeps them), for a replica to pay later.
        """
        task, self._debts_task = self._debts_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = await self.settlements.drain()
        if left:
            await self._keep_debts(left)
        await self.writer.stop()
        try:
            await self.counters.close()
        finally:
            await anyio.to_thread.run_sync(self.ledger.close)

    async def _keep_debts(self, debts: list[CounterDebt]) -> None:
        ledger = self.ledger
        what = f"{sum(d.requests for d in debts)} requests, {sum(d.tokens for d in debts)} tokens"
        if self.counters.per_process or not isinstance(ledger, DebtLedger):
            logger.error("the counters were not sent %s at shutdown: lost", what)
            return
        try:
            await anyio.to_thread.run_sync(ledger.add_debts, debts)
        except Exception as exc:
            logger.error("the counters were not sent %s at shutdown, nor the ledger: %s", what, exc)
        else:
            logger.warning(
                "the counters store did not answer at shutdown: %s owed to it are kept in "
                "the ledger, for a replica to pay when it answers",
                what,
            )

    # -- tiers ---------------------------------------------------------------
    def limits_for(self, tier: int) -> TierLimits:
        """A tier's daily limits."""
        return self.tiers.limits_for(tier)

    def _effective(self, key: KeyRecord, state: _KeyState | None) -> int:
        # The promotion stands in for the key store while the record at hand
        # predates it (KeyAuthMiddleware's cache), or when the store could not
        # take it; a fresher record's tier, an operator's included, wins.
        if (
            state is not None
            and state.promoted_to
            and key.tier == state.promoted_from
            and (key is state.record or not state.stored)
        ):
            return state.promoted_to
        return key.tier

    async def tier_of(self, key: KeyRecord, now: datetime | None = None) -> int:
        """The key's tier for this request, after its day-rollover promotion if due.

        The promotion is looked at on a key's first request of each UTC day;
        afterwards this is a cache lookup.
        """
        state = self._keys.get(key.id)
        tier = self._effective(key, state)
        if key.source == "config" or not self.tiers.can_rise(tier):
            return tier
        day = utc_day(now or self.clock())
        if state is None or state.checked != day:
            try:
                await self._rollover(key, day)
            except COUNTER_ERRORS as exc:
                # Looked at again on the key's next request; admission decides this one.
                COUNTER_HEALTH.failed(exc, "checking a day rollover")
                return tier
            tier = self._effective(key, self._keys.get(key.id))
        return tier

    async def _rollover(self, key: KeyRecord, day: date) -> None:
        # Concurrent first requests of one key in this process wait for one check.
        pending = self._pending.get(key.id)
        if pending is not None:
            await pending.wait()
            return
        pending = self._pending[key.id] = anyio.Event()
        try:
            state = self._keys.get(key.id) or _KeyState()
            if state.checked == day:
                return
            tier = self._effective(key, state)
            if await self.counters.claim_rollover(key.id, day):
                yesterday = await self.counters.read(key.id, day - timedelta(days=1))
                new_tier = self.tiers.promotion(tier, yesterday)
                # Published even when unchanged: the other workers wait for it.
                await self.counters.publish_tier(key.id, day, new_tier or tier)
                if new_tier is not None:
                    state.promote(key, new_tier, stored=False)
                    state.stored = await self._persist_tier(key, tier, new_tier, yesterday)
            else:
                decided = await self._published_tier(key.id, day)
                if decided > tier:
                    # The worker that decided it stores it in the key store.
                    state.promote(key, decided)
            state.checked = day
            self._keys[key.id] = state
        finally:
            del self._pending[key.id]
            pending.set()

    async def _published_tier(self, key_id: str, day: date) -> int:
        # The claim and the decision are two writes: a worker that lost the
        # claim may read between them, so it waits a little for the decision.
        # If the winner died in between, the key keeps its tier here until
        # KeyAuthMiddleware's cache shows what the store holds.
        with anyio.move_on_after(_DECISION_WAIT_S):
            while True:
                decided = await self.counters.published_tier(key_id, day)
                if decided:
                    return decided
                await anyio.sleep(0.005)
        return 0

    async def _persist_tier(self, key: KeyRecord, old: int, new: int, yesterday: DayUse) -> bool:
        try:
            if not await self.key_store.set_tier(key.id, new):
                logger.warning("promotion of key %s: the key store has no such key", key.id)
                return False
        except Exception:
            # The promotion still holds for this day through the counters.
            logger.exception("promotion of key %s to tier %d could not be stored", key.id, new)
            return False
        logger.info(
            "key %s promoted from tier %d to %d (yesterday: %d requests, %d tokens)",
            key.id,
            old,
            new,
            yesterday.requests,
            yesterday.tokens,
        )
        return True

    # -- admission and settlement --------------------------------------------
    async def admit(
        self,
        key: KeyRecord,
        reserve_tokens: int = 0,
        *,
        minimum_tokens: int = 0,
        tier: int | None = None,
        now: datetime | None = None,
    ) -> Admission:
        """Count one request and reserve its tokens, or raise `QuotaExceeded`.

        The reservation granted (`Admission.reserved`) is at most what is left
        of the day; a request is refused when that is below `minimum_tokens`.
        """
        now = now or self.clock()
        if tier is None:
            tier = await self.tier_of(key, now)
        day = utc_day(now)
        limits = self.tiers.limits_for(tier)
        settlements = self.settlements
        # Earlier requests' settlements ride along (on Redis, the same round trip).
        carried = settlements.take() if settlements else []
        call = self.counters.new_call()
        try:
            result = await self.counters.admit(
                key.id,
                day,
                request_limit=limits.requests_per_day,
                token_limit=limits.tokens_per_day,
                reserve=max(0, reserve_tokens),
                minimum=min(max(0, minimum_tokens), max(0, reserve_tokens)),
                carried=carried,
                call=call,
            )
        except asyncio.CancelledError:
            # The client went away: this request is not served, whether or not
            # the call ran (or runs yet, from a pipeline): undo it if it did.
            self._lost_admission(key, day, call, carried, refund=True)
            raise
        except COUNTER_ERRORS as exc:
            fail_open = self.config.storage.on_counter_failure == "open"
            # Refused here (closed): undo the count if the lost call made it.
            self._lost_admission(key, day, call, carried, refund=not fail_open)
            COUNTER_HEALTH.failed(exc, "admitting a request")
            if fail_open:
                COUNTER_HEALTH.uncounted += 1
                snap = Snapshot(tier, limits, day, 0, 0)
                return Admission(
                    key.id, now, snap, max(0, reserve_tokens), counted=False, call=call
                )
            COUNTER_HEALTH.refused += 1
            raise QuotaUnavailable(
                "The quota counters cannot be reached, so the request was not admitted; "
                f"try again in {_UNAVAILABLE_RETRY_S} seconds.",
                headers={"retry-after": str(_UNAVAILABLE_RETRY_S)},
            ) from None
        COUNTER_HEALTH.ok()
        snapshot = Snapshot(tier, limits, day, result.requests, result.tokens)
        if result.verdict is Verdict.ADMITTED:
            return Admission(key.id, now, snapshot, result.reserved)
        retry_after = seconds_until(now, snapshot.resets_at)
        if result.verdict is Verdict.REQUESTS_SPENT:
            raise QuotaExceeded(
                f"Daily request limit reached: {limits.requests_per_day} requests per day "
                f"for tier {tier}. It resets at 00:00 UTC, in {retry_after} seconds.",
                code="daily_request_limit_exceeded",
                snapshot=snapshot,
                retry_after=retry_after,
            )
        raise QuotaExceeded(
            f"Daily token limit reached: {limits.tokens_per_day} tokens per day for tier "
            f"{tier} ({result.tokens} used or reserved). It resets at 00:00 UTC, in "
            f"{retry_after} seconds.",
            code="daily_token_limit_exceeded",
            snapshot=snapshot,
            retry_after=retry_after,
        )

    def _lost_admission(
        self, key: KeyRecord, day: date, call: int, carried: Sequence[CounterDebt], *, refund: bool
    ) -> None:
        """An admission call with no answer: it may have run all the same."""
        if not call:
            self.settlements.give_back(carried)  # a store without call records: it did not
            return
        # The store's record of the call decides what it carried and counted.
        group = carried_group(call, carried)
        if refund:
            group.append(Unresolved(call, "c", key.id, day, (-1, 0, -1), (0, 0), (0, 0)))
        self.settlements.unresolved(group)

    async def settle(
        self,
        admission: Admission,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        estimated: bool = False,
        model: str | None = None,
        provider: str | None = None,
        status: int = 200,
        latency_ms: float = 0.0,
        request_id: str | None = None,
        cache_hit: bool = False,
        dialect: str | None = None,
        session_id: str | None = None,
        attempts: int = 0,
    ) -> None:
        """Replace the reservation by the real count, and queue the ledger record."""
        prompt_tokens = max(0, prompt_tokens)
        completion_tokens = max(0, completion_tokens)
        delta = prompt_tokens + completion_tokens - admission.reserved
        try:
            if delta or not admission.counted:
                # Shielded: this runs as a request ends, often because its
                # client went away and cancelled it; the count must still move.
                with anyio.CancelScope(shield=True):
                    await self._settle_counters(admission, prompt_tokens + completion_tokens, delta)
        finally:
            self.writer.submit(
                UsageRecord(
                    time=admission.admitted_at,
                    key_id=admission.key_id,
                    model=model,
                    provider=provider,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    estimated=estimated,
                    status=status,
                    latency_ms=latency_ms,
                    request_id=request_id,
                    cache_hit=cache_hit,
                    dialect=dialect,
                    session_id=session_id,
                    attempts=attempts,
                )
            )

    async def _settle_counters(self, admission: Admission, tokens: int, delta: int) -> None:
        # Never raises: the answer is out; what the store cannot take now is owed.
        # Admitted uncounted while the store was down: the request is owed too,
        # unless the failed admission call ran after all (then it counted it).
        if admission.call and not admission.counted:
            self.settlements.unresolved(
                [
                    Unresolved(
                        admission.call,
                        "s",
                        admission.key_id,
                        admission.day,
                        (0, tokens, -1),
                        (1, tokens),
                        (1, tokens),
                    )
                ]
            )
            return
        requests, delta = (0, delta) if admission.counted else (1, tokens)
        if self.counters.batches_settlement:
            self.settlements.owe(admission.key_id, admission.day, requests, delta)
            return
        try:
            if requests:
                await self.counters.adjust_many(
                    [CounterDebt(admission.key_id, admission.day, requests, delta)]
                )
            else:
                await self.counters.settle(admission.key_id, admission.day, delta)
        except COUNTER_ERRORS as exc:
            COUNTER_HEALTH.settle_failures += 1
            COUNTER_HEALTH.failed(exc, "settling a request's tokens")
            self.settlements.owe(admission.key_id, admission.day, requests, delta)
        else:
            COUNTER_HEALTH.ok()

    async def snapshot(
        self, key: KeyRecord, *, tier: int | None = None, now: datetime | None = None
    ) -> Snapshot:
        """The key's day without counting anything; `QuotaUnavailable` when the store is down."""
        now = now or self.clock()
        if tier is None:
            tier = await self.tier_of(key, now)
        day = utc_day(now)
        try:
            use = await self.counters.read(key.id, day)
        except COUNTER_ERRORS as exc:
            COUNTER_HEALTH.failed(exc, "reading a key's counters")
            raise QuotaUnavailable(
                "The quota counters cannot be reached; "
                f"try again in {_UNAVAILABLE_RETRY_S} seconds.",
                headers={"retry-after": str(_UNAVAILABLE_RETRY_S)},
            ) from None
        return Snapshot(tier, self.tiers.limits_for(tier), day, use.requests, use.tokens)

    async def usage(self, key: KeyRecord) -> dict[str, Any]:
        """SPEC section 8's `/usage` answer for `key`, from the counters.

        `used.tokens` includes the reservations of requests still running.
        """
        return usage_dict(key, await self.snapshot(key))


def usage_dict(key: KeyRecord, snap: Snapshot) -> dict[str, Any]:
    """The `/usage` object of SPEC section 8 for one key's snapshot."""
    return {
        "object": "usage",
        "key_id": key.id,
        "tier": snap.tier,
        "day": snap.day.isoformat(),
        "limits": {
            "requests_per_day": snap.limits.requests_per_day,
            "tokens_per_day": snap.limits.tokens_per_day,
        },
        "used": {"requests": snap.requests, "tokens": snap.tokens},
        "remaining": {"requests": snap.remaining_requests, "tokens": snap.remaining_tokens},
        "resets_at": snap.resets_at.isoformat().replace("+00:00", "Z"),
    }
