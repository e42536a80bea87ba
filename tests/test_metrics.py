"""Prometheus metrics: opt-in at `[metrics] path`, counters right after traffic, free when off."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from axione_asgi import AxioneConfig, ConfigError, create_app
from axione_asgi.observability import build_observability
from tests.fixed_provider import COMPLETION_TOKENS, PROMPT_TOKENS, FixedProvider, chat_body

pytestmark = pytest.mark.anyio


def _config(**metrics: object) -> AxioneConfig:
    return AxioneConfig.from_mapping(
        {"storage": {"keys": "memory://", "ledger": "memory://"}, "metrics": metrics}
    )


async def _client(config: AxioneConfig) -> httpx.AsyncClient:
    app = create_app(config, providers={"fixed": FixedProvider()})
    _, secret = await app.runtime.key_store.create("scraped")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://axione")
    client.headers["authorization"] = f"Bearer {secret}"
    return client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(_config(enabled=True)) as c:
        yield c


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


async def test_scrape_after_traffic_counts_requests_tokens_and_latencies(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        assert (await client.post("/chat/completions", json=chat_body())).status_code == 200
    assert (await client.post("/chat/completions", json=chat_body(stream=True))).status_code == 200
    assert (
        await client.post("/chat/completions", json=chat_body("fixed/broken"))
    ).status_code == 502
    scrape = await client.get("/metrics", headers={"authorization": ""})
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    samples = _samples(scrape.text)
    model = {"provider": "fixed", "model": "fixed/m"}
    assert samples[("axione_requests_total", _labels(**model, status="200"))] == 4
    assert (
        samples[
            ("axione_requests_total", _labels(provider="fixed", model="fixed/broken", status="502"))
        ]
        == 1
    )
    assert samples[("axione_tokens_total", _labels(**model, kind="prompt"))] == 4 * PROMPT_TOKENS
    assert (
        samples[("axione_tokens_total", _labels(**model, kind="completion"))]
        == 4 * COMPLETION_TOKENS
    )
    assert samples[("axione_request_duration_seconds_count", _labels(**model))] == 4
    assert samples[("axione_upstream_duration_seconds_count", _labels(**model))] == 4
    errors = (
        "axione_upstream_errors_total",
        _labels(provider="fixed", code="upstream_auth_failed"),
    )
    assert samples[errors] == 1


async def test_scrape_is_not_itself_counted_or_metered(client: httpx.AsyncClient) -> None:
    await client.get("/metrics")
    second = await client.get("/metrics")
    assert "x-ratelimit-limit-requests" not in second.headers
    assert not any(name == "axione_requests_total" for name, _ in _samples(second.text))


async def test_metrics_path_is_configurable(client: httpx.AsyncClient) -> None:
    async with await _client(_config(enabled=True, path="/internal/prom")) as c:
        assert (await c.get("/internal/prom")).status_code == 200
        assert (await c.get("/metrics")).status_code == 404


async def test_no_metrics_route_when_disabled() -> None:
    async with await _client(_config()) as c:
        with_key = await c.get("/metrics")
        without_key = await c.get("/metrics", headers={"authorization": ""})
    assert with_key.status_code == 404
    assert without_key.status_code == 401


def test_disabled_metrics_build_no_collector() -> None:
    hub = build_observability(_config())
    assert hub is None or hub.metrics is None


def test_enabled_metrics_without_prometheus_client_stop_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "axione_asgi.observability.metrics", raising=False)
    with pytest.raises(ConfigError, match=r"axione-asgi\[metrics\]"):
        create_app(_config(enabled=True))
