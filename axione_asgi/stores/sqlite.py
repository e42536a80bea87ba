"""A KeyStore on stdlib sqlite3: hashes and visible prefixes only, never secrets."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

import anyio.to_thread

from axione_asgi.keys import KeyRecord, new_key

__all__ = ["SQLiteKeyStore", "connect", "sqlite_path"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    tier INTEGER NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
"""


def sqlite_path(uri: str) -> str:
    """The file path of a `sqlite:///PATH` URI (relative to the working folder)."""
    return uri.removeprefix("sqlite:///")


def connect(path: str) -> sqlite3.Connection:
    """A connection set up for several processes sharing one file."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _record(row: tuple[str, str, int, str, str, str, int]) -> KeyRecord:
    return KeyRecord(
        id=row[0],
        name=row[1],
        tier=row[2],
        prefix=row[3],
        key_hash=row[4],
        created=datetime.fromisoformat(row[5]),
        revoked=bool(row[6]),
    )


_COLUMNS = "id, name, tier, prefix, key_hash, created, revoked"


class SQLiteKeyStore:
    """Keys in a SQLite file, shared by every worker and the CLI.

    Calls run in a worker thread, so a busy file never blocks the event loop;
    every statement is parameterised.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn = connect(path)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.executescript(_SCHEMA)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                return fn(self._conn)

        return await anyio.to_thread.run_sync(call)

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
            ).fetchone()
        )
        return None if row is None else _record(row)

    async def get(self, key_id: str) -> KeyRecord | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        )
        return None if row is None else _record(row)

    async def create(self, name: str, tier: int = 1) -> tuple[KeyRecord, str]:
        record, secret = new_key(name, tier)
        await self._run(
            lambda c: c.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0)",
                (record.id, name, tier, record.prefix, record.key_hash, record.created.isoformat()),
            )
        )
        return record, secret

    async def list(self) -> Sequence[KeyRecord]:
        rows = await self._run(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created").fetchall()
        )
        return [_record(r) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        cur = await self._run(
            lambda c: c.execute("UPDATE api_keys SET revoked = 1 WHERE id = ?", (key_id,))
        )
        return cur.rowcount > 0

    async def set_tier(self, key_id: str, tier: int) -> bool:
        cur = await self._run(
            lambda c: c.execute("UPDATE api_keys SET tier = ? WHERE id = ?", (tier, key_id))
        )
        return cur.rowcount > 0

    async def close(self) -> None:
        with self._lock:
            self._conn.close()
