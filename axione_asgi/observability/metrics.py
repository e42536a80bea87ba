"""Prometheus metrics (`axione-asgi[metrics]`): imported only when `[metrics] enabled = true`."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from axione_asgi.quota.counters import CACHE_HEALTH, COUNTER_HEALTH, StoreHealth
from axione_asgi.quota.ledger import LEDGER_HEALTH, LedgerHealth
from axione_asgi.scope import exempt_from_quota

__all__ = ["LATENCY_BUCKETS", "PrometheusMetrics"]

# Seconds: from a cached answer to a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class PrometheusMetrics:
    """The gateway's metrics, on a registry of their own (one per app).

    Labels stay bounded: `model` and `provider` come from the registry's
    routes (never from what a client typed), empty for requests that reached
    no model; `code` is one of the SPEC error codes.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "axione_requests",
            "Requests answered, by provider, model and HTTP status (499: client went away).",
            ["provider", "model", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "axione_tokens",
            "Tokens counted against quotas (as the upstream reports them, else estimated), "
            "by provider, model and kind (prompt or completion).",
            ["provider", "model", "kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "axione_request_duration_seconds",
            "Time from a request's arrival to the end of its response, streams included.",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "axione_upstream_duration_seconds",
            "Time waiting on one upstream call (for a stream: until its first chunk).",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "axione_upstream_errors",
            "Failed upstream calls (retries included), by provider and error code.",
            ["provider", "code"],
            registry=self.registry,
        )
        self.registry.register(LedgerCollector(LEDGER_HEALTH))
        self.registry.register(StoreCollector(COUNTER_HEALTH, CACHE_HEALTH))

    def observe_request(
        self,
        provider: str | None,
        model: str | None,
        status: int,
        seconds: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        """Count one finished request."""
        provider, model = provider or "", model or ""
        self.requests.labels(provider, model, str(status)).inc()
        self.latency.labels(provider, model).observe(seconds)
        if prompt_tokens:
            self.tokens.labels(provider, model, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(provider, model, "completion").inc(completion_tokens)

    def observe_upstream(self, provider: str, model: str, seconds: float, code: str | None) -> None:
        """Time one upstream call, and count it when it failed."""
        self.upstream_latency.labels(provider, model).observe(seconds)
        if code is not None:
            self.upstream_errors.labels(provider, code).inc()

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        """The scrape endpoint (served without a key, never metered)."""
        exempt_from_quota(request.scope)
        return Response(self.exposition(), headers={"content-type": CONTENT_TYPE_LATEST})


class LedgerCollector(Collector):
    """The usage ledger's writers of this process, read from their `LedgerHealth` at scrape time."""

    def __init__(self, health: LedgerHealth) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        h = self.health
        yield CounterMetricFamily(
            "axione_ledger_records_written", "Usage records written to the ledger.", h.written
        )
        yield CounterMetricFamily(
            "axione_ledger_write_failures",
            "Failed ledger writes (each retried, or its records spilled).",
            h.write_failures,
        )
        yield CounterMetricFamily(
            "axione_ledger_records_spilled",
            "Usage records the ledger could not take, kept in its spill file.",
            h.spilled,
        )
        yield CounterMetricFamily(
            "axione_ledger_records_replayed",
            "Spilled usage records written to the ledger later.",
            h.replayed,
        )
        yield CounterMetricFamily(
            "axione_ledger_records_lost",
            "Usage records neither written nor spilled (each loss is logged).",
            h.lost,
        )
        yield GaugeMetricFamily(
            "axione_ledger_records_pending",
            "Usage records waiting to be written (queued, or kept after a failed write).",
            h.pending(),
        )


class StoreCollector(Collector):
    """The quota counters' and the response cache's stores (Redis), from their `StoreHealth`."""

    def __init__(self, counters: StoreHealth, cache: StoreHealth) -> None:
        self.counters = counters
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        c, k = self.counters, self.cache
        failures = CounterMetricFamily(
            "axione_store_failures",
            "Failed operations on the counters or cache store (unreachable, timed out, "
            "no free pooled connection), by store.",
            labels=["store"],
        )
        outages = CounterMetricFamily(
            "axione_store_outages",
            "Times a store stopped answering (each logged once, with its recovery).",
            labels=["store"],
        )
        up = GaugeMetricFamily(
            "axione_store_up", "1 while the store answers, 0 during an outage.", labels=["store"]
        )
        for name, h in (("counters", c), ("cache", k)):
            failures.add_metric([name], h.failures)
            outages.add_metric([name], h.outages)
            up.add_metric([name], 0 if h.down else 1)
        yield failures
        yield outages
        yield up
        yield CounterMetricFamily(
            "axione_quota_unavailable",
            "Requests refused with 503 quota_unavailable: counters store down, "
            'on_counter_failure = "closed".',
            c.refused,
        )
        yield CounterMetricFamily(
            "axione_quota_uncounted_admissions",
            'Requests admitted uncounted: counters store down, on_counter_failure = "open".',
            c.uncounted,
        )
        yield CounterMetricFamily(
            "axione_quota_settle_failures",
            "Settlements the counters store could not take (the ledger has the record).",
            c.settle_failures,
        )
