"""The usage ledger: one record per admitted request, written in batches off the request path.

Two ledgers: SQLite (stdlib `sqlite3`, the default; several workers may share
one file) and memory. `LedgerWriter` owns a thread that takes records from a
queue and writes them in batches: `sqlite3` calls block, so they belong off
the event loop anyway, and a thread needs no task group to outlive the call
that started it (a mounted app starts on its first request and stops in a
lifespan, two different tasks).

A write that fails loses nothing: the records are kept and retried with
backoff, written row by row when a batch fails (so one record the ledger
cannot store does not drop the others), and spilled to a side file (the
SQLite file's name plus `.spill.jsonl`) when the retries run out, the backlog
grows too long or the final flush reaches its deadline. The side file is
written back into the ledger at the next start (and once the ledger takes
writes again). `LEDGER_HEALTH` counts all of it for the metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import IO, Any, Protocol, runtime_checkable

try:
    import fcntl
except ImportError:  # Windows: spill files are not locked across processes there
    fcntl = None  # type: ignore[assignment]

import anyio.to_thread

from axione_asgi.quota.days import utc_day
from axione_asgi.quota.settlement import CounterDebt
from axione_asgi.stores.sqlite import connect

__all__ = [
    "LEDGER_HEALTH",
    "DebtLedger",
    "Ledger",
    "LedgerHealth",
    "LedgerTotals",
    "LedgerUnavailable",
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
    # Upstream calls the request made, retries and fallbacks included (0: none).
    attempts: int = 0

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


@runtime_checkable
class DebtLedger(Protocol):
    """A ledger that also keeps what the shared counters are owed (`quota.settlement`).

    Settlements a stopping process could not send to the counters store wait
    here; any replica takes them, once each, and pays them when the store
    answers. The built-in ledgers all are; a ledger of one's own may be.
    """

    def add_debts(self, debts: Sequence[CounterDebt]) -> None:
        """Keep debts, all or none."""
        ...

    def take_debts(self, limit: int) -> list[CounterDebt]:
        """Remove and return up to `limit` of the oldest debts (each to one caller only)."""
        ...


class MemoryLedger:
    """Records in a list: for tests and throwaway servers (lost at exit)."""

    def __init__(self) -> None:
        self._records: list[UsageRecord] = []
        self._debts: list[CounterDebt] = []
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

    def add_debts(self, debts: Sequence[CounterDebt]) -> None:
        with self._lock:
            self._debts.extend(debts)

    def take_debts(self, limit: int) -> list[CounterDebt]:
        with self._lock:
            taken, self._debts = self._debts[:limit], self._debts[limit:]
        return taken

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
    session_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_ledger_day_key ON usage_ledger (day, key_id);
CREATE TABLE IF NOT EXISTS counter_debts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    day TEXT NOT NULL,
    key_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    tokens INTEGER NOT NULL
);
"""

_COLUMNS = (
    "time, key_id, model, provider, prompt_tokens, completion_tokens, estimated, status, "
    "latency_ms, request_id, cache_hit, dialect, session_id, attempts"
)
_INSERT = (
    "INSERT INTO usage_ledger (time, day, key_id, model, provider, prompt_tokens, "
    "completion_tokens, estimated, status, latency_ms, request_id, cache_hit, dialect, "
    "session_id, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def record_of_row(time: datetime, row: Sequence[Any]) -> UsageRecord:
    """A record from a `SELECT` of the ledger's columns in their order (its time parsed)."""
    return UsageRecord(
        time=time,
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
        attempts=row[13],
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
        r.attempts,
    )


class SQLiteLedger:
    """Records in a SQLite file (WAL mode), shared by every worker and the CLI.

    The file is opened on first use, so building an app creates no file (and
    reading a ledger that was never written creates none either). A write
    waits at most `busy_timeout_s` for another process's write lock, then
    fails: `LedgerWriter` retries it, and its shutdown keeps to a deadline.
    """

    def __init__(self, path: str, *, busy_timeout_s: float = 2.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def spill_path(self) -> str | None:
        """Where `LedgerWriter` keeps records this file could not take, to write them later."""
        return None if self.path in ("", ":memory:") else f"{self.path}.spill.jsonl"

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
                ("attempts", "INTEGER NOT NULL DEFAULT 0"),
            ):
                if column not in columns:
                    conn.execute(f"ALTER TABLE usage_ledger ADD COLUMN {column} {kind}")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            self._conn = conn
        return self._conn

    def _absent(self) -> bool:
        # Called with the lock held: nothing was ever written here.
        return self._conn is None and self.path != ":memory:" and not os.path.exists(self.path)

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_INSERT, [_row(r) for r in records])
                    conn.execute("COMMIT")
                except BaseException:
                    # Also when COMMIT itself failed (a full disk): never leave it open.
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            self._drop_connection()
                    raise
            except sqlite3.OperationalError:
                # A full disk, a lost file, a read-only mount: the next write reconnects.
                self._drop_connection()
                raise

    def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def records(self, *, key_id: str | None = None, day: date | None = None) -> list[UsageRecord]:
        where, args = _where(key_id, day)
        with self._lock:
            if self._absent():
                return []
            rows = (
                self._connection()
                .execute(f"SELECT {_COLUMNS} FROM usage_ledger{where} ORDER BY id", args)
                .fetchall()
            )
        return [record_of_row(datetime.fromisoformat(row[0]), row) for row in rows]

    def totals(self, *, day: date, key_id: str | None = None) -> dict[str, LedgerTotals]:
        where, args = _where(key_id, day)
        with self._lock:
            if self._absent():
                return {}
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

    def add_debts(self, debts: Sequence[CounterDebt]) -> None:
        if not debts:
            return
        rows = [(d.day.isoformat(), d.key_id, d.requests, d.tokens) for d in debts]
        with self._lock:
            conn = self._connection()
            with conn:
                conn.executemany(
                    "INSERT INTO counter_debts (day, key_id, requests, tokens) VALUES (?, ?, ?, ?)",
                    rows,
                )

    def take_debts(self, limit: int) -> list[CounterDebt]:
        with self._lock:
            if self._absent():
                return []
            conn = self._connection()
            # One statement, so two workers on one file never take the same debt.
            with conn:
                rows = conn.execute(
                    "DELETE FROM counter_debts WHERE id IN "
                    "(SELECT id FROM counter_debts ORDER BY id LIMIT ?) "
                    "RETURNING key_id, day, requests, tokens",
                    (limit,),
                ).fetchall()
        return [CounterDebt(r[0], date.fromisoformat(r[1]), r[2], r[3]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._drop_connection()


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
    """The ledger a `storage.ledger` URI names, by its scheme in the store registry.

    Built in: `memory://`, `sqlite:///PATH`, `postgresql://...` (the `postgres` extra).
    """
    from axione_asgi.stores.registry import open_ledger_store

    return open_ledger_store(uri)


class LedgerUnavailable(sqlite3.OperationalError):
    """Raised by a ledger that cannot be reached (a database down, a pool exhausted).

    `LedgerWriter` keeps the batch whole and retries it later, as for a locked
    SQLite file, rather than trying its records one by one. A ledger of one's
    own raises it too; an error that is a record's own (one it can never
    store) is best raised as a ValueError, so the writer sets that record aside.
    """


# -- the side file: records the ledger could not take yet ---------------------------
# Errors that say a record itself cannot be stored (a count past SQLite's
# 64-bit INTEGER, a string that cannot be encoded): retrying will not help.
_RECORD_ERRORS: tuple[type[BaseException], ...] = (
    OverflowError,
    ValueError,
    TypeError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
)


def _spill_line(r: UsageRecord) -> str:
    return json.dumps(
        {
            "time": r.time.isoformat(),
            "key_id": r.key_id,
            "model": r.model,
            "provider": r.provider,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "estimated": r.estimated,
            "status": r.status,
            "latency_ms": r.latency_ms,
            "request_id": r.request_id,
            "cache_hit": r.cache_hit,
            "dialect": r.dialect,
            "session_id": r.session_id,
            "attempts": r.attempts,
        }
    )


def _from_spill_line(line: str) -> UsageRecord:
    data: dict[str, Any] = json.loads(line)
    return UsageRecord(
        time=datetime.fromisoformat(data["time"]),
        key_id=str(data["key_id"]),
        model=data.get("model"),
        provider=data.get("provider"),
        prompt_tokens=int(data["prompt_tokens"]),
        completion_tokens=int(data["completion_tokens"]),
        estimated=bool(data.get("estimated", False)),
        status=int(data["status"]),
        latency_ms=float(data.get("latency_ms", 0.0)),
        request_id=data.get("request_id"),
        cache_hit=bool(data.get("cache_hit", False)),
        dialect=data.get("dialect"),
        session_id=data.get("session_id"),
        attempts=int(data.get("attempts") or 0),
    )


def _open_locked(path: str, mode: str) -> IO[str]:
    """The side file, opened and locked against the other workers sharing it.

    A replay that emptied the file removes it while holding the lock, so a
    writer that got the lock on a removed file opens the path again.
    """
    while True:
        handle = open(path, mode, encoding="utf-8")  # noqa: SIM115 - closed by the caller
        if fcntl is None:
            return handle
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            if os.fstat(handle.fileno()).st_nlink > 0:
                return handle
        except BaseException:
            handle.close()
            raise
        handle.close()


def _append_lines(path: str, lines: Sequence[str]) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with _open_locked(path, "a") as handle:
        handle.write("".join(line + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())


class LedgerHealth:
    """What every `LedgerWriter` of this process did, for the metrics to read.

    Counters only grow; `pending()` is the records waiting now (queued, or
    kept after a failed write). The metrics module reads this object: the
    quota package imports nothing of observability.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.written = 0
        self.write_failures = 0
        self.spilled = 0
        self.replayed = 0
        self.lost = 0
        self._writers: weakref.WeakSet[LedgerWriter] = weakref.WeakSet()

    def add(self, what: str, count: int) -> None:
        """Add `count` to the counter named `what`."""
        with self._lock:
            setattr(self, what, getattr(self, what) + count)

    def pending(self) -> int:
        """Records the live writers have not written yet."""
        return sum(w.pending for w in list(self._writers))


LEDGER_HEALTH = LedgerHealth()


class _Run:
    """One writer thread's life: its stop flag and flush deadline."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.deadline = float("inf")
        # Set when `stop` gave up waiting for the thread: what it held was spilled.
        self.abandoned = False


class LedgerWriter:
    """Batches records from any thread or task into a `Ledger` on its own thread.

    `submit` never blocks and never wakes the thread: the thread wakes every
    `interval_s`, takes whatever was queued and writes it in batches of at
    most `batch_size` (one transaction each). `stop` writes everything
    submitted before it and joins the thread, within `flush_timeout_s`.

    When a write fails, the records are kept (in order) and retried after a
    backoff that doubles from `retry_base_s` up to `retry_max_s`; a failed
    batch is retried row by row, so a record the ledger cannot store is set
    aside alone. After `max_attempts` failed attempts in a row, when more than
    `max_pending` records wait, or when the final flush reaches its deadline,
    what waits is appended to `spill_path` (for a SQLite ledger the file's
    name plus `.spill.jsonl`), which `replay` (run at start) writes back into
    the ledger. Only when no side file can be written are records lost; each
    loss is logged with its count.
    """

    def __init__(
        self,
        ledger: Ledger,
        batch_size: int = 1_000,
        interval_s: float = 0.2,
        *,
        spill_path: str | None = None,
        flush_timeout_s: float = 10.0,
        max_pending: int = 100_000,
        max_attempts: int = 8,
        retry_base_s: float = 0.2,
        retry_max_s: float = 10.0,
    ) -> None:
        self.ledger = ledger
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.spill_path = spill_path or getattr(ledger, "spill_path", None)
        self.flush_timeout_s = flush_timeout_s
        self.max_pending = max_pending
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        # Records written to the ledger; records that did not reach it (spilled or lost).
        self.written = 0
        self.failed = 0
        self.write_failures = 0
        self.spilled = 0
        self.replayed = 0
        self.lost = 0
        self._queue: queue.SimpleQueue[UsageRecord] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the thread's start and stop
        self._state = threading.Lock()  # the backlog and the counts
        self._replaying = threading.Lock()
        self._thread: threading.Thread | None = None
        self._run: _Run | None = None
        # Taken from the queue, not yet written (oldest first).
        self._backlog: list[UsageRecord] = []
        self._attempts = 0
        self._retry_at = 0.0
        self._replay_due = True
        self._replay_at = 0.0
        LEDGER_HEALTH._writers.add(self)

    @property
    def pending(self) -> int:
        """Records submitted and not yet written, spilled or lost."""
        return len(self._backlog) + self._queue.qsize()

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread if it is not running."""
        with self._lock:
            if self._thread is None:
                # Each thread has its own run, so a writer started while an
                # old thread is finishing never sees the old one's stop.
                run = self._run = _Run()
                # Daemon: an unclean exit must not hang on it (a clean stop flushes).
                self._thread = threading.Thread(
                    target=self._main, args=(run,), name="axione-ledger", daemon=True
                )
                self._thread.start()

    def submit(self, record: UsageRecord) -> None:
        """Queue one record; starts the thread on first use."""
        if self._thread is None:
            self.start()
        self._queue.put(record)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Write every queued record, then end the thread; spill what is left at the deadline.

        The deadline is `timeout_s` (default `flush_timeout_s`) from now. If
        the thread is still inside a ledger call a few seconds past it, what
        it holds is spilled here and the thread is left to end alone.
        """
        timeout = self.flush_timeout_s if timeout_s is None else timeout_s
        with self._lock:
            thread, self._thread = self._thread, None
            run = self._run
            if run is not None:
                run.deadline = time.monotonic() + timeout
                run.stopping.set()
        if thread is None or run is None:
            return
        # A ledger call may block past the deadline (SQLite waits `busy_timeout_s`).
        await anyio.to_thread.run_sync(thread.join, timeout + 5.0)
        if thread.is_alive():
            await anyio.to_thread.run_sync(self._abandon, run)

    def _abandon(self, run: _Run) -> None:
        with self._state:
            run.abandoned = True
            held, self._backlog = self._backlog, []
        held.extend(self._take_queue())
        logger.error(
            "usage ledger: the writer is stuck in a ledger call past the shutdown deadline; "
            "%d records are spilled (some may also reach the ledger if the call completes)",
            len(held),
        )
        self._spill_or_lose(held, "the shutdown deadline passed")

    # -- the thread --------------------------------------------------------------
    def _main(self, run: _Run) -> None:
        if self._replay_due:
            self._guarded(self.replay)
        while True:
            # A timed wait rather than a blocking get: a busy server's records
            # then cost the event loop a queue append, not a thread wake-up each.
            last = run.stopping.wait(self.interval_s)
            if last:
                self._guarded(lambda: self._final_flush(run))
                return
            self._guarded(lambda: self._cycle(run))

    def _guarded(self, step: Any) -> None:
        try:
            step()
        except Exception:  # a bug here must not end the thread, or records pile up
            logger.exception("usage ledger: unexpected error in the writer")

    def _take_queue(self) -> list[UsageRecord]:
        taken: list[UsageRecord] = []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                return taken

    def _cycle(self, run: _Run) -> None:
        fresh = self._take_queue()
        with self._state:
            self._backlog.extend(fresh)
            waiting = len(self._backlog)
        if not waiting:
            # Spilled records go back as soon as the ledger takes writes again.
            if self._replay_due and time.monotonic() >= self._replay_at:
                self._replay_at = time.monotonic() + self.retry_max_s
                self.replay()
            return
        if self._attempts and time.monotonic() < self._retry_at:
            if waiting > self.max_pending:
                self._spill_backlog(f"more than {self.max_pending} records wait")
            return
        if self._write_backlog(run):
            if self._attempts:
                logger.warning(
                    "usage ledger: writes succeed again after %d failed attempts", self._attempts
                )
                self._attempts = 0
            if self._replay_due:
                self.replay()
            return
        if run.abandoned:
            return
        self._attempts += 1
        if self._attempts >= self.max_attempts:
            self._spill_backlog(f"{self._attempts} attempts failed")
            self._attempts = 0
        elif self.pending > self.max_pending:
            self._spill_backlog(f"more than {self.max_pending} records wait")
        else:
            delay = self._backoff()
            self._retry_at = time.monotonic() + delay
            logger.warning(
                "usage ledger: %d records wait to be written; next attempt in %.1f s",
                self.pending,
                delay,
            )

    def _backoff(self) -> float:
        return float(min(self.retry_max_s, self.retry_base_s * 2 ** max(0, self._attempts - 1)))

    def _final_flush(self, run: _Run) -> None:
        while not run.abandoned:
            fresh = self._take_queue()
            with self._state:
                self._backlog.extend(fresh)
            if self._write_backlog(run):
                if not self._queue.empty():
                    continue
                return
            remaining = run.deadline - time.monotonic()
            if remaining <= 0 or run.abandoned:
                break
            self._attempts += 1
            time.sleep(min(remaining, self._backoff()))
        with self._state:
            if run.abandoned:
                return
            held, self._backlog = self._backlog, []
        held.extend(self._take_queue())
        if held:
            logger.warning(
                "usage ledger: the flush deadline passed with %d records unwritten", len(held)
            )
            self._spill_or_lose(held, "the shutdown deadline passed")

    # -- writing -----------------------------------------------------------------
    def _write_backlog(self, run: _Run) -> bool:
        """Write the backlog from its oldest record; True once it is empty.

        A failed batch is written row by row: rows the ledger cannot store
        are spilled at once; the first failure that looks like the ledger's
        own (locked, full, gone) stops the pass, keeping the rest in order.
        """
        while True:
            with self._state:
                batch = self._backlog[: self.batch_size]
            if not batch:
                return True
            if run.abandoned or time.monotonic() > run.deadline:
                return False
            kept: list[UsageRecord] = []
            rejected: list[UsageRecord] = []
            written = len(batch)
            try:
                self.ledger.write(batch)
            except Exception as exc:
                self._count("write_failures", 1)
                logger.warning(
                    "usage ledger: writing %d records failed: %s: %s",
                    len(batch),
                    type(exc).__name__,
                    exc,
                )
                if isinstance(exc, sqlite3.OperationalError):
                    # Locked, full, read-only, gone: the file's trouble, not a record's.
                    kept, written = batch, 0
                else:
                    kept, rejected, written = self._write_rows(batch, run)
            with self._state:
                if run.abandoned:
                    if written:
                        logger.warning(
                            "usage ledger: %d records were written after the shutdown deadline "
                            "and may also be in the spill file",
                            written,
                        )
                    return False
                self._backlog[: len(batch)] = kept
            self._count("written", written)
            if rejected:
                self._spill_or_lose(rejected, "the ledger cannot store them", replay=False)
            if kept:
                return False

    def _write_rows(
        self, batch: list[UsageRecord], run: _Run
    ) -> tuple[list[UsageRecord], list[UsageRecord], int]:
        """(kept for a retry, rejected for good, count written) of a batch written row by row."""
        kept: list[UsageRecord] = []
        rejected: list[UsageRecord] = []
        written = 0
        for i, r in enumerate(batch):
            if run.abandoned:
                kept.extend(batch[i:])
                break
            try:
                self.ledger.write([r])
            except _RECORD_ERRORS as exc:
                logger.error(
                    "usage ledger: a record of key %s (request %s) cannot be stored: %s",
                    r.key_id,
                    r.request_id,
                    exc,
                )
                rejected.append(r)
            except Exception:
                self._count("write_failures", 1)
                # The ledger itself fails (nothing written yet, or twice in a row): stop here.
                if not written or (kept and kept[-1] is batch[i - 1]):
                    kept.extend(batch[i:])
                    break
                kept.append(r)
            else:
                written += 1
        return kept, rejected, written

    def _spill_backlog(self, reason: str) -> None:
        with self._state:
            held = list(self._backlog)
        if self._spill(held, reason):
            with self._state:
                del self._backlog[: len(held)]
            return
        with self._state:
            excess = len(self._backlog) - self.max_pending
            dropped = self._backlog[:excess] if excess > 0 else []
            del self._backlog[: len(dropped)]
        if dropped:
            self._lose(dropped, "the backlog is full and the spill file cannot be written")

    def _spill_or_lose(
        self, records: list[UsageRecord], reason: str, *, replay: bool = True
    ) -> None:
        if not self._spill(records, reason, replay=replay):
            self._lose(records, "the spill file cannot be written")

    def _spill(self, records: list[UsageRecord], reason: str, *, replay: bool = True) -> bool:
        if not records:
            return True
        path = self.spill_path
        if path is None:
            return False
        try:
            _append_lines(path, [_spill_line(r) for r in records])
        except (OSError, ValueError) as exc:
            logger.error("usage ledger: cannot spill %d records to %s: %s", len(records), path, exc)
            return False
        self._count("spilled", len(records))
        self._count("failed", len(records))
        if replay:
            self._replay_due = True
        logger.warning(
            "usage ledger: %d records spilled to %s (%s); they are written to the ledger "
            "at the next start",
            len(records),
            path,
            reason,
        )
        return True

    def _lose(self, records: list[UsageRecord], reason: str) -> None:
        self._count("lost", len(records))
        self._count("failed", len(records))
        logger.error("usage ledger: %d records lost (%s)", len(records), reason)

    def _count(self, what: str, count: int) -> None:
        if count:
            with self._state:
                setattr(self, what, getattr(self, what) + count)
            if what != "failed":
                LEDGER_HEALTH.add(what, count)

    # -- the side file -------------------------------------------------------------
    def replay(self) -> int:
        """Write the records of the side file into the ledger; returns how many were.

        Blocking: run it in a thread. Records the ledger still cannot take
        stay in the file (lines that are not records too), so nothing there is
        ever dropped; several workers sharing the file replay it one at a time.
        """
        path = self.spill_path
        self._replay_due = False
        if path is None or not os.path.exists(path):
            return 0
        with self._replaying:
            try:
                handle = _open_locked(path, "r+")
            except FileNotFoundError:
                return 0
            with handle:
                lines = [line for line in handle.read().splitlines() if line.strip()]
                if not lines:
                    os.unlink(path)
                    return 0
                kept, replayed, down = self._replay_lines(lines)
                # Lines the ledger refused for themselves wait for an operator; the rest retry.
                self._replay_due = down
                if kept:
                    handle.seek(0)
                    handle.truncate()
                    handle.write("".join(line + "\n" for line in kept))
                    handle.flush()
                    os.fsync(handle.fileno())
                else:
                    os.unlink(path)  # under the lock: appenders waiting on it reopen the path
        self._count("replayed", replayed)
        if replayed:
            logger.info("usage ledger: %d spilled records written from %s", replayed, path)
        if kept:
            logger.warning(
                "usage ledger: %d lines of %s could not be written yet; they stay there",
                len(kept),
                path,
            )
        return replayed

    def _replay_lines(self, lines: list[str]) -> tuple[list[str], int, bool]:
        kept: list[str] = []
        parsed: list[tuple[str, UsageRecord]] = []
        for line in lines:
            try:
                parsed.append((line, _from_spill_line(line)))
            except (ValueError, KeyError, TypeError):
                kept.append(line)
        replayed = 0
        down = False
        for start in range(0, len(parsed), self.batch_size):
            chunk = parsed[start : start + self.batch_size]
            if down:
                kept.extend(line for line, _ in chunk)
                continue
            try:
                self.ledger.write([r for _, r in chunk])
                replayed += len(chunk)
                continue
            except sqlite3.OperationalError:
                down = True
                kept.extend(line for line, _ in chunk)
                continue
            except Exception:
                pass  # one of them, perhaps: row by row
            for i, (line, r) in enumerate(chunk):
                try:
                    self.ledger.write([r])
                    replayed += 1
                except _RECORD_ERRORS:
                    kept.append(line)
                except Exception:
                    down = True
                    kept.extend(line for line, _ in chunk[i:])
                    break
        return kept, replayed, down
