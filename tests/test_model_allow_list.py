"""A key's `models` allow-list: fallbacks it may not use are skipped; `/models` is per key."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axione_asgi import AxioneConfig, create_app
from axione_asgi.errors import ModelNotAllowed
from axione_asgi.exchange.pipeline import Pipeline
from axione_asgi.keys import KeyRecord, hash_key
from tests.helpers import assert_spec_error
from tests.quota_app import asgi_client

pytestmark = pytest.mark.anyio

DEMO = ("demo/echo", "demo/lorem")


def config_for(allowed: list[str] | None, fallbacks: dict[str, list[str]]) -> tuple[Any, str]:
    secret = "sk-ax-test-" + secrets.token_urlsafe(24)
    key: dict[str, Any] = {"name": "listed", "key_sha256": hash_key(secret)}
    if allowed is not None:
        key["models"] = allowed
    config = AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", "counters": "memory://"},
            "providers": {"demo": {"kind": "demo"}},
            "fallbacks": fallbacks,
            "aliases": {"echo": "demo/echo", "lorem": "demo/lorem"},
            "keys": [key],
        }
    )
    return config, secret


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_a_fallback_the_key_may_not_use_is_skipped() -> None:
    config, secret = config_for(["demo/echo"], {"demo/echo": ["demo/lorem"]})
    app = create_app(config)
    auth = {"authorization": f"Bearer {secret}"}
    async with app.lifespan(), asgi_client(app) as client:
        response = await client.post("/chat/completions", json=chat("demo/echo"), headers=auth)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "demo/echo"
        # The model asked for is still refused when the key may not use it.
        response = await client.post("/chat/completions", json=chat("demo/lorem"), headers=auth)
        assert_spec_error(response, 403, "model_not_allowed")
        # So is a model the client itself names in `models`.
        body = chat("demo/echo", models=["demo/lorem"])
        response = await client.post("/chat/completions", json=body, headers=auth)
        assert_spec_error(response, 403, "model_not_allowed")


async def test_candidates_drop_only_the_fallbacks_the_key_may_not_use() -> None:
    config, _ = config_for(None, {"demo/echo": ["demo/lorem"], "demo/lorem": ["demo/echo"]})
    pipeline = Pipeline(create_app(config).runtime.registry, config, None)
    echo_only = KeyRecord(
        id="key_x",
        name="x",
        tier=1,
        prefix="sk-ax-x",
        key_hash="0" * 64,
        created=datetime.now(UTC),
        models=("demo/echo",),
    )
    names = [r.public_id for r in pipeline.candidates(["demo/echo"], echo_only)]
    assert names == ["demo/echo"]
    names = [r.public_id for r in pipeline.candidates(["demo/echo"], None)]
    assert names == ["demo/echo", "demo/lorem"]
    with pytest.raises(ModelNotAllowed):
        pipeline.candidates(["demo/lorem"], echo_only)


@given(allowed=st.one_of(st.none(), st.lists(st.sampled_from(DEMO), unique=True)))
@settings(max_examples=20, deadline=None)
def test_models_lists_only_what_the_key_may_use(allowed: list[str] | None) -> None:
    anyio.run(_models_listing, allowed)


async def _models_listing(allowed: list[str] | None) -> None:
    config, secret = config_for(allowed, {})
    app = create_app(config)
    auth = {"authorization": f"Bearer {secret}"}
    async with app.lifespan(), asgi_client(app) as client:
        response = await client.get("/models", headers=auth)
        assert response.status_code == 200
        listed = {m["id"]: m for m in response.json()["data"]}
        for model_id, entry in listed.items():
            target = entry.get("alias_of", model_id)
            assert allowed is None or target in allowed, model_id
        for model_id in DEMO:
            shown = model_id in listed
            may = allowed is None or model_id in allowed
            assert shown == may
            one = await client.get(f"/models/{model_id}", headers=auth)
            if may:
                assert one.status_code == 200 and one.json()["id"] == model_id
            else:
                assert_spec_error(one, 404, "model_not_found")
        for alias, target in (("echo", "demo/echo"), ("lorem", "demo/lorem")):
            may = allowed is None or target in allowed
            assert (alias in listed) == may
            one = await client.get(f"/models/{alias}", headers=auth)
            assert one.status_code == (200 if may else 404)
