"""Browsers on another origin: preflight answered without a key, answers readable."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.stores import MemoryKeyStore

pytestmark = pytest.mark.anyio

ORIGIN = "https://app.example"


async def _client(**cors: object) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    config = AxioneConfig.from_mapping(
        {"storage": {"keys": "memory://", "ledger": "memory://"}, "cors": cors}
    )
    store = MemoryKeyStore()
    _, key = await store.create("browser")
    app = create_app(config, key_store=store)
    async with (
        app.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://axione"
        ) as client,
    ):
        yield client, key


@pytest.fixture
async def allowed() -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async for pair in _client(allow_origins=[ORIGIN]):
        yield pair


PREFLIGHT = {
    "origin": ORIGIN,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type",
}


async def test_preflight_is_answered_without_a_key(
    allowed: tuple[httpx.AsyncClient, str],
) -> None:
    client, _ = allowed
    answer = await client.options("/chat/completions", headers=PREFLIGHT)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()


async def test_answers_let_the_browser_read_the_rate_limit_headers(
    allowed: tuple[httpx.AsyncClient, str],
) -> None:
    client, key = allowed
    answer = await client.post(
        "/chat/completions",
        headers={"origin": ORIGIN, "authorization": f"Bearer {key}"},
        json={"model": "demo/echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    exposed = answer.headers["access-control-expose-headers"].lower()
    assert "x-ratelimit-remaining-requests" in exposed
    assert "x-request-id" in exposed


async def test_other_origins_get_no_cors_headers(
    allowed: tuple[httpx.AsyncClient, str],
) -> None:
    client, _ = allowed
    answer = await client.options(
        "/chat/completions", headers={**PREFLIGHT, "origin": "https://evil.example"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "access-control-allow-origin" not in answer.headers


async def test_cors_is_off_by_default() -> None:
    async for client, _ in _client():
        answer = await client.options("/chat/completions", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in answer.headers
