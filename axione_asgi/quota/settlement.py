"""What the counters are still owed: settlements not yet sent, or that failed to arrive.

A request's settlement (its real token count replacing its reservation, or a
request admitted uncounted while the store was down) is a small adjustment
to two counters. On a shared store it does not need a round trip of its own:
`SettlementQueue` keeps adjustments merged per key and day, the next
admission carries them to the store in its own round trip (Redis: one
script), and a short timer sends whatever an idle process still holds. So a
request costs one round trip on the hot path, and the counters lag the real
count by at most `linger_s` while the process is idle.

When the store cannot be reached the adjustments stay queued and are sent
when it answers again (the timer backs off meanwhile). What is still owed
when the process stops is written to the usage ledger as debts, which any
replica takes back and pays once the store answers (`QuotaService`).

A call whose answer was lost may still have run (a Redis killed as it ran,
its append-only file already holding the call). Sending its adjustments
again could count them twice; not sending them, lose them. So on stores
that record their calls (`RedisDailyCounters`), what such a call carried,
or would have counted, becomes `Unresolved`: what to add if the call ran
and admitted, if it ran and admitted nothing, and if it never ran, decided
by the store from its record of the call, once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from axione_asgi.quota.counters import COUNTER_ERRORS, COUNTER_HEALTH

__all__ = ["CounterDebt", "CountersSink", "SettlementQueue", "Unresolved", "carried_group"]

logger = logging.getLogger("axione")

# How many keys' adjustments one admission carries: bounds that script's size.
CARRIED_PER_ADMISSION = 32
# How many a timer flush sends in one round trip.
_FLUSH_BATCH = 512
# How many lost calls one resolution settles.
_RESOLVE_BATCH = 64
_BACKOFF_S = (0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class CounterDebt:
    """Requests and tokens (either may be negative) owed to one key's day counters."""

    key_id: str
    day: date
    requests: int
    tokens: int


@dataclass(frozen=True, slots=True)
class Unresolved:
    """What one key's day counters get from a call whose answer was lost, by its fate.

    Entries of one `call` and `part` are settled together, and once.
    """

    call: int
    part: str
    key_id: str
    day: date
    # (requests, tokens, sign): tokens plus sign times the reservation the call granted.
    if_admitted: tuple[int, int, int]
    if_refused: tuple[int, int]  # it ran and admitted nothing (or only carried)
    if_not_run: tuple[int, int]


def carried_group(call: int, debts: Sequence[CounterDebt]) -> list[Unresolved]:
    """The settlements a lost call carried: applied if it ran, owed again if not."""
    return [
        Unresolved(call, "c", d.key_id, d.day, (0, 0, 0), (0, 0), (d.requests, d.tokens))
        for d in debts
    ]


class CountersSink(Protocol):
    """What the queue sends to (`DailyCounters`)."""

    def new_call(self) -> int:
        """A number for the next call, recorded by the store; 0 when it records none."""
        ...

    async def adjust_many(self, debts: Sequence[CounterDebt], call: int = 0) -> None:
        """Send adjustments, as call number `call`."""
        ...

    async def resolve(self, groups: Sequence[Sequence[Unresolved]]) -> None:
        """Settle lost calls from the store's record of them."""
        ...


class SettlementQueue:
    """Adjustments owed to the counters, merged per key and day, sent in batches."""

    def __init__(self, counters: CountersSink, *, linger_s: float = 0.02) -> None:
        self._counters = counters
        self.linger_s = linger_s
        self._owed: dict[tuple[str, date], list[int]] = {}
        self._unresolved: list[list[Unresolved]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._failures = 0
        self._draining = False

    def __len__(self) -> int:
        return len(self._owed)

    def owe(self, key_id: str, day: date, requests: int, tokens: int) -> None:
        """Queue an adjustment; sent with the next admission or after `linger_s`."""
        if not requests and not tokens:
            return
        entry = self._owed.get((key_id, day))
        if entry is None:
            self._owed[(key_id, day)] = [requests, tokens]
        else:
            entry[0] += requests
            entry[1] += tokens
            if not entry[0] and not entry[1]:
                del self._owed[(key_id, day)]
        self._schedule(self.linger_s)

    def take(self, limit: int = CARRIED_PER_ADMISSION) -> list[CounterDebt]:
        """Remove up to `limit` of the oldest adjustments, to be sent by the caller."""
        owed = self._owed
        if not owed:
            return []
        if len(owed) <= limit:
            self._owed = {}
            items = list(owed.items())
        else:
            items = [(k, owed.pop(k)) for k in list(itertools.islice(owed, limit))]
        return [CounterDebt(k, d, e[0], e[1]) for (k, d), e in items]

    def give_back(self, debts: Sequence[CounterDebt]) -> None:
        """The caller could not send these (and they surely did not arrive): owed again."""
        for debt in debts:
            self.owe(debt.key_id, debt.day, debt.requests, debt.tokens)

    def unresolved(self, group: list[Unresolved]) -> None:
        """Entries of one lost call and part, to settle from the store's record."""
        if group:
            self._unresolved.append(group)
            self._schedule(self.linger_s)

    @property
    def pending_calls(self) -> int:
        """Lost calls waiting to be settled."""
        return len(self._unresolved)

    async def _send(self, batch: list[CounterDebt]) -> None:
        """Send plain adjustments; a failure leaves them unresolved (or owed: no record)."""
        call = self._counters.new_call()
        try:
            await self._counters.adjust_many(batch, call)
        except BaseException:
            if call:
                self.unresolved(carried_group(call, batch))
            else:
                self.give_back(batch)
            raise

    async def _resolve_some(self) -> None:
        groups = self._unresolved[:_RESOLVE_BATCH]
        await self._counters.resolve(groups)
        del self._unresolved[: len(groups)]

    async def drain(self) -> list[CounterDebt]:
        """Send everything now (once, no retry); what could not be sent."""
        self._cancel_timer()
        self._draining = True  # no timer from here on: this sends what is left
        try:
            return await self._drain()
        finally:
            self._draining = False

    async def _drain(self) -> list[CounterDebt]:
        flushing = self._flushing
        if flushing is not None:
            # The flag ends its loop after the batch in hand (not cancelled
            # mid-send: that batch might be counted twice, or lost).
            await asyncio.wait({flushing}, timeout=3.0)
            if not flushing.done():
                flushing.cancel()
                await asyncio.wait({flushing}, timeout=1.0)
        left: list[CounterDebt] = []
        try:
            while self._unresolved:
                await self._resolve_some()
            while self._owed:
                await self._send(self.take(_FLUSH_BATCH))
        except COUNTER_ERRORS as exc:
            COUNTER_HEALTH.failed(exc, "sending the last settlements")
            # What did not go is kept (the ledger). A lost call's fate is
            # unknown now; with the store down it most likely never ran (a
            # refused connection), so what it would have counted then is kept.
            left.extend(self.take(len(self._owed)))
            guessed = [e for group in self._unresolved for e in group]
            self._unresolved.clear()
            left.extend(
                CounterDebt(e.key_id, e.day, *e.if_not_run) for e in guessed if any(e.if_not_run)
            )
            if guessed:
                logger.warning(
                    "%d settlements of calls whose answer was lost are kept as if those "
                    "calls never ran (the counters store is down: it cannot be asked)",
                    len(guessed),
                )
        return left

    # -- the timer -------------------------------------------------------------
    def _schedule(self, delay: float) -> None:
        if self._timer is not None or self._flushing is not None or self._draining:
            return  # a flush is due, or running: it takes this one too
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a sync caller): the next admission carries it
            return
        self._timer = loop.call_later(delay, self._start_flush)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _start_flush(self) -> None:
        self._timer = None
        if (self._owed or self._unresolved) and self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(
                self._flush(), name="axione-settlements"
            )

    async def _flush(self) -> None:
        try:
            while (self._owed or self._unresolved) and not self._draining:
                try:
                    if self._unresolved:
                        await self._resolve_some()
                    else:
                        # On failure the batch is kept (unresolved, or owed again).
                        await self._send(self.take(_FLUSH_BATCH))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # COUNTER_ERRORS, or a client's own bug: either way nothing is lost.
                    COUNTER_HEALTH.settle_failures += 1
                    COUNTER_HEALTH.failed(exc, "settling requests' tokens")
                    delay = _BACKOFF_S[min(self._failures, len(_BACKOFF_S) - 1)]
                    self._failures += 1
                    if not self._draining:
                        await asyncio.sleep(delay)
                else:
                    self._failures = 0
                    COUNTER_HEALTH.ok()
        finally:
            self._flushing = None
