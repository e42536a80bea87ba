"""QuotaService: daily request and token counters per key, keyed by UTC day."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from limits.aio.storage import Storage
from limits.storage import storage_from_string

from axione_asgi.config import AxioneConfig, TierLimits
from axione_asgi.errors import RateLimited
from axione_asgi.keys import KeyRecord, KeyStore

__all__ = ["Admission", "Clock", "QuotaService"]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Admission:
    """One admitted request's counters, as the headers report them."""

    day: date
    limits: TierLimits
    requests_used: int
    tokens_used: int
    reserved_tokens: int
    resets_at: datetime


class QuotaService:
    """Counts requests and tokens per key and UTC day on a `limits` storage."""

    def __init__(
        self,
        config: AxioneConfig,
        *,
        key_store: KeyStore,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.key_store = key_store
        self.clock = clock or utc_now
        self.tiers = config.tier_table()
        uri = config.storage.counters
        self.storage: Storage = storage_from_string(
            uri if uri.startswith("async+") else f"async+{uri}"
        )

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def limits_for(self, key: KeyRecord) -> TierLimits:
        return self.tiers.get(key.tier) or self.tiers[max(self.tiers)]

    def _day(self) -> tuple[date, datetime]:
        now = self.clock()
        day = now.astimezone(UTC).date()
        return day, datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)

    def _key(self, kind: str, key: KeyRecord, day: date) -> str:
        return f"axione/{kind}/{key.id}/{day.isoformat()}"

    async def admit(self, key: KeyRecord, reserve_tokens: int) -> Admission:
        day, resets_at = self._day()
        lim = self.limits_for(key)
        expiry = 2 * 86400
        used = await self.storage.incr(self._key("req", key, day), expiry, 1)
        tokens = await self.storage.get(self._key("tok", key, day))
        retry = {"retry-after": str(max(1, int((resets_at - self.clock()).total_seconds())))}
        if used > lim.requests_per_day:
            await self.storage.incr(self._key("req", key, day), expiry, -1)
            raise RateLimited(
                f"Daily request limit of {lim.requests_per_day} reached for tier {key.tier}",
                code="daily_request_limit_exceeded",
                headers=retry,
            )
        if tokens >= lim.tokens_per_day:
            await self.storage.incr(self._key("req", key, day), expiry, -1)
            raise RateLimited(
                f"Daily token limit of {lim.tokens_per_day} reached for tier {key.tier}",
                code="daily_token_limit_exceeded",
                headers=retry,
            )
        return Admission(day, lim, used, tokens, reserve_tokens, resets_at)

    async def settle(self, key: KeyRecord, admission: Admission, tokens: int) -> None:
        if tokens:
            await self.storage.incr(self._key("tok", key, admission.day), 2 * 86400, tokens)

    async def usage(self, key: KeyRecord) -> dict[str, Any]:
        day, resets_at = self._day()
        lim = self.limits_for(key)
        req = await self.storage.get(self._key("req", key, day))
        tok = await self.storage.get(self._key("tok", key, day))
        return {
            "object": "usage",
            "key_id": key.id,
            "tier": key.tier,
            "day": day.isoformat(),
            "limits": {"requests_per_day": lim.requests_per_day, "tokens_per_day": lim.tokens_per_day},
            "used": {"requests": req, "tokens": tok},
            "remaining": {
                "requests": max(0, lim.requests_per_day - req),
                "tokens": max(0, lim.tokens_per_day - tok),
            },
            "resets_at": resets_at.isoformat().replace("+00:00", "Z"),
        }
