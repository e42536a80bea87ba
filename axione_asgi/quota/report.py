"""Usage reports for operators (`axione usage [KEY_ID]`), from the ledger and the counters."""

from __future__ import annotations

from datetime import date
from typing import Any

import anyio.to_thread

from axione_asgi.config import AxioneConfig
from axione_asgi.keys import KeyRecord, KeyStore
from axione_asgi.quota.counters import DailyCounters, open_counters
from axione_asgi.quota.days import Clock, utc_day, utc_now
from axione_asgi.quota.ledger import Ledger, LedgerTotals, open_ledger
from axione_asgi.quota.service import Snapshot, usage_dict
from axione_asgi.quota.tiers import TierTable

__all__ = ["usage_report"]


async def usage_report(
    config: AxioneConfig,
    key_id: str | None = None,
    *,
    key_store: KeyStore,
    day: date | None = None,
    clock: Clock | None = None,
    counters: DailyCounters | None = None,
    ledger: Ledger | None = None,
) -> list[dict[str, Any]]:
    """One usage object per key (or for `key_id` alone) for a UTC day (today by default).

    Each is the `/usage` object of SPEC section 8 plus `name` and `ledger`
    (the day's records summed: `requests`, `prompt_tokens`,
    `completion_tokens`, `total_tokens`, `estimated_requests`), and
    `counted_by`: `"counters"` when `storage.counters` is shared (Redis and
    the like, so `used` is live and includes running requests' reservations),
    `"ledger"` when it is `memory://` (another process's memory is out of
    reach, so `used` comes from the ledger, a fraction of a second behind).

    Raises `LookupError` when `key_id` names no key.
    """
    day = day or utc_day((clock or utc_now)())
    if key_id is not None:
        record = await key_store.get(key_id)
        if record is None:
            raise LookupError(f"no key with id {key_id}")
        keys: list[KeyRecord] = [record]
    else:
        keys = list(await key_store.list())
    tiers = TierTable(config.tier_table(), config.tier_policy)
    own_ledger = ledger is None
    book = ledger or open_ledger(config.storage.ledger)
    shared = counters is not None or config.storage.counters != "memory://"
    own_counters = counters is None and shared
    live = counters or (open_counters(config.storage.counters) if shared else None)
    try:
        totals = await anyio.to_thread.run_sync(lambda: book.totals(day=day, key_id=key_id))
        out: list[dict[str, Any]] = []
        for key in keys:
            summed = totals.get(key.id, LedgerTotals())
            if live is not None:
                use = await live.read(key.id, day)
                requests, tokens = use.requests, use.tokens
            else:
                requests, tokens = summed.requests, summed.total_tokens
            snap = Snapshot(key.tier, tiers.limits_for(key.tier), day, requests, tokens)
            report = usage_dict(key, snap)
            report["name"] = key.name
            report["counted_by"] = "counters" if live is not None else "ledger"
            report["ledger"] = {
                "requests": summed.requests,
                "prompt_tokens": summed.prompt_tokens,
                "completion_tokens": summed.completion_tokens,
                "total_tokens": summed.total_tokens,
                "estimated_requests": summed.estimated_requests,
            }
            out.append(report)
        return out
    finally:
        if own_counters and live is not None:
            await live.close()
        if own_ledger:
            await anyio.to_thread.run_sync(book.close)
