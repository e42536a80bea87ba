"""Exact limits across worker processes sharing a real Redis (and one SQLite ledger)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from axione_asgi.keys import hash_key
from axione_asgi.quota import SQLiteLedger
from tests.helpers import AxioneServer, free_port, wait_for_port
from tests.quota_app import CHAT, REDIS_WORKERS_DB, forget_redis_keys, redis_uri, static_key

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 10


def config_key_id(secret: str) -> str:
    # LayeredKeyStore names a [[keys]] key after its hash.
    return f"cfg_{hash_key(secret)[:12]}"


async def fire(urls: list[str], secret: str, count: int = 100) -> list[httpx.Response]:
    """`count` chat requests at once, spread over `urls` in turn."""
    responses: list[httpx.Response] = []
    headers = {"authorization": f"Bearer {secret}"}
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(url: str) -> None:
            responses.append(await client.post(url, json=CHAT, headers=headers))

        async with anyio.create_task_group() as tg:
            for n in range(count):
                tg.start_soon(one, urls[n % len(urls)])
    return responses


def worker_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


async def test_axione_serve_with_two_workers_admits_exactly_the_limit(tmp_path: Path) -> None:
    secret, entry = static_key()
    ledger = tmp_path / "ledger.db"
    (tmp_path / "axione.toml").write_text(
        f"""
[storage]
keys = "memory://"
ledger = "sqlite:///{ledger}"
counters = "{redis_uri(REDIS_WORKERS_DB)}"

[providers.demo]
kind = "demo"

[tiers.1]
requests_per_day = {LIMIT}
tokens_per_day = 10000000

[[keys]]
name = "{entry["name"]}"
key_sha256 = "{entry["key_sha256"]}"
tier = 1
"""
    )
    port = free_port()
    server = AxioneServer(["--config", "axione.toml", "--workers", "2"], cwd=tmp_path, port=port)
    try:
        server.wait_ready()
        deadline = time.monotonic() + 15
        while len(worker_pids(server.proc.pid)) < 2:
            assert time.monotonic() < deadline, server.output()
            await anyio.sleep(0.1)
        url = f"{server.base_url}/api/v1/chat/completions"
        responses = await fire([url], secret)
        assert Counter(r.status_code for r in responses) == {200: LIMIT, 429: 100 - LIMIT}, (
            server.output()
        )
        refused = {r.json()["error"]["code"] for r in responses if r.status_code == 429}
        assert refused == {"daily_request_limit_exceeded"}
    finally:
        server.stop()
        await forget_redis_keys(config_key_id(secret), REDIS_WORKERS_DB)
    # A clean stop flushed both workers' ledgers into the one file.
    assert len(SQLiteLedger(str(ledger)).records(key_id=config_key_id(secret))) == LIMIT


@contextlib.contextmanager
def uvicorn_processes(count: int, env: dict[str, str]) -> Iterator[list[str]]:
    """`count` separate uvicorn processes serving `tests.quota_app:create`; yields base URLs."""
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for _ in range(count):
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "tests.quota_app:create",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
            procs.append((proc, port))
        for _, port in procs:
            wait_for_port(port)
        yield [f"http://127.0.0.1:{port}" for _, port in procs]
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_two_processes_on_two_ports_admit_exactly_the_limit_together(
    tmp_path: Path,
) -> None:
    secret, _ = static_key()
    ledger = tmp_path / "ledger.db"
    env = {
        **os.environ,
        "AXIONE_QUOTA_TEST_SECRET": secret,
        "AXIONE_QUOTA_TEST_LIMIT": str(LIMIT),
        "AXIONE_QUOTA_TEST_COUNTERS": redis_uri(REDIS_WORKERS_DB),
        "AXIONE_QUOTA_TEST_LEDGER": f"sqlite:///{ledger}",
    }
    try:
        with uvicorn_processes(2, env) as bases:
            responses = await fire([f"{b}/chat/completions" for b in bases], secret)
            assert Counter(r.status_code for r in responses) == {200: LIMIT, 429: 100 - LIMIT}
            assert len({r.headers["x-worker-pid"] for r in responses}) == 2
            assert {r.headers["x-worker-pid"] for r in responses if r.status_code == 200}
    finally:
        await forget_redis_keys(config_key_id(secret), REDIS_WORKERS_DB)
    assert len(SQLiteLedger(str(ledger)).records(key_id=config_key_id(secret))) == LIMIT
