"""Soak a real `axione serve` on 127.0.0.1: many clients, hang-ups, a failing upstream.

N concurrent clients call the gateway for T seconds. A share of the streamed
calls hang up mid-stream; the fake upstream (a subprocess) fails every Kth
call with a 500, and half the requests name a fallback model. Afterwards it
checks, and prints as JSON:

- every answer is one the SPEC allows: 200, or SPEC error JSON with 502/503/504,
  or a stream that ends in `[DONE]` or in an SSE `{"error": ...}` event;
- the gateway's open file descriptors and RSS are back near their start
  (after a warm-up at the same concurrency);
- ledger records (SQLite, read after a clean SIGTERM) == admitted requests,
  and the counters (Redis db 9, via `/usage`) == the ledger, requests and tokens;
- no gateway key or upstream key in any response body or in the server's output.

Run: `python benchmarks/soak.py --clients 32 --seconds 60` (Redis on 127.0.0.1:6379;
the script flushes db 9). Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-upstream-soak-" + "0123456789abcdef"
REDIS_DB = 9

CONFIG = """\
prefix = "/api/v1"
[storage]
keys = "memory://"
ledger = "sqlite:///{db}"
counters = "redis://127.0.0.1:6379/{redis_db}"
[tiers.1]
requests_per_day = 100000000
tokens_per_day = 100000000000
[retry]
max_retries = 1
backoff_s = 0.01
backoff_max_s = 0.05
deadline_s = 10
[providers.flaky]
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "{upstream_key}"
timeout_s = 10
models = {{ "a" = "model-a", "b" = "model-b" }}
[[keys]]
name = "soak"
key_sha256 = "{sha}"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def serve_upstream(port: int, fail_every: int, chunks: int, interval_s: float) -> None:
    """The fake upstream process: tests/fakes/slow_openai.py under uvicorn."""
    import uvicorn

    sys.path.insert(0, str(ROOT))
    from tests.fakes.slow_openai import SlowOpenAI

    app = SlowOpenAI(
        api_key=UPSTREAM_KEY, chunks=chunks, interval_s=interval_s, fail_every=fail_every
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@dataclass
class Tally:
    sent: int = 0
    admitted: int = 0  # got a response start from the gateway (all are admitted: valid, known)
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    leaks: int = 0


def process_stats(pid: int) -> tuple[int, int]:
    """(RSS bytes, open file descriptors) of a process, from /proc."""
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def one_call(
    client: httpx.AsyncClient, tally: Tally, key: str, rng: random.Random, hangup_share: float
) -> None:
    stream = rng.random() < 0.6
    body: dict[str, Any] = {
        "model": "flaky/a",
        "stream": stream,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "soak " * rng.randint(1, 20)}],
    }
    if rng.random() < 0.5:
        body["models"] = ["flaky/b"]
    hangup = stream and rng.random() < hangup_share
    tally.sent += 1
    headers = {"authorization": f"Bearer {key}"}
    try:
        async with client.stream("POST", "/chat/completions", json=body, headers=headers) as r:
            tally.admitted += 1
            text = ""
            if hangup:
                async for line in r.aiter_lines():
                    text += line + "\n"
                    if text.count("data: ") >= 2:
                        break
                tally.outcomes["hung_up"] += 1
            else:
                text = (await r.aread()).decode()
                classify(r.status_code, r.headers.get("content-type", ""), text, tally)
            if key in text or UPSTREAM_KEY in text:
                tally.leaks += 1
    except httpx.HTTPError as exc:
        tally.violations.append(f"transport error on a client that stayed: {exc!r}")


def classify(status: int, ctype: str, text: str, tally: Tally) -> None:
    if status == 200 and ctype.startswith("text/event-stream"):
        events = [ln[6:] for ln in text.splitlines() if ln.startswith("data: ")]
        if events and events[-1] == "[DONE]":
            tally.outcomes["stream_done"] += 1
        elif events and '"error"' in events[-1]:
            tally.outcomes["stream_error_event"] += 1
        else:
            tally.violations.append(f"stream ended without [DONE] or an error: {text[-200:]!r}")
        return
    if status == 200:
        tally.outcomes["200"] += 1
        return
    try:
        error = json.loads(text)["error"]
        assert {"type", "message", "code", "param"} <= set(error)
    except (ValueError, KeyError, TypeError, AssertionError):
        tally.violations.append(f"{status} without SPEC error JSON: {text[:200]!r}")
        return
    if status in (502, 503, 504):
        tally.outcomes[f"{status} {error['code']}"] += 1
    else:
        tally.violations.append(f"status {status} the SPEC does not allow here: {text[:200]!r}")


async def drive(
    base: str, key: str, clients: int, seconds: float, hangup_share: float, seed: int
) -> Tally:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker(n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            while time.monotonic() < deadline:
                await one_call(client, tally, key, rng, hangup_share)

        await asyncio.gather(*(worker(n) for n in range(clients)))
    return tally


def flush_redis() -> None:
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--hangup-share", type=float, default=0.2)
    parser.add_argument("--fail-every", type=int, default=5, help="upstream fails 1 call in K")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rss-growth-mb", type=float, default=25, help="allowed RSS growth")
    parser.add_argument("--fd-slack", type=int, default=8, help="allowed extra descriptors")
    parser.add_argument("--settle-s", type=float, default=40, help="longest wait for fds")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.fail_every, chunks=8, interval_s=0.01)
        return 0

    flush_redis()
    key = "sk-ax-soak-" + secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "ledger.db"
        up_port, gw_port = free_port(), free_port()
        config = Path(folder) / "axione.toml"
        config.write_text(
            CONFIG.format(
                db=db, redis_db=REDIS_DB, upstream_port=up_port, upstream_key=UPSTREAM_KEY,
                sha=hashlib.sha256(key.encode()).hexdigest(),
            )
        )  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env["PYTHONPATH"] = str(ROOT)
        upstream = subprocess.Popen(
            [sys.executable, __file__, "--serve-upstream", str(up_port),
             "--fail-every", str(args.fail_every)], env=env,
        )  # fmt: skip
        log_path = Path(folder) / "server.log"
        log = open(log_path, "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [sys.executable, "-m", "axione_asgi.cli", "serve", "--config", str(config),
             "--port", str(gw_port), "--log-level", "info"],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(up_port, upstream)
            wait_for(gw_port, server)
            base = f"http://127.0.0.1:{gw_port}/api/v1"
            warm = asyncio.run(drive(base, key, args.clients, 5, args.hangup_share, args.seed + 1))
            time.sleep(1.0)
            rss0, fds0 = process_stats(server.pid)
            began = time.monotonic()
            tally = asyncio.run(
                drive(base, key, args.clients, args.seconds, args.hangup_share, args.seed)
            )
            elapsed = time.monotonic() - began
            rss_peak, fds_peak = process_stats(server.pid)
            time.sleep(2.0)  # cut streams settle, idle client connections close
            fds_2s = process_stats(server.pid)[1]
            # The upstream pool keeps idle connections for httpx's keep-alive
            # expiry (30 s): wait that out before calling descriptors leaked.
            settle_until = time.monotonic() + args.settle_s
            while True:
                rss1, fds1 = process_stats(server.pid)
                if fds1 <= fds0 + args.fd_slack or time.monotonic() > settle_until:
                    break
                time.sleep(1.0)
            settled_after = round(time.monotonic() - settle_until + args.settle_s, 1)
            usage = httpx.get(f"{base}/usage", headers={"authorization": f"Bearer {key}"}).json()
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=40)
        finally:
            for proc in (server, upstream):
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=10)
            log.close()
        output = log_path.read_text(errors="replace")
        with sqlite3.connect(db) as conn:
            ledger_requests, ledger_tokens = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens + completion_tokens), 0) "
                "FROM usage_ledger WHERE day = ?",
                (usage["day"],),
            ).fetchone()
            statuses = dict(
                conn.execute("SELECT status, COUNT(*) FROM usage_ledger GROUP BY status")
            )

    admitted = warm.admitted + tally.admitted
    mb = 1024 * 1024
    checks = {
        "no_spec_violations": not tally.violations and not warm.violations,
        "ledger_equals_admitted": ledger_requests == admitted,
        "counter_requests_equal_ledger": usage["used"]["requests"] == ledger_requests,
        "counter_tokens_equal_ledger": usage["used"]["tokens"] == ledger_tokens,
        "fds_back_to_start": fds1 <= fds0 + args.fd_slack,
        "rss_back_near_start": (rss1 - rss0) / mb <= args.rss_growth_mb,
        "no_key_in_bodies": tally.leaks == 0 and warm.leaks == 0,
        "no_key_in_server_output": key not in output and UPSTREAM_KEY not in output,
        "no_traceback_in_server_output": "Traceback" not in output,
    }
    report = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": tally.sent,
        "requests_per_s": round(tally.sent / elapsed, 1),
        "outcomes": dict(tally.outcomes),
        "violations": (tally.violations + warm.violations)[:10],
        "admitted_incl_warmup": admitted,
        "ledger_records": ledger_requests,
        "ledger_statuses": statuses,
        "ledger_tokens": ledger_tokens,
        "counters": usage["used"],
        "rss_mb": {
            "start": round(rss0 / mb, 1),
            "peak": round(rss_peak / mb, 1),
            "end": round(rss1 / mb, 1),
        },
        "fds": {
            "start": fds0,
            "peak": fds_peak,
            "after_2s": fds_2s,
            "end": fds1,
            "end_after_s": settled_after,
        },
        "checks": checks,
    }
    print(json.dumps(report, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
