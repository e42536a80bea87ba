"""Tiers, daily counters, the usage ledger and the service that joins them."""

from axione_asgi.quota.service import Admission, QuotaService

__all__ = ["Admission", "QuotaService"]
