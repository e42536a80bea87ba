"""The response cache keeps the end users behind one gateway key apart (`user` is in the key)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from axione_asgi import AxioneConfig, create_app
from axione_asgi.cache import cache_key
from axione_asgi.openai_types import ChatCompletionRequest
from axione_asgi.stores import MemoryKeyStore
from tests.test_response_cache import CountingDemo

pytestmark = pytest.mark.anyio

BASE: dict[str, Any] = {
    "model": "count/echo",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0,
}


def key(body: dict[str, Any], scope: str = "key:a") -> str:
    return cache_key(ChatCompletionRequest.model_validate(body), scope)


@given(a=st.text(max_size=30), b=st.text(max_size=30))
@settings(max_examples=100, deadline=None)
def test_two_end_users_never_share_an_entry(a: str, b: str) -> None:
    assume(a != b)
    assert key({**BASE, "user": a}) != key({**BASE, "user": b})
    assert key({**BASE, "user": a}) != key(BASE)
    assert key({**BASE, "user": a}) == key({**BASE, "user": a})


@pytest.mark.parametrize("scope", ["key:a", "shared"])
async def test_a_cached_answer_for_one_user_is_not_served_to_another(scope: str) -> None:
    config = AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", "counters": "memory://"},
            "cache": {
                "enabled": True,
                **({"shared_across_keys": True} if scope == "shared" else {}),
            },
        }
    )
    store = MemoryKeyStore()
    provider = CountingDemo()
    app = create_app(config, providers={"count": provider}, key_store=store)
    _, secret = await store.create("one key, many users")
    auth = {"authorization": f"Bearer {secret}"}
    transport = httpx.ASGITransport(app=app)
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://t") as http:

        async def ask(user: str) -> httpx.Response:
            body = {**BASE, "user": user}
            response = await http.post("/chat/completions", json=body, headers=auth)
            assert response.status_code == 200, response.text
            return response

        await ask("alice")
        assert (await ask("alice")).headers.get("x-axione-cache") == "hit"
        bob = await ask("bob")
        assert bob.headers.get("x-axione-cache") != "hit"
        assert provider.calls == 2
