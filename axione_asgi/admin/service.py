"""Key and usage operations: one service behind `axione keys|usage` and the admin API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import anyio.to_thread

from axione_asgi.config import AxioneConfig
from axione_asgi.key_events import KeyEvents
from axione_asgi.keys import KeyRecord, KeyStore
from axione_asgi.quota.counters import DailyCounters
from axione_asgi.quota.days import Clock, utc_day, utc_now
from axione_asgi.quota.history import daily_history, model_totals
from axione_asgi.quota.ledger import Ledger, open_ledger
from axione_asgi.quota.report import usage_report

__all__ = ["MAX_HISTORY_DAYS", "MAX_NAME_LENGTH", "AdminService", "KeyNotFound", "key_dict"]

MAX_NAME_LENGTH = 200
MAX_HISTORY_DAYS = 366


class KeyNotFound(LookupError):
    """No key has this id."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key with id {key_id}")
        self.key_id = key_id


def key_dict(record: KeyRecord) -> dict[str, Any]:
    """A key as the admin API shows it: never its secret or its hash."""
    return {
        "object": "api_key",
        "id": record.id,
        "name": record.name,
        "tier": record.tier,
        "prefix": record.prefix,
        "created": record.created.isoformat() if record.source == "store" else None,
        "revoked": record.revoked,
        "source": record.source,
        "models": list(record.models) if record.models is not None else None,
    }


class AdminService:
    """Create, list, revoke and re-tier keys; read usage per key, per day and per model.

    Raises `ValueError` for a request that cannot be done (an unknown tier, a
    config-declared key) and `KeyNotFound` for an unknown id. Give it the
    app's ledger and counters to read live numbers; without them it opens the
    ledger `storage.ledger` names on first use (`aclose` closes it).
    `on_change` is called with each key record revoked or re-tiered (the app
    uses it to drop its cached lookup of that key); `key_events`, when given,
    announces the change to every other worker and replica.
    """

    def __init__(
        self,
        config: AxioneConfig,
        key_store: KeyStore,
        *,
        ledger: Ledger | None = None,
        counters: DailyCounters | None = None,
        clock: Clock | None = None,
        on_change: Callable[[KeyRecord], None] | None = None,
        key_events: KeyEvents | None = None,
    ) -> None:
        self.config = config
        self.key_store = key_store
        self.counters = counters
        self.clock = clock or utc_now
        self.on_change = on_change
        self.key_events = key_events
        self._ledger = ledger
        self._owns_ledger = ledger is None

    @property
    def ledger(self) -> Ledger:
        """The usage ledger (opened on first use when none was given)."""
        if self._ledger is None:
            self._ledger = open_ledger(self.config.storage.ledger)
        return self._ledger

    async def aclose(self) -> None:
        """Close the ledger this service opened itself (never the key store)."""
        if self._owns_ledger and self._ledger is not None:
            ledger, self._ledger = self._ledger, None
            await anyio.to_thread.run_sync(ledger.close)

    def today(self) -> date:
        """The current UTC day on this service's clock."""
        return utc_day(self.clock())

    # -- keys ----------------------------------------------------------------
    def check_tier(self, tier: int) -> None:
        """Raise `ValueError` unless `tier` is in the tier table."""
        table = self.config.tier_table()
        if tier not in table:
            known = ", ".join(str(t) for t in sorted(table))
            raise ValueError(f"tier {tier} is not defined (known tiers: {known})")

    async def create_key(self, name: str, tier: int = 1) -> tuple[KeyRecord, str]:
        """A new key; returns its record and the secret, to be shown once."""
        name = name.strip()
        if not name or len(name) > MAX_NAME_LENGTH:
            raise ValueError(f"a key needs a name of 1 to {MAX_NAME_LENGTH} characters")
        self.check_tier(tier)
        return await self.key_store.create(name, tier)

    async def list_keys(self) -> list[KeyRecord]:
        """Every key, config-declared ones first, then oldest first."""
        return list(await self.key_store.list())

    async def get_key(self, key_id: str) -> KeyRecord:
        """The key with this id."""
        record = await self.key_store.get(key_id)
        if record is None:
            raise KeyNotFound(key_id)
        return record

    async def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke a key (it stays listed, marked revoked); returns the new record."""
        if not await self.key_store.revoke(key_id):
            raise KeyNotFound(key_id)
        return await self._changed(key_id)

    async def set_tier(self, key_id: str, tier: int) -> KeyRecord:
        """Set a key's tier by hand (any defined tier); returns the new record."""
        self.check_tier(tier)
        if not await self.key_store.set_tier(key_id, tier):
            raise KeyNotFound(key_id)
        return await self._changed(key_id)

    async def _changed(self, key_id: str) -> KeyRecord:
        record = await self.get_key(key_id)
        if self.on_change is not None:
            self.on_change(record)
        if self.key_events is not None:
            await self.key_events.publish(record.key_hash)
        return record

    # -- usage ---------------------------------------------------------------
    async def usage(
        self, key_id: str | None = None, day: date | None = None
    ) -> list[dict[str, Any]]:
        """Per key (or for `key_id`), a UTC day's use against its limits (`usage_report`)."""
        return await usage_report(
            self.config,
            key_id,
            key_store=self.key_store,
            day=day,
            clock=self.clock,
            counters=self.counters,
            ledger=self._ledger,
        )

    async def usage_by_model(
        self, day: date | None = None, key_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Per model, a UTC day's requests and tokens from the ledger (of one key or all)."""
        if key_id is not None:
            await self.get_key(key_id)
        when = day or self.today()
        ledger = self.ledger
        return await anyio.to_thread.run_sync(lambda: model_totals(ledger, day=when, key_id=key_id))

    async def history(
        self, key_id: str, days: int = 30, today: date | None = None
    ) -> list[dict[str, Any]]:
        """A key's requests and tokens per UTC day, oldest first, ending today."""
        if not 1 <= days <= MAX_HISTORY_DAYS:
            raise ValueError(f"days must be between 1 and {MAX_HISTORY_DAYS}")
        when = today or self.today()
        ledger = self.ledger
        return await anyio.to_thread.run_sync(
            lambda: daily_history(ledger, key_id, days=days, today=when)
        )
