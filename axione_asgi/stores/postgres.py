"""PostgreSQL stores (the `postgres` extra): keys, the usage ledger, stored responses.

One driver, psycopg 3, with its pools: the key store is async (an
`AsyncConnectionPool` on the event loop); the ledger is called synchronously
from `LedgerWriter`'s thread, so it holds a sync `ConnectionPool`, as does the
response store (whose `close()` is sync), its calls run in a worker thread.

URIs are libpq's (`postgresql://user:pass@host:5432/db?sslmode=require`,
`postgres://` too, `options=-csearch_path%3Dmyschema` for a schema), plus
three parameters of Axione's own, taken out before libpq sees the URI:
`pool_min_size` (default 1), `pool_max_size` (default 10) and, for the
ledger, `spill_path` (default `axione-ledger.spill.jsonl` in the working
folder: where records wait while the database is unreachable past the
writer's retries, written back once it answers).

The schema is versioned in `schema_migrations` and brought up to date when a
store first reaches the database: each missing version is applied in one
transaction under a transaction-scoped advisory lock (one per schema), so
replicas starting at once apply each version exactly once, and a database
already up to date costs one short query.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio.to_thread
import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from axione_asgi.keys import KeyRecord, new_key
from axione_asgi.quota.ledger import (
    LedgerTotals,
    LedgerUnavailable,
    UsageRecord,
    record_of_row,
)
from axione_asgi.quota.settlement import CounterDebt
from axione_asgi.stores.responses import StoredResponse

__all__ = [
    "MIGRATIONS",
    "PostgresKeyStore",
    "PostgresLedger",
    "PostgresResponseStore",
    "PostgresTarget",
    "migrate",
]

T = TypeVar("T")

# (version, name, statements). Append only: a released version never changes.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "api keys",
        (
            """CREATE TABLE IF NOT EXISTS api_keys (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                tier INTEGER NOT NULL,
                prefix TEXT NOT NULL,
                key_hash TEXT NOT NULL UNIQUE,
                created TIMESTAMPTZ NOT NULL,
                revoked BOOLEAN NOT NULL DEFAULT FALSE
            )""",
        ),
    ),
    (
        2,
        "usage ledger",
        (
            """CREATE TABLE IF NOT EXISTS usage_ledger (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                time TIMESTAMPTZ NOT NULL,
                day DATE NOT NULL,
                key_id TEXT NOT NULL,
                model TEXT,
                provider TEXT,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL,
                estimated BOOLEAN NOT NULL,
                status INTEGER NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                request_id TEXT,
                cache_hit BOOLEAN NOT NULL DEFAULT FALSE,
                dialect TEXT,
                session_id TEXT,
                attempts INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX IF NOT EXISTS usage_ledger_day_key ON usage_ledger (day, key_id)",
        ),
    ),
    (
        3,
        "stored responses",
        (
            """CREATE TABLE IF NOT EXISTS stored_responses (
                id TEXT NOT NULL,
                key_id TEXT NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                native BOOLEAN NOT NULL DEFAULT FALSE,
                response TEXT NOT NULL,
                input_items TEXT NOT NULL,
                PRIMARY KEY (key_id, id)
            )""",
            "CREATE INDEX IF NOT EXISTS stored_responses_expiry ON stored_responses (expires_at)",
        ),
    ),
    (
        4,
        "counter debts",
        (
            """CREATE TABLE IF NOT EXISTS counter_debts (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                day DATE NOT NULL,
                key_id TEXT NOT NULL,
                requests BIGINT NOT NULL,
                tokens BIGINT NOT NULL
            )""",
        ),
    ),
)

_OWN_PARAMS = ("pool_min_size", "pool_max_size", "spill_path")
_CONNECT_TIMEOUT_S = 5
_POOL_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """A `postgresql://` URI split into libpq's part and Axione's pool settings."""

    conninfo: str
    pool_min_size: int = 1
    pool_max_size: int = 10
    spill_path: str | None = None

    @classmethod
    def parse(cls, uri: str) -> PostgresTarget:
        parts = urlsplit(uri)
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in query if k in _OWN_PARAMS}
        rest = [(k, v) for k, v in query if k not in _OWN_PARAMS]
        if "connect_timeout" not in {k for k, _ in rest}:
            rest.append(("connect_timeout", str(_CONNECT_TIMEOUT_S)))
        conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
        low = int(own.get("pool_min_size", 1))
        high = max(low, int(own.get("pool_max_size", 10)), 1)
        return cls(conninfo, low, high, own.get("spill_path") or None)


# -- migrations ----------------------------------------------------------------------
_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('axione_asgi.migrations:' || current_schema()))"
_migrated: set[str] = set()
_migrated_lock = threading.Lock()


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Bring the connection's schema up to date; the versions this call applied.

    Safe to run from any number of processes at once: the advisory lock lets
    one in at a time, and each then sees what the others applied.
    """
    applied: list[int] = []
    with conn.transaction():
        conn.execute(_LOCK_SQL)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, statements in MIGRATIONS:
            if version in done:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )
            applied.append(version)
    return applied


def ensure_migrated(target: PostgresTarget) -> None:
    """Migrate the database once per process (blocking)."""
    with _migrated_lock:
        if target.conninfo in _migrated:
            return
        with psycopg.connect(target.conninfo, autocommit=True) as conn:
            migrate(conn)
        _migrated.add(target.conninfo)


def _sync_pool(target: PostgresTarget, name: str) -> ConnectionPool:
    pool = ConnectionPool(
        target.conninfo,
        min_size=target.pool_min_size,
        max_size=target.pool_max_size,
        timeout=_POOL_TIMEOUT_S,
        check=ConnectionPool.check_connection,
        name=name,
        open=False,
    )
    pool.open(wait=False)
    return pool


# -- keys ------------------------------------------------------------------------------
_KEY_COLUMNS = "id, name, tier, prefix, key_hash, created, revoked"


def _key(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(
        id=row[0],
        name=row[1],
        tier=row[2],
        prefix=row[3],
        key_hash=row[4],
        created=row[5].astimezone(UTC),
        revoked=bool(row[6]),
    )


class PostgresKeyStore:
    """Keys in PostgreSQL, shared by every replica; hashes and visible prefixes only.

    The pool opens on first use in the running event loop (and again in a new
    loop, as the CLI runs one per command); the schema is migrated first.
    """

    def __init__(self, uri: str) -> None:
        self.target = PostgresTarget.parse(uri)
        self._pool: AsyncConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def prepare(self) -> None:
        """Bring the schema up to date now (at start-up; blocking), not on first use."""
        ensure_migrated(self.target)

    async def _connection_pool(self) -> AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        await anyio.to_thread.run_sync(ensure_migrated, self.target)
        pool = AsyncConnectionPool(
            self.target.conninfo,
            min_size=self.target.pool_min_size,
            max_size=self.target.pool_max_size,
            timeout=_POOL_TIMEOUT_S,
            check=AsyncConnectionPool.check_connection,
            name="axione-keys",
            open=False,
        )
        await pool.open(wait=False)
        if self._pool is not None and self._loop is loop:  # another task got here first
            await pool.close()
            return self._pool
        self._pool, self._loop = pool, loop
        return pool

    async def _one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchone()

    async def _count(self, sql: str, args: tuple[Any, ...]) -> int:
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(sql, args)
            return cur.rowcount

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        row = await self._one(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = %s", (key_hash,)
        )
        return None if row is None else _key(row)

    async def get(self, key_id: str) -> KeyRecord | None:
        row = await self._one(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = %s", (key_id,))
        return None if row is None else _key(row)

    async def create(self, name: str, tier: int = 1) -> tuple[KeyRecord, str]:
        record, secret = new_key(name, tier)
        await self._count(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, FALSE)",
            (record.id, name, tier, record.prefix, record.key_hash, record.created),
        )
        return record, secret

    async def list(self) -> Sequence[KeyRecord]:
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created, id")
            rows = await cur.fetchall()
        return [_key(r) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        return await self._count("UPDATE api_keys SET revoked = TRUE WHERE id = %s", (key_id,)) > 0

    async def set_tier(self, key_id: str, tier: int) -> bool:
        changed = await self._count("UPDATE api_keys SET tier = %s WHERE id = %s", (tier, key_id))
        return changed > 0

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        loop, self._loop = self._loop, None
        if pool is not None and loop is asyncio.get_running_loop():
            await pool.close()


# -- the ledger --------------------------------------------------------------------------
_LEDGER_COLUMNS = (
    "time, key_id, model, provider, prompt_tokens, completion_tokens, estimated, status, "
    "latency_ms, request_id, cache_hit, dialect, session_id, attempts"
)
_INSERT = (
    "INSERT INTO usage_ledger (time, day, key_id, model, provider, prompt_tokens, "
    "completion_tokens, estimated, status, latency_ms, request_id, cache_hit, dialect, "
    "session_id, attempts) VALUES "
    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def _ledger_row(r: UsageRecord) -> tuple[object, ...]:
    moment = r.time if r.time.tzinfo is not None else r.time.replace(tzinfo=UTC)
    return (
        moment,
        r.day,
        r.key_id,
        r.model,
        r.provider,
        r.prompt_tokens,
        r.completion_tokens,
        r.estimated,
        r.status,
        r.latency_ms,
        r.request_id,
        r.cache_hit,
        r.dialect,
        r.session_id,
        r.attempts,
    )


def _where(key_id: str | None, day: date | None) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    if day is not None:
        clauses.append("day = %s")
        args.append(day)
    if key_id is not None:
        clauses.append("key_id = %s")
        args.append(key_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


class PostgresLedger:
    """The usage ledger in PostgreSQL, as `SQLiteLedger` keeps it (same columns, same sums).

    Blocking, for `LedgerWriter`'s thread. The pool opens on first use (so
    building an app touches no database). An unreachable database raises
    `LedgerUnavailable` (the writer keeps the batch and retries it); a record
    the database refuses for itself raises ValueError (the writer sets it aside).
    """

    def __init__(self, uri: str) -> None:
        self.target = PostgresTarget.parse(uri)
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Bring the schema up to date now (at start-up; blocking), not on first use."""
        ensure_migrated(self.target)

    @property
    def spill_path(self) -> str:
        """Where `LedgerWriter` keeps records while the database cannot take them."""
        return self.target.spill_path or "axione-ledger.spill.jsonl"

    def _connection_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                ensure_migrated(self.target)
                self._pool = _sync_pool(self.target, "axione-ledger")
            return self._pool

    def _call(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            with self._connection_pool().connection() as conn:
                return fn(conn)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise ValueError(f"PostgreSQL refused the record: {exc}") from exc
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise LedgerUnavailable(f"PostgreSQL is unreachable: {exc}") from exc

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        rows = [_ledger_row(r) for r in records]

        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cur:
                cur.executemany(_INSERT, rows)

        self._call(insert)

    def records(self, *, key_id: str | None = None, day: date | None = None) -> list[UsageRecord]:
        where, args = _where(key_id, day)
        rows = self._call(
            lambda c: c.execute(
                f"SELECT {_LEDGER_COLUMNS} FROM usage_ledger{where} ORDER BY id", args
            ).fetchall()
        )
        return [record_of_row(row[0].astimezone(UTC), row) for row in rows]

    def totals(self, *, day: date, key_id: str | None = None) -> dict[str, LedgerTotals]:
        where, args = _where(key_id, day)
        rows = self._call(
            lambda c: c.execute(
                "SELECT key_id, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
                f"COUNT(*) FILTER (WHERE estimated) FROM usage_ledger{where} GROUP BY key_id",
                args,
            ).fetchall()
        )
        return {
            row[0]: LedgerTotals(int(row[1]), int(row[2]), int(row[3]), int(row[4])) for row in rows
        }

    def add_debts(self, debts: Sequence[CounterDebt]) -> None:
        if not debts:
            return
        rows = [(d.day, d.key_id, d.requests, d.tokens) for d in debts]

        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO counter_debts (day, key_id, requests, tokens) "
                    "VALUES (%s, %s, %s, %s)",
                    rows,
                )

        self._call(insert)

    def take_debts(self, limit: int) -> list[CounterDebt]:
        # SKIP LOCKED: replicas taking debts at once each get their own.
        rows = self._call(
            lambda c: c.execute(
                "DELETE FROM counter_debts WHERE id IN (SELECT id FROM counter_debts "
                "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
                "RETURNING key_id, day, requests, tokens",
                (limit,),
            ).fetchall()
        )
        return [CounterDebt(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


# -- stored responses ---------------------------------------------------------------------
class PostgresResponseStore:
    """Stored responses in PostgreSQL, as `SQLiteResponseStore` keeps them, for every replica.

    Calls run in a worker thread on a sync pool; expired rows are removed as
    new ones are written, a few at a time.
    """

    def __init__(self, uri: str, clock: Any = time.time) -> None:
        self.target = PostgresTarget.parse(uri)
        self._clock = clock
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Bring the schema up to date now (at start-up; blocking), not on first use."""
        ensure_migrated(self.target)

    def _connection_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                ensure_migrated(self.target)
                self._pool = _sync_pool(self.target, "axione-responses")
            return self._pool

    def _put(self, key_id: str, stored: StoredResponse, ttl_s: float) -> None:
        now = self._clock()
        with self._connection_pool().connection() as conn:
            conn.execute(
                "INSERT INTO stored_responses (id, key_id, expires_at, native, response, "
                "input_items) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key_id, id) DO UPDATE "
                "SET expires_at = EXCLUDED.expires_at, native = EXCLUDED.native, "
                "response = EXCLUDED.response, input_items = EXCLUDED.input_items",
                (
                    stored.response["id"],
                    key_id,
                    now + ttl_s,
                    stored.native,
                    json.dumps(stored.response, ensure_ascii=False),
                    json.dumps(stored.input_items, ensure_ascii=False),
                ),
            )
            conn.execute(
                "DELETE FROM stored_responses WHERE ctid IN (SELECT ctid FROM "
                "stored_responses WHERE expires_at < %s LIMIT 100)",
                (now,),
            )

    def _get(self, key_id: str, response_id: str) -> StoredResponse | None:
        with self._connection_pool().connection() as conn:
            row = conn.execute(
                "SELECT response, input_items, native FROM stored_responses "
                "WHERE key_id = %s AND id = %s AND expires_at >= %s",
                (key_id, response_id, self._clock()),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]), bool(row[2]))

    def _delete(self, key_id: str, response_id: str) -> bool:
        with self._connection_pool().connection() as conn:
            cur = conn.execute(
                "DELETE FROM stored_responses WHERE key_id = %s AND id = %s", (key_id, response_id)
            )
            return cur.rowcount > 0

    async def put(self, key_id: str, stored: StoredResponse, ttl_s: float) -> None:
        await anyio.to_thread.run_sync(self._put, key_id, stored, ttl_s)

    async def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        return await anyio.to_thread.run_sync(self._get, key_id, response_id)

    async def delete(self, key_id: str, response_id: str) -> bool:
        return await anyio.to_thread.run_sync(self._delete, key_id, response_id)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
