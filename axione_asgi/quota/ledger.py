"""The usage ledger: one record per admitted request, written in batches off the request path.

Two ledgers: SQLite (stdlib `sqlite3`, the default; several workers may share
one file) and memory. `LedgerWriter` owns a thread that takes records from a
queue and writes them in batches: `sqlite3` calls block, so they belong off
the event loop anyway, and a thread needs no task group to outlive the call
that started it (a mounted app starts on its first request and stops in a
lifespan, two different tasks).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol, runtime_checkable

import anyio.to_thread

from axione_asgi.quota.days import utc_day
from axione_asgi.stores.sqlite import connect, sqlite_path

__all__ = [
    "Ledger",
    "LedgerTotals",
    "LedgerWriter",
    "MemoryLedger",
    "SQLiteLedger",
    "UsageRecord",
    "open_ledger",
]

logger = logging.getLogger("axione")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One admitted request, as the ledger keeps it.

    `time` is when it was admitted (its UTC day is the day it counts on);
    `status` the HTTP status sent, 499 when the response did not complete
    (the client went away); `estimated` when the tokens are our estimate
    because the upstream reported none.
    """

    time: datetime
    key_id: str
    model: str | None
    provider: str | None
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    status: int
    latency_ms: float
    request_id: str | None = None
    cache_hit: bool = False
    # The client dialect of the route called ("openai-chat", "anthropic-messages").
    dialect: str | None = None
    # A client's own session id (Claude Code's `X-Claude-Code-Session-Id`), to sum a session.
    session_id: str | None = None

    @property
    def day(self) -> date:
        """The UTC day the request counts on."""
        return utc_day(self.time)

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class LedgerTotals:
    """One key's sums over some records."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_requests: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


@runtime_checkable
class Ledger(Protocol):
    """Where usage records go. Methods block: call them from a thread."""

    def write(self, records: Sequence[UsageRecord]) -> None:
        """Append records, all or none."""
        ...

    def records(self, *, key_id: str | None = None, day: date | None = None) -> list[UsageRecord]:
        """Records, oldest first, optionally of one key and one UTC day."""
        ...

    def totals(self, *, day: date, key_id: str | None = None) -> dict[str, LedgerTotals]:
        """Per-key sums for one UTC day."""
        ...

    def close(self) -> None:
        """Release the file; the ledger reopens on next use."""
        ...


class MemoryLedger:
    """Records in a list: for tests and throwaway servers (lost at exit)."""

    def __init__(self) -> None:
        self._records: list[UsageRecord] = []
        self._lock = threading.Lock()

    def write(self, records: Sequence[UsageRecord]) -> None:
        with self._lock:
            self._records.extend(records)

    def records(self, *, key_id: str | None = None, day: date | None = None) -> list[UsageRecord]:
        with self._lock:
            found = list(self._records)
        return [
            r
            for r in found
            if (key_id is None or r.key_id == key_id) and (day is None or r.day == day)
        ]

    def totals(self, *, day: date, key_id: str | None = None) -> dict[str, LedgerTotals]:
        out: dict[str, LedgerTotals] = {}
        for r in self.records(key_id=key_id, day=day):
            t = out.setdefault(r.key_id, LedgerTotals())
            t.requests += 1
            t.prompt_tokens += r.prompt_tokens
            t.completion_tokens += r.completion_tokens
            t.estimated_requests += r.estimated
        return out

    def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    day TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT,
    provider TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    request_id TEXT,
    cache_hit INTEGER NOT NULL DEFAULT 0,
    dialect TEXT,
    session_id TEXT
);
CREATE INDEX IF NOT EXISTS usage_ledger_day_key ON usage_ledger (day, key_id);
"""

_COLUMNS = (
    "time, key_id, model, provider, prompt_tokens, completion_tokens, estimated, status, "
    "latency_ms, request_id, cache_hit, dialect, session_id"
)
_INSERT = (
    "INSERT INTO usage_ledger (time, day, key_id, model, provider, prompt_tokens, "
    "completion_tokens, estimated, status, latency_ms, request_id, cache_hit, dialect, "
    "session_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _row(r: UsageRecord) -> tuple[object, ...]:
    return (
        r.time.isoformat(),
        r.day.isoformat(),
        r.key_id,
        r.model,
        r.provider,
        r.prompt_tokens,
        r.completion_tokens,
        int(r.estimated),
        r.status,
        r.latency_ms,
        r.request_id,
        int(r.cache_hit),
        r.dialect,
        r.session_id,
    )


class SQLiteLedger:
    """Records in a SQLite file (WAL mode), shared by every worker and the CLI.

    The file is opened on first use, so building an app creates no file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        # Called with the lock held.
        if self._conn is None:
            conn = connect(self.path)
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(usage_ledger)")}
            # Columns added since the first ledgers were written, added to old files.
            for column, kind in (
                ("cache_hit", "INTEGER NOT NULL DEFAULT 0"),
                ("dialect", "TEXT"),
                ("session_id", "TEXT"),
            ):
                if column not in columns:
                    conn.execute(f"ALTER TABLE usage_ledger ADD COLUMN {column} {kind}")
            self._conn = conn
        return self._conn

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, [_row(r) for r in records])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def records(self, *, key_id: str | None = None, day: date | None = None) -> list[UsageRecord]:
        where, args = _where(key_id, day)
        with self._lock:
            rows = (
                self._connection()
                .execute(f"SELECT {_COLUMNS} FROM usage_ledger{where} ORDER BY id", args)
                .fetchall()
            )
        return [
            UsageRecord(
                time=datetime.fromisoformat(row[0]),
                key_id=row[1],
                model=row[2],
                provider=row[3],
                prompt_tokens=row[4],
                completion_tokens=row[5],
                estimated=bool(row[6]),
                status=row[7],
                latency_ms=row[8],
                request_id=row[9],
                cache_hit=bool(row[10]),
                dialect=row[11],
                session_id=row[12],
            )
            for row in rows
        ]

    def totals(self, *, day: date, key_id: str | None = None) -> dict[str, LedgerTotals]:
        where, args = _where(key_id, day)
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT key_id, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
                    f"SUM(estimated) FROM usage_ledger{where} GROUP BY key_id",
                    args,
                )
                .fetchall()
            )
        return {row[0]: LedgerTotals(row[1], row[2], row[3], row[4]) for row in rows}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _where(key_id: str | None, day: date | None) -> tuple[str, list[str]]:
    clauses: list[str] = []
    args: list[str] = []
    if day is not None:
        clauses.append("day = ?")
        args.append(day.isoformat())
    if key_id is not None:
        clauses.append("key_id = ?")
        args.append(key_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def open_ledger(uri: str) -> Ledger:
    """The ledger a `storage.ledger` URI names: `memory://` or `sqlite:///PATH`."""
    if uri == "memory://":
        return MemoryLedger()
    if uri.startswith("sqlite:///"):
        return SQLiteLedger(sqlite_path(uri))
    raise ValueError(f"unknown ledger storage {uri!r}: use 'memory://' or 'sqlite:///PATH'")


@dataclass(slots=True)
class LedgerWriter:
    """Batches records from any thread or task into a `Ledger` on its own thread.

    `submit` never blocks and never wakes the thread: the thread wakes every
    `interval_s`, takes whatever was queued and writes it in batches of at
    most `batch_size` (one transaction each). `stop` writes everything
    submitted before it and joins the thread.
    """

    ledger: Ledger
    batch_size: int = 1_000
    interval_s: float = 0.2
    written: int = 0
    failed: int = 0
    _queue: queue.SimpleQueue[UsageRecord] = field(default_factory=queue.SimpleQueue)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Start the writer thread if it is not running."""
        with self._lock:
            if self._thread is None:
                # Each thread has its own stop flag, so a writer started while
                # an old one is finishing never sees the old one's stop.
                self._stopping = threading.Event()
                # Daemon: an unclean exit must not hang on it (a clean stop flushes).
                self._thread = threading.Thread(
                    target=self._run, args=(self._stopping,), name="axione-ledger", daemon=True
                )
                self._thread.start()

    def submit(self, record: UsageRecord) -> None:
        """Queue one record; starts the thread on first use."""
        if self._thread is None:
            self.start()
        self._queue.put(record)

    async def stop(self) -> None:
        """Write every queued record, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join)

    def _run(self, stopping: threading.Event) -> None:
        while True:
            # A timed wait rather than a blocking get: a busy server's records
            # then cost the event loop a queue append, not a thread wake-up each.
            last = stopping.wait(self.interval_s)
            self._drain()
            if last:
                return

    def _drain(self) -> None:
        batch: list[UsageRecord] = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
            if len(batch) >= self.batch_size:
                self._write(batch)
                batch = []
        if batch:
            self._write(batch)

    def _write(self, batch: list[UsageRecord]) -> None:
        for attempt in range(3):
            try:
                self.ledger.write(batch)
            except Exception:
                if attempt == 2:
                    self.failed += len(batch)
                    logger.exception("usage ledger: %d records could not be written", len(batch))
                    return
                time.sleep(0.1 * (attempt + 1))
            else:
                self.written += len(batch)
                return
