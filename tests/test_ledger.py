"""The usage ledger: one record per admitted request, batched, flushed on stop, durable."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from axione_asgi.quota import (
    LedgerWriter,
    MemoryLedger,
    SQLiteLedger,
    UsageRecord,
    open_ledger,
    usage_report,
)
from axione_asgi.stores import MemoryKeyStore
from tests.quota_app import (
    CHAT,
    Gateway,
    forget_redis_keys,
    gateway,
    quota_config,
    redis_uri,
)

pytestmark = pytest.mark.anyio

ROOMY = {1: {"requests_per_day": 5_000, "tokens_per_day": 10_000_000}}


def record(n: int = 0, key_id: str = "key_a") -> UsageRecord:
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
    )


async def fire(gw: Gateway, count: int, concurrency: int = 50) -> None:
    limiter = anyio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            assert (await gw.chat(CHAT)).status_code == 200

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)


async def test_thousand_requests_then_a_clean_stop_leave_exactly_a_thousand_records(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    config = quota_config(tiers=ROOMY, ledger=f"sqlite:///{path}")
    async with gateway(config) as gw:
        await fire(gw, 1_000)
        key_id = gw.key_id
    # Leaving `gateway` ran the lifespan's shutdown: the ledger is flushed.
    rows = SQLiteLedger(str(path)).records(key_id=key_id)
    assert len(rows) == 1_000
    assert len({r.request_id for r in rows}) == 1_000
    assert all(r.status == 200 and r.total_tokens == 6 and not r.estimated for r in rows)


async def test_sqlite_ledger_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    config = quota_config(tiers=ROOMY, ledger=f"sqlite:///{path}")
    store = MemoryKeyStore()
    async with gateway(config, store=store) as gw:
        await fire(gw, 3)
        key_id = gw.key_id
    async with gateway(config, store=store) as gw:
        await fire(gw, 2)
    reopened = SQLiteLedger(str(path))
    assert len(reopened.records(key_id=key_id)) == 3
    assert len(reopened.records()) == 5
    reopened.close()


async def test_a_record_holds_what_the_request_did(tmp_path: Path) -> None:
    async with gateway(quota_config(ledger=f"sqlite:///{tmp_path / 'l.db'}")) as gw:
        response = await gw.chat(CHAT)
        quota = gw.app.runtime.quota
        await quota.writer.stop()
        (row,) = quota.ledger.records(key_id=gw.key_id)
    usage = response.json()["usage"]
    assert (row.model, row.provider, row.status, row.estimated) == ("demo/echo", "demo", 200, False)
    assert (row.prompt_tokens, row.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert row.request_id == response.headers["x-request-id"]
    assert row.latency_ms > 0
    assert row.time.tzinfo is not None


class CountingLedger(MemoryLedger):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.batches.append(len(records))
        super().write(records)


async def test_writer_writes_in_batches_and_stop_flushes_everything() -> None:
    ledger = CountingLedger()
    writer = LedgerWriter(ledger, batch_size=100, interval_s=5.0)
    for n in range(1_050):
        writer.submit(record(n))
    await writer.stop()
    assert sum(ledger.batches) == 1_050
    assert max(ledger.batches) <= 100
    assert len(ledger.batches) <= 12
    assert writer.written == 1_050


async def test_writer_can_start_again_after_a_stop() -> None:
    ledger = MemoryLedger()
    writer = LedgerWriter(ledger, interval_s=0.01)
    writer.submit(record(1))
    await writer.stop()
    writer.submit(record(2))
    await writer.stop()
    assert [r.request_id for r in ledger.records()] == ["req_1", "req_2"]


def test_sqlite_and_memory_ledgers_sum_alike(tmp_path: Path) -> None:
    records = [record(n, key_id="key_a" if n % 3 else "key_b") for n in range(30)]
    sqlite = open_ledger(f"sqlite:///{tmp_path / 'sum.db'}")
    memory = open_ledger("memory://")
    for ledger in (sqlite, memory):
        ledger.write(records)
    day = records[0].time.date()
    assert sqlite.totals(day=day) == memory.totals(day=day)
    totals = memory.totals(day=day)
    assert totals["key_b"].requests == 10 and totals["key_a"].requests == 20
    assert totals["key_a"].total_tokens == 140
    assert sqlite.records(key_id="key_b") == memory.records(key_id="key_b")
    sqlite.close()


def test_a_ledger_file_is_created_on_first_use_only(tmp_path: Path) -> None:
    path = tmp_path / "lazy.db"
    ledger = open_ledger(f"sqlite:///{path}")
    assert not path.exists()
    ledger.write([record()])
    assert path.exists()
    ledger.close()


async def test_usage_report_reads_the_ledger_when_counters_are_per_process(
    tmp_path: Path,
) -> None:
    config = quota_config(ledger=f"sqlite:///{tmp_path / 'report.db'}")
    store = MemoryKeyStore()
    async with gateway(config, store=store) as gw:
        await fire(gw, 4)
        key_id = gw.key_id
    other, _ = await store.create("idle")
    # A fresh process would see empty memory counters: the ledger is the truth.
    reports = await usage_report(config, key_store=store)
    by_id = {r["key_id"]: r for r in reports}
    assert by_id[key_id]["counted_by"] == "ledger"
    assert by_id[key_id]["used"] == {"requests": 4, "tokens": 24}
    assert by_id[key_id]["ledger"]["requests"] == 4
    assert by_id[key_id]["remaining"]["requests"] == 6
    assert by_id[other.id]["used"] == {"requests": 0, "tokens": 0}
    (one,) = await usage_report(config, key_id, key_store=store)
    assert one["name"] == "quota-test" and one["tier"] == 1
    with pytest.raises(LookupError):
        await usage_report(config, "key_nope", key_store=store)


async def test_usage_report_reads_shared_counters_live(tmp_path: Path) -> None:
    config = quota_config(counters=redis_uri(), ledger=f"sqlite:///{tmp_path / 'r.db'}")
    store = MemoryKeyStore()
    async with gateway(config, store=store) as gw:
        try:
            await fire(gw, 3)
            (report,) = await usage_report(config, gw.key_id, key_store=store)
            assert report["counted_by"] == "counters"
            assert report["used"]["requests"] == 3
        finally:
            await forget_redis_keys(gw.key_id)
