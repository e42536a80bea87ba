"""An operator's tier applies at once, also to a key promoted automatically today.

The day-rollover promotion is carried for the day by the process that saw it
(the cached key record still shows the old tier for a while); a tier an
operator sets afterwards, through the admin API or `axione keys set-tier`,
must win over that promotion, not wait for the next UTC day.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.cli import main
from axione_asgi.stores import MemoryKeyStore, open_key_store
from tests.quota_app import SMALL_TIERS, Gateway, MovableClock, asgi_client, gateway

pytestmark = pytest.mark.anyio

OPERATOR_KEY = "op-" + "fedcba9876543210" * 3
OPERATOR = {"authorization": f"Bearer {OPERATOR_KEY}"}


def config_with(**extra: Any) -> AxioneConfig:
    data: dict[str, Any] = {
        "storage": {"keys": "memory://", "ledger": "memory://", "counters": "memory://"},
        "tiers": {str(k): dict(v) for k, v in SMALL_TIERS.items()},
        "providers": {"demo": {"kind": "demo"}},
        "key_cache_ttl_s": 60,
        "admin": {
            "enabled": True,
            "operator_key_sha256": hashlib.sha256(OPERATOR_KEY.encode()).hexdigest(),
        },
        **extra,
    }
    return AxioneConfig.from_mapping(data)


async def limit_now(gw: Gateway) -> int:
    response = await gw.chat()
    assert response.status_code == 200, response.text
    return int(response.headers["x-ratelimit-limit-requests"])


async def promote(gw: Gateway, clock: MovableClock) -> None:
    for _ in range(8):  # 80% of tier 1's 10 requests
        assert (await gw.chat()).status_code == 200
    clock.next_day()
    assert await limit_now(gw) == 20  # promoted to tier 2 on the day's first request


async def test_an_operator_can_demote_a_key_promoted_today() -> None:
    clock = MovableClock()
    async with gateway(config_with(), clock=clock) as gw:
        await promote(gw, clock)
        response = await gw.client.post(
            f"/admin/keys/{gw.key_id}/tier", headers=OPERATOR, json={"tier": 1}
        )
        assert response.status_code == 200, response.text
        assert await limit_now(gw) == 10
        assert (await gw.usage())["tier"] == 1
        # And it stays: the promotion is not applied again later in the day.
        clock.advance(hours=3)
        assert await limit_now(gw) == 10


async def test_an_operator_can_set_any_tier_on_a_key_promoted_today() -> None:
    clock = MovableClock()
    async with gateway(config_with(), clock=clock) as gw:
        await promote(gw, clock)
        for tier, limit in ((1, 10), (3, 30), (1, 10), (2, 20)):
            response = await gw.client.post(
                f"/admin/keys/{gw.key_id}/tier", headers=OPERATOR, json={"tier": tier}
            )
            assert response.status_code == 200, response.text
            assert await limit_now(gw) == limit


async def test_the_promotion_still_holds_while_the_cached_record_is_stale() -> None:
    # Without an operator, the cached record (tier 1) must not undo the promotion.
    clock = MovableClock()
    store = MemoryKeyStore()
    async with gateway(config_with(), clock=clock, store=store) as gw:
        await promote(gw, clock)
        clock.advance(hours=1)
        assert await limit_now(gw) == 20
        stored = await store.get(gw.key_id)
        assert stored is not None and stored.tier == 2


async def test_keys_set_tier_from_the_cli_demotes_a_key_promoted_today(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "axione.db"
    toml = tmp_path / "axione.toml"
    toml.write_text(
        f'key_cache_ttl_s = 0\n[storage]\nkeys = "sqlite:///{db}"\nledger = "sqlite:///{db}"\n'
        + "".join(
            f"[tiers.{t}]\nrequests_per_day = {v['requests_per_day']}\n"
            f"tokens_per_day = {v['tokens_per_day']}\n"
            for t, v in SMALL_TIERS.items()
        )
    )
    config = AxioneConfig.from_toml(toml)
    store = open_key_store(config.storage.keys)
    record, secret = await store.create("cli-demoted", 1)
    clock = MovableClock()
    app = create_app(config, key_store=store, clock=clock)
    try:
        async with app.lifespan(), asgi_client(app) as client:
            gw = Gateway(app, MemoryKeyStore(), record.id, secret, client)
            await promote(gw, clock)
            argv = ["keys", "set-tier", "--config", str(toml), record.id, "1"]
            assert await anyio.to_thread.run_sync(main, argv) == 0
            capsys.readouterr()
            assert await limit_now(gw) == 10
    finally:
        await store.close()
