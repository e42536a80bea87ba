"""Usage over days and by model, read from the ledger (the usage page and the admin API)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from axione_asgi.quota.ledger import Ledger, LedgerTotals

__all__ = ["daily_history", "model_totals"]


def daily_history(ledger: Ledger, key_id: str, *, days: int, today: date) -> list[dict[str, Any]]:
    """One entry per UTC day, oldest first, the last `days` days up to `today` (zeros included).

    Blocks (the ledger does): call it from a thread.
    """
    out: list[dict[str, Any]] = []
    for back in range(days - 1, -1, -1):
        day = today - timedelta(days=back)
        summed = ledger.totals(day=day, key_id=key_id).get(key_id, LedgerTotals())
        out.append(
            {
                "day": day.isoformat(),
                "requests": summed.requests,
                "prompt_tokens": summed.prompt_tokens,
                "completion_tokens": summed.completion_tokens,
                "total_tokens": summed.total_tokens,
            }
        )
    return out


def model_totals(ledger: Ledger, *, day: date, key_id: str | None = None) -> list[dict[str, Any]]:
    """One entry per model used on `day` (by one key or all), most tokens first.

    Blocks (the ledger does): call it from a thread.
    """
    rows: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for r in ledger.records(key_id=key_id, day=day):
        row = rows.setdefault(
            (r.provider, r.model),
            {
                "model": r.model,
                "provider": r.provider,
                "requests": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
                "estimated_requests": 0,
                "failed_requests": 0,
            },
        )
        row["requests"] += 1
        row["prompt_tokens"] += r.prompt_tokens
        row["completion_tokens"] += r.completion_tokens
        row["total_tokens"] += r.total_tokens
        row["estimated_requests"] += int(r.estimated)
        row["failed_requests"] += int(r.status >= 400)
    return sorted(rows.values(), key=lambda row: (-row["total_tokens"], str(row["model"])))
