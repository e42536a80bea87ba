"""Tiers and the auto-upgrade policy: pure decisions, no storage."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from axione_asgi.config import TierLimits, TierPolicy

__all__ = ["DayUse", "TierTable"]


@dataclass(frozen=True, slots=True)
class DayUse:
    """What a key used on one UTC day, as the counters hold it."""

    requests: int = 0
    tokens: int = 0


class TierTable:
    """The configured tier table (SPEC section 3 plus overrides) and its policy."""

    def __init__(self, table: Mapping[int, TierLimits], policy: TierPolicy) -> None:
        if not table:
            raise ValueError("the tier table is empty")
        self.table = dict(table)
        self.policy = policy

    def limits_for(self, tier: int) -> TierLimits:
        """A tier's limits; a tier missing from the table gets the nearest lower one."""
        found = self.table.get(tier)
        if found is not None:
            return found
        lower = [t for t in self.table if t < tier]
        return self.table[max(lower)] if lower else self.table[min(self.table)]

    def can_rise(self, tier: int) -> bool:
        """Whether a key at `tier` could ever be promoted automatically."""
        nxt = tier + 1
        return self.policy.auto_upgrade and nxt <= self.policy.max_auto_tier and nxt in self.table

    def promotion(self, tier: int, yesterday: DayUse) -> int | None:
        """The tier a key moves to at rollover, or None to stay.

        One step up when yesterday's use reached `threshold` of the request or
        the token limit of the tier it had; never past `max_auto_tier`, never down.
        """
        if not self.can_rise(tier):
            return None
        limits = self.limits_for(tier)
        threshold = self.policy.threshold
        # Rounded up with a hair of slack so 0.8 * 1000 means 800, not 800.0000001.
        need_requests = math.ceil(threshold * limits.requests_per_day - 1e-9)
        need_tokens = math.ceil(threshold * limits.tokens_per_day - 1e-9)
        if yesterday.requests >= need_requests or yesterday.tokens >= need_tokens:
            return tier + 1
        return None
