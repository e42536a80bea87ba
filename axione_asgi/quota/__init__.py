"""Tiers, daily counters, the usage ledger and the service that joins them."""

from axione_asgi.quota.counters import DailyCounters, RedisDailyCounters, open_counters
from axione_asgi.quota.days import Clock, format_duration
from axione_asgi.quota.ledger import (
    Ledger,
    LedgerTotals,
    LedgerWriter,
    MemoryLedger,
    SQLiteLedger,
    UsageRecord,
    open_ledger,
)
from axione_asgi.quota.report import usage_report
from axione_asgi.quota.service import Admission, QuotaExceeded, QuotaService, Snapshot
from axione_asgi.quota.tiers import DayUse, TierTable

__all__ = [
    "Admission",
    "Clock",
    "DailyCounters",
    "DayUse",
    "Ledger",
    "LedgerTotals",
    "LedgerWriter",
    "MemoryLedger",
    "QuotaExceeded",
    "QuotaService",
    "RedisDailyCounters",
    "SQLiteLedger",
    "Snapshot",
    "TierTable",
    "UsageRecord",
    "format_duration",
    "open_counters",
    "open_ledger",
    "usage_report",
]
