"""KeyAuthMiddleware: bearer keys, revocation, the TTL cache, config-declared keys."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from axione_asgi import AxioneConfig, ErrorFormatMiddleware, KeyAuthMiddleware, create_app
from axione_asgi.keys import hash_key
from axione_asgi.scope import key_of
from axione_asgi.stores import MemoryKeyStore
from tests.helpers import assert_spec_error

pytestmark = pytest.mark.anyio


async def whoami(scope: Scope, receive: Receive, send: Send) -> None:
    """A host's own route: answers the resolved key's name."""
    key = key_of(scope)
    body = (key.name if key else "nobody").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def client_for(app: object, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://t",
        headers=headers,
    )


@pytest.fixture
def store() -> MemoryKeyStore:
    return MemoryKeyStore()


def stack(store: MemoryKeyStore, ttl: float) -> tuple[ErrorFormatMiddleware, KeyAuthMiddleware]:
    auth = KeyAuthMiddleware(whoami, key_store=store, cache_ttl=ttl)
    return ErrorFormatMiddleware(auth), auth


async def test_valid_key_reaches_the_inner_app_with_its_record(store: MemoryKeyStore) -> None:
    _, key = await store.create("alice")
    app, _ = stack(store, 5)
    async with client_for(app, key) as client:
        response = await client.get("/")
    assert response.text == "alice"


async def test_missing_key_is_401_missing_api_key(store: MemoryKeyStore) -> None:
    app, _ = stack(store, 5)
    async with client_for(app) as client:
        response = await client.get("/")
    assert_spec_error(response, 401, "missing_api_key")


async def test_non_bearer_scheme_is_401_missing_api_key(store: MemoryKeyStore) -> None:
    _, key = await store.create("alice")
    app, _ = stack(store, 5)
    async with client_for(app) as client:
        response = await client.get("/", headers={"Authorization": f"Basic {key}"})
    assert_spec_error(response, 401, "missing_api_key")


async def test_bearer_scheme_is_case_insensitive(store: MemoryKeyStore) -> None:
    _, key = await store.create("alice")
    app, _ = stack(store, 5)
    async with client_for(app) as client:
        response = await client.get("/", headers={"Authorization": f"bearer {key}"})
    assert response.status_code == 200


async def test_unknown_key_is_401_invalid_api_key(store: MemoryKeyStore) -> None:
    app, _ = stack(store, 5)
    async with client_for(app, "sk-ax-unknown") as client:
        response = await client.get("/")
    assert_spec_error(response, 401, "invalid_api_key")


async def test_401_never_echoes_the_key(store: MemoryKeyStore) -> None:
    app, _ = stack(store, 5)
    async with client_for(app, "sk-ax-this-is-my-secret-value") as client:
        response = await client.get("/")
    assert "this-is-my-secret-value" not in response.text


async def test_revoked_key_is_401_at_once_without_cache(store: MemoryKeyStore) -> None:
    record, key = await store.create("bob")
    app, _ = stack(store, 0)
    async with client_for(app, key) as client:
        assert (await client.get("/")).status_code == 200
        await store.revoke(record.id)
        response = await client.get("/")
    assert_spec_error(response, 401, "invalid_api_key")


async def test_revocation_is_not_seen_within_the_cache_ttl(store: MemoryKeyStore) -> None:
    record, key = await store.create("bob")
    app, _ = stack(store, 30)
    async with client_for(app, key) as client:
        await client.get("/")
        await store.revoke(record.id)
        response = await client.get("/")
    assert response.status_code == 200


async def test_revocation_takes_effect_once_the_cache_ttl_passes(store: MemoryKeyStore) -> None:
    record, key = await store.create("bob")
    app, _ = stack(store, 0.2)
    async with client_for(app, key) as client:
        await client.get("/")
        await store.revoke(record.id)
        await anyio.sleep(0.3)
        response = await client.get("/")
    assert_spec_error(response, 401, "invalid_api_key")


async def test_forget_drops_a_cached_key_at_once(store: MemoryKeyStore) -> None:
    record, key = await store.create("bob")
    app, auth = stack(store, 30)
    async with client_for(app, key) as client:
        await client.get("/")
        await store.revoke(record.id)
        auth.forget(hash_key(key))
        response = await client.get("/")
    assert response.status_code == 401


class CountingStore(MemoryKeyStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def get_by_hash(self, key_hash: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return await super().get_by_hash(key_hash)


async def test_cache_spares_the_store_on_repeated_requests() -> None:
    store = CountingStore()
    _, key = await store.create("carol")
    app, _ = stack(store, 30)
    async with client_for(app, key) as client:
        for _ in range(5):
            await client.get("/")
    assert store.lookups == 1


class SlowStore(CountingStore):
    """A store that takes a while to answer, as a database under load does."""

    def __init__(self) -> None:
        super().__init__()
        self.release = anyio.Event()

    async def get_by_hash(self, key_hash: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        await self.release.wait()
        return await MemoryKeyStore.get_by_hash(self, key_hash)


async def test_requests_that_miss_the_cache_at_once_share_one_lookup() -> None:
    store = SlowStore()
    _, key = await store.create("dave")
    app, _ = stack(store, 30)
    names: list[str] = []
    async with client_for(app, key) as client:

        async def one() -> None:
            names.append((await client.get("/")).text)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
            await anyio.sleep(0.05)  # all 50 wait on the store now
            store.release.set()
    assert names == ["dave"] * 50
    assert store.lookups == 1


async def test_a_client_gone_mid_lookup_does_not_fail_the_others_waiting() -> None:
    store = SlowStore()
    _, key = await store.create("erin")
    app, _ = stack(store, 30)
    async with client_for(app, key) as client:
        with anyio.move_on_after(0.05):  # the first asker goes away
            await client.get("/")
        others: list[str] = []

        async def one() -> None:
            others.append((await client.get("/")).text)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
            await anyio.sleep(0.05)
            store.release.set()
    assert others == ["erin"] * 3
    assert store.lookups == 1


class ReadThenSlowStore(SlowStore):
    """Reads the record at once, answers it later: a read that raced a change."""

    async def get_by_hash(self, key_hash: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        found = await MemoryKeyStore.get_by_hash(self, key_hash)
        await self.release.wait()
        return found


async def test_a_key_forgotten_during_its_lookup_is_not_cached_stale() -> None:
    store = ReadThenSlowStore()
    record, key = await store.create("frank")
    app, auth = stack(store, 30)
    async with client_for(app, key) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/")
            await anyio.sleep(0.05)  # the lookup has read the key, not yet answered...
            await store.revoke(record.id)
            auth.forget(record.key_hash)  # ... and the revocation is announced
            store.release.set()
        response = await client.get("/")
        assert_spec_error(response, 401, "invalid_api_key")


async def test_unknown_key_is_remembered_for_at_most_one_second() -> None:
    store = CountingStore()
    app, _ = stack(store, 30)
    async with client_for(app, "sk-ax-nobody") as client:
        await client.get("/")
        await client.get("/")
        assert store.lookups == 1
        await anyio.sleep(1.05)
        await client.get("/")
    assert store.lookups == 2


# -- keys declared in the config file --------------------------------------------------------

CONFIG_KEY = "sk-ax-declared-in-config-0001"


@pytest.fixture
async def config_key_app() -> AsyncIterator[httpx.AsyncClient]:
    config = AxioneConfig(
        storage={"keys": "memory://", "ledger": "memory://"},
        keys=[{"name": "ci", "key_sha256": hashlib.sha256(CONFIG_KEY.encode()).hexdigest()}],
    )
    app = create_app(config)
    async with app.lifespan(), client_for(app, CONFIG_KEY) as client:
        yield client


async def test_config_declared_key_authenticates(config_key_app: httpx.AsyncClient) -> None:
    response = await config_key_app.get("/models")
    assert response.status_code == 200


async def test_config_declared_key_cannot_be_revoked_through_the_store() -> None:
    config = AxioneConfig(
        storage={"keys": "memory://", "ledger": "memory://"},
        keys=[{"name": "ci", "key_sha256": hashlib.sha256(CONFIG_KEY.encode()).hexdigest()}],
    )
    app = create_app(config)
    store = app.runtime.key_store
    record = await store.get_by_hash(hash_key(CONFIG_KEY))
    assert record is not None and record.source == "config"
    with pytest.raises(ValueError, match="config"):
        await store.revoke(record.id)
    async with app.lifespan(), client_for(app, CONFIG_KEY) as client:
        assert (await client.get("/models")).status_code == 200
