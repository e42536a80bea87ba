"""`/healthz` and `/readyz` (SPEC section 10): public, not counted, naming what failed.

In-process through `httpx.ASGITransport`; the drain on SIGTERM against a real
`axione serve` is in test_drain.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp
from axione_asgi.health import HealthRoutes
from axione_asgi.keys import KeyRecord
from axione_asgi.standalone import build_standalone
from axione_asgi.stores import MemoryKeyStore
from tests.helpers import closed_port
from tests.quota_app import static_key

pytestmark = pytest.mark.anyio


def config(**storage: str) -> tuple[AxioneConfig, str]:
    secret, entry = static_key()
    cfg = AxioneConfig.model_validate(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", **storage},
            "keys": [entry],
        }
    )
    return cfg, secret


def client(app: Any, base_url: str = "http://t") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@pytest.fixture
async def running() -> AsyncIterator[tuple[AxioneApp, str]]:
    cfg, secret = config()
    app = create_app(cfg)
    async with app.lifespan():
        yield app, secret


async def test_healthz_answers_without_a_key(running: tuple[AxioneApp, str]) -> None:
    app, _ = running
    async with client(app) as c:
        response = await c.get("/healthz")
        head = await c.head("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert head.status_code == 200


async def test_readyz_is_ready_when_every_store_answers(running: tuple[AxioneApp, str]) -> None:
    app, _ = running
    async with client(app) as c:
        response = await c.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "checks": {"keys": "ok", "ledger": "ok", "counters": "ok", "responses": "ok"},
    }


async def test_readyz_on_sqlite_stores(tmp_path: Any) -> None:
    db = f"sqlite:///{tmp_path / 'axione.db'}"
    app = create_app(AxioneConfig.model_validate({"storage": {"keys": db, "ledger": db}}))
    async with app.lifespan(), client(app) as c:
        response = await c.get("/readyz")
    assert response.status_code == 200, response.text
    assert set(response.json()["checks"].values()) == {"ok"}


async def test_readyz_fails_when_the_counters_redis_is_unreachable() -> None:
    cfg, _ = config(counters=f"redis://127.0.0.1:{closed_port()}/0")
    app = create_app(cfg)
    async with app.lifespan(), client(app) as c:
        began = anyio.current_time()
        response = await c.get("/readyz")
        took = anyio.current_time() - began
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["counters"] != "ok"
    assert {k: v for k, v in body["checks"].items() if k != "counters"} == {
        "keys": "ok",
        "ledger": "ok",
        "responses": "ok",
    }
    # The route is public: the error's type, never its message (hosts, ports).
    assert "127.0.0.1" not in response.text
    assert took < 3  # each check is bounded (1 s)


async def test_counters_down_with_on_counter_failure_open_stays_ready() -> None:
    cfg, _ = config(counters=f"redis://127.0.0.1:{closed_port()}/0")
    cfg.storage.on_counter_failure = "open"
    app = create_app(cfg)
    async with app.lifespan(), client(app) as c:
        response = await c.get("/readyz")
    # Requests are served uncounted meanwhile: the replica stays in the balancer.
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"
    assert response.json()["checks"]["counters"] != "ok"


async def test_readyz_answers_draining_once_shutdown_began(
    running: tuple[AxioneApp, str],
) -> None:
    app, _ = running
    app.runtime.draining = True
    async with client(app) as c:
        ready = await c.get("/readyz")
        live = await c.get("/healthz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "draining"}
    assert live.status_code == 200  # a liveness probe must not restart a draining server


async def test_probes_are_not_counted(running: tuple[AxioneApp, str]) -> None:
    app, secret = running
    auth = {"authorization": f"Bearer {secret}"}
    async with client(app) as c:
        for _ in range(5):
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200
        # A bad key on a probe is ignored too: no key is read there.
        assert (await c.get("/readyz", headers={"authorization": "Bearer nope"})).is_success
        usage = (await c.get("/usage", headers=auth)).json()
    assert usage["used"] == {"requests": 0, "tokens": 0}
    assert await anyio.to_thread.run_sync(app.runtime.quota.ledger.records) == []


async def test_probes_under_the_standalone_prefix() -> None:
    cfg, _ = config()
    app = build_standalone(cfg)
    async with client(app) as c:
        assert (await c.get("/api/v1/healthz")).status_code == 200
        assert (await c.get("/api/v1/readyz")).json()["status"] == "ready"
        assert (await c.get("/healthz")).status_code == 404  # only under the prefix


class SlowKeyStore(MemoryKeyStore):
    async def get(self, key_id: str) -> KeyRecord | None:
        await anyio.sleep(5)
        return None


class BrokenKeyStore(MemoryKeyStore):
    async def get(self, key_id: str) -> KeyRecord | None:
        raise OSError("disk on fire at /var/lib/axione")


async def test_a_slow_store_is_a_timeout_and_a_broken_one_names_its_error() -> None:
    cfg, _ = config()
    slow = create_app(cfg, key_store=SlowKeyStore())
    began = anyio.current_time()
    checks = await HealthRoutes(slow.runtime, timeout_s=0.2).check()
    assert anyio.current_time() - began < 2
    assert checks["keys"] == "timeout"
    assert checks["counters"] == "ok"
    broken = create_app(cfg, key_store=BrokenKeyStore())
    async with client(broken) as c:
        response = await c.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["keys"] == "OSError"
    assert "fire" not in response.text


async def test_readyz_recovers_when_the_store_does() -> None:
    class Flaky(MemoryKeyStore):
        down = True

        async def get(self, key_id: str) -> KeyRecord | None:
            if self.down:
                raise ConnectionError("down")
            return await super().get(key_id)

    store = Flaky()
    cfg, _ = config()
    app = create_app(cfg, key_store=store)
    async with app.lifespan(), client(app) as c:
        assert (await c.get("/readyz")).status_code == 503
        store.down = False
        assert (await c.get("/readyz")).status_code == 200


async def test_openapi_describes_the_probes_as_public(running: tuple[AxioneApp, str]) -> None:
    app, _ = running
    async with client(app) as c:
        doc = (await c.get("/openapi.json")).json()
    for path in ("/healthz", "/readyz"):
        operation = doc["paths"][path]["get"]
        assert operation["security"] == []
        assert "200" in operation["responses"]
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
