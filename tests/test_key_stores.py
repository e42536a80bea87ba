"""Key stores: the KeyStore contract for memory, SQLite and PostgreSQL; SQLite keeps only hashes."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from axione_asgi.config import StaticKey
from axione_asgi.keys import KeyStore, hash_key
from axione_asgi.stores import LayeredKeyStore, MemoryKeyStore, SQLiteKeyStore, open_key_store
from tests.postgres_db import fresh_schema

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    # Every built-in scheme of the store registry, each opened from its URI.
    with contextlib.ExitStack() as stack:
        uri = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{tmp_path / 'k.db'}",
            "postgresql": "",
        }[request.param]
        if request.param == "postgresql":
            uri = stack.enter_context(fresh_schema())
        s = open_key_store(uri)
        yield s
        await s.close()


async def test_created_key_is_found_by_its_hash(store: KeyStore) -> None:
    record, secret = await store.create("alice", 2)
    found = await store.get_by_hash(hash_key(secret))
    assert found is not None
    assert (found.id, found.name, found.tier, found.revoked) == (record.id, "alice", 2, False)


async def test_created_key_is_found_by_its_id(store: KeyStore) -> None:
    record, _ = await store.create("alice")
    assert (await store.get(record.id)) == record


async def test_unknown_hash_and_id_are_none(store: KeyStore) -> None:
    assert await store.get_by_hash(hash_key("sk-ax-nothing")) is None
    assert await store.get("key_nothing") is None


async def test_record_keeps_a_short_visible_prefix_only(store: KeyStore) -> None:
    record, secret = await store.create("alice")
    assert secret.startswith(record.prefix)
    assert len(record.prefix) <= 12 < len(secret)
    assert record.key_hash == hashlib.sha256(secret.encode()).hexdigest()


async def test_keys_are_unique(store: KeyStore) -> None:
    secrets = {(await store.create(f"k{i}"))[1] for i in range(20)}
    assert len(secrets) == 20


async def test_list_is_oldest_first(store: KeyStore) -> None:
    names = ["a", "b", "c"]
    for name in names:
        await store.create(name)
    assert [r.name for r in await store.list()] == names


async def test_revoke_marks_the_key_revoked(store: KeyStore) -> None:
    record, secret = await store.create("bob")
    assert await store.revoke(record.id) is True
    found = await store.get_by_hash(hash_key(secret))
    assert found is not None and found.revoked


async def test_revoke_of_an_unknown_id_is_false(store: KeyStore) -> None:
    assert await store.revoke("key_none") is False


async def test_set_tier_changes_the_tier(store: KeyStore) -> None:
    record, _ = await store.create("carol")
    assert await store.set_tier(record.id, 4) is True
    found = await store.get(record.id)
    assert found is not None and found.tier == 4
    assert await store.set_tier("key_none", 4) is False


# -- SQLite specifics ---------------------------------------------------------------------


async def test_sqlite_file_never_holds_the_secret(tmp_path: Path) -> None:
    store = SQLiteKeyStore(str(tmp_path / "k.db"))
    secrets = [(await store.create(f"k{i}"))[1] for i in range(3)]
    await store.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("k.db")]
    data = b"".join(p.read_bytes() for p in files)
    assert data, files
    for secret in secrets:
        assert secret.encode() not in data
        assert secret[12:].encode() not in data
        assert hash_key(secret).encode() in data


async def test_sqlite_keys_survive_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "k.db")
    first = SQLiteKeyStore(path)
    record, secret = await first.create("alice", 3)
    await first.revoke(record.id)
    await first.close()
    second = SQLiteKeyStore(path)
    found = await second.get_by_hash(hash_key(secret))
    listed = await second.list()
    await second.close()
    assert found is not None
    assert (found.id, found.tier, found.revoked) == (record.id, 3, True)
    assert [r.id for r in listed] == [record.id]


async def test_two_sqlite_stores_on_one_file_see_each_others_keys(tmp_path: Path) -> None:
    path = str(tmp_path / "k.db")
    cli, server = SQLiteKeyStore(path), SQLiteKeyStore(path)
    _, secret = await cli.create("from-cli")
    found = await server.get_by_hash(hash_key(secret))
    await cli.close()
    await server.close()
    assert found is not None and found.name == "from-cli"


# -- layering and the factory ---------------------------------------------------------------

DIGEST = hashlib.sha256(b"sk-ax-config").hexdigest()


def layered() -> LayeredKeyStore:
    return LayeredKeyStore([StaticKey(name="ci", key_sha256=DIGEST, tier=2)], MemoryKeyStore())


async def test_config_keys_are_listed_first_as_config_keys() -> None:
    store = layered()
    await store.create("stored")
    records = await store.list()
    assert [(r.name, r.source) for r in records] == [("ci", "config"), ("stored", "store")]


async def test_config_key_resolves_by_hash_with_its_file_tier() -> None:
    record = await layered().get_by_hash(DIGEST)
    assert record is not None and record.tier == 2


async def test_config_key_cannot_be_revoked_or_retiered() -> None:
    store = layered()
    record = await store.get_by_hash(DIGEST)
    assert record is not None
    with pytest.raises(ValueError):
        await store.revoke(record.id)
    with pytest.raises(ValueError):
        await store.set_tier(record.id, 5)


def test_open_key_store_picks_the_store_from_the_uri(tmp_path: Path) -> None:
    assert isinstance(open_key_store("memory://"), MemoryKeyStore)
    sqlite = open_key_store(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(sqlite, SQLiteKeyStore)
    assert isinstance(
        open_key_store("memory://", [StaticKey(name="a", key_sha256=DIGEST)]), LayeredKeyStore
    )
