"""The ledger loses nothing silently: failed writes are retried, then spilled, then replayed.

A full disk, a write lock held by someone else, a record SQLite cannot store,
a shutdown while the file is locked: the records are kept in memory and
retried with backoff, written row by row when a batch fails (one bad record
never drops the others), spilled to `<ledger file>.spill.jsonl` when retries
run out, the queue grows too long or the final flush reaches its deadline,
and replayed into the ledger at the next start. Failures are counted for the
metrics.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from axione_asgi import AxioneConfig, create_app
from axione_asgi.quota import LedgerWriter, SQLiteLedger, UsageRecord
from axione_asgi.stores import MemoryKeyStore
from tests.quota_app import CHAT, Gateway, MovableClock, asgi_client, gateway, quota_config

pytestmark = pytest.mark.anyio

ROOMY = {1: {"requests_per_day": 100_000, "tokens_per_day": 100_000_000}}


def record(n: int, key_id: str = "key_a", **changes: Any) -> UsageRecord:
    base = UsageRecord(
        time=datetime(2030, 5, 17, 12, 0, n % 60, tzinfo=UTC),
        key_id=key_id,
        model="demo/echo",
        provider="demo",
        prompt_tokens=3,
        completion_tokens=4,
        estimated=False,
        status=200,
        latency_ms=1.5,
        request_id=f"req_{n}",
    )
    return replace(base, **changes)


class FlakyLedger(SQLiteLedger):
    """A SQLite ledger whose writes fail with `error` while `failing` says so."""

    def __init__(self, path: str, error: str = "database or disk is full") -> None:
        super().__init__(path)
        self.error = error
        self.failing = True
        self.until = float("inf")
        self.attempts = 0

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.attempts += 1
        if self.failing and time.monotonic() < self.until:
            raise sqlite3.OperationalError(self.error)
        super().write(records)


def rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT request_id FROM usage_ledger ORDER BY id")]


def spilled(path: Path) -> list[dict[str, Any]]:
    spill = Path(f"{path}.spill.jsonl")
    if not spill.exists():
        return []
    return [json.loads(line) for line in spill.read_text().splitlines() if line.strip()]


async def test_with_the_disk_full_no_record_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    SQLiteLedger(str(path)).write([record(-1)])  # the file exists; now the disk fills up
    ledger = FlakyLedger(str(path))
    writer = LedgerWriter(ledger, interval_s=0.01, flush_timeout_s=1.0)
    for n in range(3_000):
        writer.submit(record(n))
    await writer.stop()
    assert writer.written == 0
    assert len(spilled(path)) == 3_000
    # Space again; the next start puts the spilled records where they belong.
    ledger.failing = False
    writer = LedgerWriter(ledger, interval_s=0.01)
    writer.start()
    await writer.stop()
    ledger.close()
    assert sorted(rows(path)) == sorted(["req_-1", *(f"req_{n}" for n in range(3_000))])
    assert spilled(path) == []


async def test_one_record_sqlite_cannot_store_does_not_drop_the_others(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(str(path))
    writer = LedgerWriter(ledger, interval_s=0.01)
    for n in range(100):
        # 10**23 overflows SQLite's 64-bit INTEGER.
        writer.submit(record(n, prompt_tokens=10**23) if n == 50 else record(n))
    await writer.stop()
    ledger.close()
    assert rows(path) == [f"req_{n}" for n in range(100) if n != 50]
    # The bad one is kept aside, not lost.
    assert [r["request_id"] for r in spilled(path)] == ["req_50"]
    assert spilled(path)[0]["prompt_tokens"] == 10**23


async def test_a_write_lock_held_for_a_while_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = FlakyLedger(str(path), error="database is locked")
    ledger.until = time.monotonic() + 1.5  # the lock is released after 1.5 s
    writer = LedgerWriter(ledger, interval_s=0.01)
    for n in range(82):
        writer.submit(record(n))
    with anyio.fail_after(15):
        while writer.written < 82:
            await anyio.sleep(0.05)
    await writer.stop()
    ledger.close()
    assert rows(path) == [f"req_{n}" for n in range(82)]
    assert spilled(path) == []
    assert ledger.attempts > 1


async def test_a_real_sqlite_lock_is_waited_out_with_backoff(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(str(path), busy_timeout_s=0.2)
    ledger.write([record(-1)])
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.5, holder.execute, args=("COMMIT",))
    release.start()
    try:
        writer = LedgerWriter(ledger, interval_s=0.01)
        for n in range(82):
            writer.submit(record(n))
        with anyio.fail_after(15):
            while writer.written < 82:
                await anyio.sleep(0.05)
        await writer.stop()
    finally:
        release.join()
        holder.close()
    ledger.close()
    assert rows(path) == ["req_-1", *(f"req_{n}" for n in range(82))]
    assert writer.write_failures > 0


async def test_shutdown_while_the_file_is_locked_ends_by_its_deadline_and_spills(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(str(path), busy_timeout_s=0.5)
    ledger.write([record(-1)])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # held through the whole shutdown
    try:
        writer = LedgerWriter(ledger, interval_s=0.01, flush_timeout_s=1.0)
        for n in range(50):
            writer.submit(record(n))
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="axione"):
            await writer.stop()
        took = time.monotonic() - began
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert took < 3.0
    assert len(spilled(path)) == 50
    assert any("50" in r.getMessage() and "spill" in r.getMessage() for r in caplog.records)
    writer = LedgerWriter(ledger, interval_s=0.01)
    writer.start()
    await writer.stop()
    ledger.close()
    assert rows(path) == ["req_-1", *(f"req_{n}" for n in range(50))]


async def test_a_queue_too_long_for_memory_is_spilled(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = FlakyLedger(str(path))
    writer = LedgerWriter(ledger, interval_s=0.01, max_pending=100)
    for n in range(1_000):
        writer.submit(record(n))
    with anyio.fail_after(10):
        while len(spilled(path)) < 900:
            await anyio.sleep(0.05)
    await writer.stop()
    assert len(spilled(path)) == 1_000
    ledger.close()


async def test_the_gateway_replays_spilled_records_at_start_and_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.db"
    clock = MovableClock()
    config = quota_config(tiers=ROOMY, ledger=f"sqlite:///{path}")
    config.storage.ledger_flush_timeout_s = 0.5  # the disk stays full through the shutdown
    store = MemoryKeyStore()

    def full(self: SQLiteLedger, records: Sequence[UsageRecord]) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(SQLiteLedger, "write", full)
        async with gateway(config, clock=clock, store=store) as gw:
            for _ in range(30):
                assert (await gw.chat(CHAT)).status_code == 200
            key_id, secret = gw.key_id, gw.secret
    assert len(spilled(path)) == 30
    app = create_app(config, key_store=store, clock=clock)
    async with app.lifespan(), asgi_client(app) as client:
        gw = Gateway(app, store, key_id, secret, client)
        # Replayed before the counters were seeded: the day is whole.
        assert (await gw.usage())["used"]["requests"] == 30
    assert len(rows(path)) == 30
    assert spilled(path) == []


async def test_ledger_failures_are_exported_as_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.db"
    config = AxioneConfig.from_mapping(
        {
            "storage": {
                "keys": "memory://",
                "ledger": f"sqlite:///{path}",
                "ledger_flush_timeout_s": 0.5,
            },
            "metrics": {"enabled": True},
        }
    )

    def full(self: SQLiteLedger, records: Sequence[UsageRecord]) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(SQLiteLedger, "write", full)
    app = create_app(config)
    _, secret = await app.runtime.key_store.create("metered")
    transport = httpx.ASGITransport(app=app)
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        before = _ledger_samples((await c.get("/metrics")).text)
        headers = {"authorization": f"Bearer {secret}"}
        for _ in range(3):
            assert (await c.post("/chat/completions", json=CHAT, headers=headers)).is_success
        with anyio.fail_after(10):
            while True:
                now = _ledger_samples((await c.get("/metrics")).text)
                if now["axione_ledger_write_failures_total"] > before.get(
                    "axione_ledger_write_failures_total", 0
                ):
                    break
                await anyio.sleep(0.05)
        assert now["axione_ledger_records_pending"] >= 3
    after = app.runtime.quota.writer
    assert after.spilled >= 3


def _ledger_samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("axione_ledger"):
                out[s.name] = s.value
    return out


async def test_spilled_records_go_back_once_the_ledger_takes_writes_again(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = FlakyLedger(str(path), error="database is locked")
    ledger.until = time.monotonic() + 1.0  # longer than this writer's retries last
    writer = LedgerWriter(
        ledger, interval_s=0.01, max_attempts=3, retry_base_s=0.05, retry_max_s=0.2
    )
    for n in range(82):
        writer.submit(record(n))
    with anyio.fail_after(10):
        while writer.spilled < 82:
            await anyio.sleep(0.02)
        # No restart: the writer puts them back itself once writes succeed.
        while writer.replayed < 82:
            await anyio.sleep(0.05)
    await writer.stop()
    ledger.close()
    assert rows(path) == [f"req_{n}" for n in range(82)]
    assert spilled(path) == []
