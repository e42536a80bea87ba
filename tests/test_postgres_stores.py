"""PostgreSQL stores (local server): migrations once under concurrency, the ledger and
response contracts as SQLite's, a gateway on PostgreSQL, and the store registry."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.config import ConfigError
from axione_asgi.quota import LedgerWriter, UsageRecord, open_ledger
from axione_asgi.quota.ledger import DebtLedger, LedgerUnavailable
from axione_asgi.quota.settlement import CounterDebt
from axione_asgi.stores import MemoryKeyStore, open_key_store, registry
from axione_asgi.stores.postgres import (
    MIGRATIONS,
    PostgresKeyStore,
    PostgresLedger,
    PostgresResponseStore,
    PostgresTarget,
    migrate,
)
from axione_asgi.stores.responses import StoredResponse, open_response_store
from tests.postgres_db import fresh_schema, query
from tests.quota_app import CHAT, asgi_client


@pytest.fixture
def pg() -> Iterator[str]:
    with fresh_schema() as uri:
        yield uri


def record(n: int, key_id: str = "key_a") -> UsageRecord:
    return UsageRecord(
        time=datetime(2030, 5, 17, 12, 0, n % 60, tzinfo=UTC),
        key_id=key_id,
        model="demo/echo",
        provider="demo",
        prompt_tokens=3,
        completion_tokens=4,
        estimated=n % 2 == 1,
        status=200,
        latency_ms=1.5,
        request_id=f"req_{n}",
        cache_hit=n % 5 == 0,
        dialect="openai-chat",
        session_id="s1" if n % 3 else None,
        attempts=n % 4,
    )


# -- migrations ---------------------------------------------------------------------


def test_replicas_starting_at_once_migrate_exactly_once(pg: str) -> None:
    conninfo = PostgresTarget.parse(pg).conninfo
    barrier = threading.Barrier(4)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                barrier.wait()
                applied.append(migrate(conn))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    versions = [m[0] for m in MIGRATIONS]
    assert sorted(v for one in applied for v in one) == versions
    rows = query(pg, "SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == versions
    # Again: nothing left to apply.
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert migrate(conn) == []


@pytest.mark.anyio
async def test_stores_opened_at_once_share_one_migrated_schema(pg: str) -> None:
    keys = PostgresKeyStore(pg)
    ledger = PostgresLedger(pg)
    responses = PostgresResponseStore(pg)
    record_, _ = await keys.create("alice")
    ledger.write([record(1, key_id=record_.id)])
    assert await responses.get(record_.id, "resp_none") is None
    tables = {
        r[0]
        for r in query(pg, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    }
    assert {
        "schema_migrations",
        "api_keys",
        "usage_ledger",
        "stored_responses",
        "counter_debts",
    } <= tables
    await keys.close()
    ledger.close()
    responses.close()


# -- the ledger ---------------------------------------------------------------------


def test_postgres_and_memory_ledgers_keep_and_sum_alike(pg: str) -> None:
    records = [record(n, key_id="key_a" if n % 3 else "key_b") for n in range(30)]
    postgres = open_ledger(pg)
    memory = open_ledger("memory://")
    assert isinstance(postgres, PostgresLedger)
    for ledger in (postgres, memory):
        ledger.write(records)
    day = records[0].time.date()
    assert postgres.totals(day=day) == memory.totals(day=day)
    assert postgres.totals(day=day, key_id="key_b") == memory.totals(day=day, key_id="key_b")
    assert postgres.records(key_id="key_b") == memory.records(key_id="key_b")
    assert postgres.records(day=day) == memory.records(day=day) == records
    postgres.close()
    # Closed, it reopens on next use.
    assert len(postgres.records()) == 30
    postgres.close()


@pytest.mark.parametrize("kind", ["postgres", "sqlite", "memory"])
def test_counter_debts_are_taken_once_each_by_replicas_taking_at_once(
    pg: str, kind: str, tmp_path: Path
) -> None:
    uri = {"postgres": pg, "sqlite": f"sqlite:///{tmp_path}/l.db", "memory": "memory://"}[kind]
    ledger = open_ledger(uri)
    assert isinstance(ledger, DebtLedger)
    day = date(2030, 5, 17)
    debts = [CounterDebt(f"key_{n % 7}", day, n % 2, -n) for n in range(300)]
    ledger.add_debts(debts)
    # Four replicas (here: threads, each with its own store on the same database).
    takers = [ledger] if kind == "memory" else [open_ledger(uri) for _ in range(4)]
    taken: list[CounterDebt] = []
    lock = threading.Lock()

    def take(one: DebtLedger) -> None:
        while batch := one.take_debts(7):
            with lock:
                taken.extend(batch)

    threads = [threading.Thread(target=take, args=(t,)) for t in takers * (4 // len(takers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(taken, key=lambda d: -d.tokens) == debts
    assert ledger.take_debts(10) == []
    for one in {id(t): t for t in [ledger, *takers]}.values():
        one.close()


def test_a_record_postgres_cannot_store_is_a_value_error(pg: str) -> None:
    ledger = PostgresLedger(pg)
    bad = UsageRecord(**{**_fields(record(1)), "status": 2**40})
    with pytest.raises(ValueError):
        ledger.write([bad])
    with pytest.raises(ValueError):
        ledger.write([UsageRecord(**{**_fields(record(2)), "prompt_tokens": 2**70})])
    assert ledger.records() == []
    ledger.close()


def _fields(r: UsageRecord) -> dict[str, Any]:
    return {name: getattr(r, name) for name in r.__slots__}  # type: ignore[attr-defined]


def test_an_unreachable_database_is_ledger_unavailable() -> None:
    ledger = PostgresLedger("postgresql://postgres@127.0.0.1:1/test?connect_timeout=1")
    with pytest.raises(LedgerUnavailable):
        ledger.write([record(1)])
    ledger.close()


class Spying(PostgresLedger):
    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.batches: list[int] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.batches.append(len(records))
        super().write(records)


@pytest.mark.anyio
async def test_the_batching_writer_writes_everything_to_postgres(pg: str) -> None:
    ledger = Spying(pg)
    writer = LedgerWriter(ledger, batch_size=100, interval_s=5.0)
    for n in range(1_050):
        writer.submit(record(n))
    await writer.stop()
    assert writer.written == 1_050 and max(ledger.batches) <= 100
    assert query(pg, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage_ledger") == [
        (1_050, 1_050)
    ]
    ledger.close()


# -- stored responses -----------------------------------------------------------------


@pytest.mark.anyio
async def test_response_store_keeps_per_key_until_expiry(pg: str) -> None:
    now = [1_000.0]
    store = PostgresResponseStore(pg, clock=lambda: now[0])
    stored = StoredResponse({"id": "resp_1", "output": [{"text": "é"}]}, [{"role": "user"}], True)
    await store.put("key_a", stored, ttl_s=60)
    assert await store.get("key_a", "resp_1") == stored
    assert await store.get("key_b", "resp_1") is None
    await store.put("key_a", StoredResponse({"id": "resp_1", "v": 2}, []), ttl_s=60)
    assert (await store.get("key_a", "resp_1")) == StoredResponse({"id": "resp_1", "v": 2}, [])
    now[0] += 61
    assert await store.get("key_a", "resp_1") is None
    await store.put("key_a", StoredResponse({"id": "resp_2"}, []), ttl_s=60)
    assert await store.delete("key_a", "resp_2") is True
    assert await store.delete("key_a", "resp_2") is False
    assert query(pg, "SELECT COUNT(*) FROM stored_responses") == [(0,)]
    store.close()
    assert isinstance(open_response_store(pg), PostgresResponseStore)


# -- a gateway on PostgreSQL ----------------------------------------------------------


@pytest.mark.anyio
async def test_the_schema_is_migrated_when_the_gateway_starts_not_on_first_use() -> None:
    with fresh_schema() as pg:
        config = AxioneConfig.from_mapping(
            {"storage": {"keys": pg, "ledger": pg, "counters": "memory://"}}
        )
        app = create_app(config)
        assert query(pg, "SELECT to_regclass('schema_migrations') IS NULL") == [(True,)]
        async with app.lifespan():
            rows = query(pg, "SELECT version FROM schema_migrations ORDER BY version")
            assert [r[0] for r in rows] == [m[0] for m in MIGRATIONS]


@pytest.mark.anyio
async def test_a_database_down_at_start_up_does_not_stop_the_gateway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=1"
    config = AxioneConfig.from_mapping(
        {"storage": {"keys": "memory://", "ledger": dead, "counters": "memory://"}}
    )
    app = create_app(config)
    async with app.lifespan(), asgi_client(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 503
    assert any("could not be prepared at start-up" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_a_gateway_on_postgres_serves_a_chat_and_ledgers_it_there(pg: str) -> None:
    config = AxioneConfig.from_mapping(
        {
            "storage": {"keys": pg, "ledger": pg, "counters": "memory://"},
            "providers": {"demo": {"kind": "demo"}},
        }
    )
    # The key is made by another store on the same database (as `axione keys create` would).
    cli = open_key_store(pg)
    made, secret = await cli.create("pg-user", 1)
    await cli.close()
    app = create_app(config)
    async with app.lifespan(), asgi_client(app) as client:
        response = await client.post(
            "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"}
        )
        assert response.status_code == 200, response.text
    rows = query(pg, "SELECT key_id, model, status, request_id FROM usage_ledger")
    assert rows == [(made.id, "demo/echo", 200, response.headers["x-request-id"])]


# -- the registry -----------------------------------------------------------------------


def test_config_names_the_known_schemes_and_the_extra() -> None:
    with pytest.raises(ConfigError) as info:
        AxioneConfig.from_mapping({"storage": {"keys": "mongodb://h/db"}})
    message = str(info.value)
    assert "'postgresql://'" in message and "'sqlite://'" in message
    assert "axione-asgi[postgres]" in message


def test_a_store_of_ones_own_plugs_in_by_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    made: list[str] = []

    class Mine(MemoryKeyStore):
        pass

    def factory(uri: str) -> Mine:
        made.append(uri)
        return Mine()

    registry.register_store("mine", "keys", factory)
    config = AxioneConfig.from_mapping({"storage": {"keys": "mine://anything"}})
    assert isinstance(open_key_store(config.storage.keys), Mine)
    assert made == ["mine://anything"]
    assert "mine" in registry.known_schemes("keys")
    # Only for the kind it was registered for.
    with pytest.raises(ConfigError, match="no ledger store for 'mine://'"):
        AxioneConfig.from_mapping({"storage": {"ledger": "mine://anything"}})


def test_postgres_alias_and_pool_parameters() -> None:
    target = PostgresTarget.parse(
        "postgres://u:p@h:5/db?sslmode=disable&pool_max_size=3&spill_path=/tmp/s.jsonl"
    )
    assert target.pool_max_size == 3 and target.spill_path == "/tmp/s.jsonl"
    assert "pool_max_size" not in target.conninfo and "sslmode=disable" in target.conninfo
    assert isinstance(open_key_store("postgres://h/db"), PostgresKeyStore)


@pytest.mark.anyio
async def test_records_wait_in_the_spill_file_while_postgres_is_down(
    pg: str, tmp_path: Path
) -> None:
    spill = tmp_path / "ledger.spill.jsonl"
    down = PostgresLedger(
        f"postgresql://postgres@127.0.0.1:1/test?connect_timeout=1&spill_path={spill}"
    )
    writer = LedgerWriter(down, interval_s=0.01, max_attempts=1, flush_timeout_s=0.5)
    for n in range(5):
        writer.submit(record(n))
    await writer.stop()
    assert (writer.written, writer.spilled, writer.lost) == (0, 5, 0)
    # The database answers again (here: another server address, the same side file).
    sep = "&" if "?" in pg else "?"
    up = PostgresLedger(f"{pg}{sep}spill_path={spill}")
    assert LedgerWriter(up).replay() == 5
    assert [r.request_id for r in up.records()] == [f"req_{n}" for n in range(5)]
    assert not spill.exists()
    up.close()
