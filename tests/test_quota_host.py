"""TierQuotaMiddleware around a host's own Starlette routes."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from axione_asgi import ErrorFormatMiddleware, KeyAuthMiddleware, TierQuotaMiddleware
from axione_asgi.quota import QuotaService
from axione_asgi.scope import quota_of
from axione_asgi.stores import MemoryKeyStore
from tests.quota_app import asgi_client, quota_config

pytestmark = pytest.mark.anyio

THREE_A_DAY = {1: {"requests_per_day": 3, "tokens_per_day": 1_000}}


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def metered(request: Request) -> JSONResponse:
    quota = quota_of(request.scope)
    assert quota is not None
    await quota.admit(reserve_tokens=50, model="host/summary", provider="host")
    quota.report(prompt_tokens=30, completion_tokens=12)
    return JSONResponse({"ok": True})


def host_app(quota: QuotaService, store: MemoryKeyStore) -> Starlette:
    return Starlette(
        routes=[Route("/hello", hello), Route("/metered", metered)],
        middleware=[
            Middleware(ErrorFormatMiddleware),
            Middleware(KeyAuthMiddleware, key_store=store),
            Middleware(TierQuotaMiddleware, service=quota),
        ],
    )


async def test_host_route_that_never_admits_counts_one_request_and_no_tokens() -> None:
    store = MemoryKeyStore()
    record, secret = await store.create("host")
    quota = QuotaService(quota_config(tiers=THREE_A_DAY), key_store=store)
    auth = {"authorization": f"Bearer {secret}"}
    async with asgi_client(host_app(quota, store)) as client:
        response = await client.get("/hello", headers=auth)
        assert response.status_code == 200 and response.text == "hello"
        assert response.headers["x-ratelimit-remaining-requests"] == "2"
        assert response.headers["x-ratelimit-remaining-tokens"] == "1000"
    usage = await quota.usage(record)
    assert usage["used"] == {"requests": 1, "tokens": 0}
    await quota.stop()
    (entry,) = quota.ledger.records(key_id=record.id)
    assert (entry.prompt_tokens, entry.completion_tokens, entry.status) == (0, 0, 200)
    assert entry.model is None


async def test_host_route_is_refused_with_429_once_its_day_is_spent() -> None:
    store = MemoryKeyStore()
    _, secret = await store.create("host")
    quota = QuotaService(quota_config(tiers=THREE_A_DAY), key_store=store)
    auth = {"authorization": f"Bearer {secret}"}
    async with asgi_client(host_app(quota, store)) as client:
        statuses = [(await client.get("/hello", headers=auth)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = await client.get("/hello", headers=auth)
        assert refused.json()["error"]["code"] == "daily_request_limit_exceeded"
        assert "retry-after" in refused.headers
        assert "hello" not in refused.text
    await quota.stop()


async def test_host_route_reporting_usage_is_metered_like_the_gateway() -> None:
    store = MemoryKeyStore()
    record, secret = await store.create("host")
    quota = QuotaService(quota_config(tiers=THREE_A_DAY), key_store=store)
    async with asgi_client(host_app(quota, store)) as client:
        response = await client.get("/metered", headers={"authorization": f"Bearer {secret}"})
        assert response.headers["x-ratelimit-remaining-tokens"] == "950"
    assert (await quota.usage(record))["used"] == {"requests": 1, "tokens": 42}
    await quota.stop()
    (entry,) = quota.ledger.records()
    assert (entry.model, entry.provider, entry.total_tokens) == ("host/summary", "host", 42)


async def test_requests_without_a_key_pass_through_unmetered() -> None:
    store = MemoryKeyStore()
    quota = QuotaService(quota_config(), key_store=store)
    app = Starlette(
        routes=[Route("/hello", hello)], middleware=[Middleware(TierQuotaMiddleware, service=quota)]
    )
    async with asgi_client(app) as client:
        response = await client.get("/hello")
        assert response.status_code == 200
        assert "x-ratelimit-limit-requests" not in response.headers
    await quota.stop()
    assert quota.ledger.records() == []
