"""Stored Responses-API answers, per key, for `previous_response_id` and `GET /responses/{id}`.

One record per stored response: the response object as the client saw it,
the input items it was answered from (the whole conversation up to it,
earlier turns included), whether a native upstream holds the state too, and
when it expires. Chosen by URI scheme, as the other stores: `memory://`,
`sqlite:///PATH` (by default the ledger's file) or `postgresql://...`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import anyio.to_thread

from axione_asgi.stores.sqlite import connect

__all__ = [
    "MemoryResponseStore",
    "ResponseStore",
    "SQLiteResponseStore",
    "StoredResponse",
    "open_response_store",
]

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A kept response: the object, the input items it answered, and who holds its state."""

    response: Json
    input_items: list[Json]
    native: bool = False


class ResponseStore(Protocol):
    """Where responses are kept; every call is scoped to one key."""

    async def put(self, key_id: str, stored: StoredResponse, ttl_s: float) -> None:
        """Keep `stored` for `ttl_s` seconds under its response id."""
        ...

    async def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        """The response, or None when unknown, expired, or another key's."""
        ...

    async def delete(self, key_id: str, response_id: str) -> bool:
        """Forget the response; whether there was one."""
        ...

    def close(self) -> None:
        """Release what the store holds."""
        ...


class MemoryResponseStore:
    """Responses in this process, the oldest dropped past `max_entries`."""

    def __init__(self, max_entries: int = 10_000, clock: Any = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[tuple[str, str], tuple[float, StoredResponse]] = OrderedDict()

    async def put(self, key_id: str, stored: StoredResponse, ttl_s: float) -> None:
        self._items[(key_id, stored.response["id"])] = (self._clock() + ttl_s, stored)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    async def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        entry = self._items.get((key_id, response_id))
        if entry is None:
            return None
        if entry[0] < self._clock():
            del self._items[(key_id, response_id)]
            return None
        return entry[1]

    async def delete(self, key_id: str, response_id: str) -> bool:
        return self._items.pop((key_id, response_id), None) is not None

    def close(self) -> None:
        self._items.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS stored_responses (
    id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    native INTEGER NOT NULL DEFAULT 0,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    PRIMARY KEY (key_id, id)
);
CREATE INDEX IF NOT EXISTS stored_responses_expiry ON stored_responses (expires_at);
"""


class SQLiteResponseStore:
    """Responses in a SQLite file (the ledger's by default), shared by every worker.

    Calls run in a thread: sqlite3 blocks. Expired rows are removed as new
    ones are written, a few at a time.
    """

    def __init__(self, path: str, clock: Any = time.time) -> None:
        self.path = path
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self.path)
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def _put(self, key_id: str, stored: StoredResponse, ttl_s: float) -> None:
        now = self._clock()
        with self._lock:
            conn = self._connection()
            conn.execute(
                "INSERT OR REPLACE INTO stored_responses VALUES (?, ?, ?, ?, ?, ?)",
                (
                    stored.response["id"],
                    key_id,
                    now + ttl_s,
                    int(stored.native),
                    json.dumps(stored.response, ensure_ascii=False),
                    json.dumps(stored.input_items, ensure_ascii=False),
                ),
            )
            conn.execute(
                "DELETE FROM stored_responses WHERE rowid IN (SELECT rowid FROM "
                "stored_responses WHERE expires_at < ? LIMIT 100)",
                (now,),
            )

    def _get(self, key_id: str, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT response, input_items, native FROM stored_responses "
                    "WHERE key_id = ? AND id = ? AND expires_at >= ?",
                    (key_id, response_id, self._clock()),
                )
                .fetchone()
            )
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]), bool(row[2]))

    def _delete(self, key_id: str, response_id: str) -> bool:
        with self._lock:
            cursor = self._connection().execute(
                "DELETE FROM stored_responses WHERE key_id = ? AND id = ?", (key_id, response_id)
            )
        return cursor.rowcount > 0

    async def put(self, key_id: str, stored: StoredResponse, ttl_s: float) -> None:
        await anyio.to_thread.run_sync(self._put, key_id, stored, ttl_s)

    async def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        return await anyio.to_thread.run_sync(self._get, key_id, response_id)

    async def delete(self, key_id: str, response_id: str) -> bool:
        return await anyio.to_thread.run_sync(self._delete, key_id, response_id)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def open_response_store(uri: str) -> ResponseStore:
    """The store a URI names, by its scheme in the store registry."""
    from axione_asgi.stores.registry import open_responses

    return open_responses(uri)
