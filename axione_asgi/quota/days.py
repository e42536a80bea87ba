"""UTC calendar days: which day a moment falls in, when it ends, and OpenAI's duration format."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

__all__ = ["Clock", "format_duration", "next_midnight", "seconds_until", "utc_day", "utc_now"]

Clock = Callable[[], datetime]
"""A callable returning an aware UTC `datetime`; tests inject one to move days."""


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


def utc_day(moment: datetime) -> date:
    """The UTC calendar day `moment` falls in (naive moments are taken as UTC)."""
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(UTC).date()


def next_midnight(day: date) -> datetime:
    """00:00 UTC of the day after `day`: when that day's counters reset."""
    return datetime.combine(day + timedelta(days=1), time.min, UTC)


def seconds_until(moment: datetime, until: datetime) -> int:
    """Whole seconds from `moment` to `until`, rounded up so a wait never ends early."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, math.ceil((until - moment).total_seconds()))


def format_duration(seconds: float) -> str:
    """OpenAI's duration format for `x-ratelimit-reset-*`: `6h3m2s`, `59s`, `0s`."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"{hours}h" if hours else ""
    if minutes:
        out += f"{minutes}m"
    if secs or not out:
        out += f"{secs}s"
    return out
