"""The multi-host cluster test (issue 15): two hosts behind HAProxy, one Redis, one PostgreSQL.

Two network namespaces on this machine play two hosts, each running
`axione serve --workers 2`; HAProxy (Debian's) on 127.0.0.1 balances over
them with health checks on `/api/v1/readyz`; they share one Redis (counters)
and one PostgreSQL (keys, usage ledger, stored responses) that this script
starts for itself on the bridge between the namespaces, next to the fake
upstream (benchmarks/fake_upstream.py). See benchmarks/cluster_hosts.py for
the pieces, docs/cluster.md for what each scenario shows.

Scenarios (`--scenarios`, comma-separated, in this order by default):

- `exact`: N concurrent chat requests (1,000; 200 at once) through HAProxy
  against a key whose tier allows N/2 a day: exactly N/2 answer 200, the
  rest 429 `daily_request_limit_exceeded`, both hosts served; then the
  ledger rows in PostgreSQL == admissions, and the Redis counters == the
  ledger (requests and tokens).
- `revoke`: a key revoked through host 1's admin API; host 2 polled directly
  until it refuses it (401), within `key_cache_ttl_s` + 1 s.
- `postgres`: PostgreSQL restarted (`pg_ctl restart -m fast`) under steady
  load: no 500, and ledger rows == the 200s the clients counted.
- `hostkill`: every process of host 1 killed (SIGKILL) under a steady load
  of long streams: host 2 keeps serving, cut streams are counted, nothing
  is charged twice.
- `redis`: Redis killed (SIGKILL) for 10 s under steady load, fail-closed
  (the default): no 500, only 503 during the outage, recovery time, and the
  counters == the ledger afterwards.
- `redis-open`: the same with `[storage] on_counter_failure = "open"`: 200s
  throughout.

Run as root: `python benchmarks/cluster.py [--scenarios exact,revoke] [--requests N]
[--quick]`. Writes benchmarks/results/cluster-<timestamp>.{json,md}; exits 1
when an assertion failed (every figure is in the report either way), 2 when
the cluster could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import cluster_hosts as hosts  # noqa: E402

ALL_SCENARIOS = ("exact", "revoke", "postgres", "hostkill", "redis", "redis-open")
LIMITED_TIER = 7  # requests_per_day = the exact scenario's limit
ROOMY_TIER = 8  # limits no scenario reaches
ROOMY_REQUESTS = 100_000_000
CHAT_PATH = "/api/v1/chat/completions"

GATEWAY_TOML = """\
# Written by benchmarks/cluster.py: what every host of the cluster serves.
prefix = "/api/v1"
key_cache_ttl_s = {key_cache_ttl_s}

[server]
drain_s = {drain_s}
graceful_shutdown_s = 10
# Above HAProxy's idle server connections (pool-purge-delay 5 s, and more):
# with the default 5 s, a request HAProxy sends on a connection the gateway
# is just closing gets no answer (see docs/cluster.md).
keep_alive_s = {keep_alive_s}

[storage]
keys = "{pg}"
ledger = "{pg}"
responses = "{pg}"
counters = "{redis}"
on_counter_failure = "{on_counter_failure}"

[tiers.{limited_tier}]
requests_per_day = {limit}
tokens_per_day = 100000000

[tiers.{roomy_tier}]
requests_per_day = {roomy_requests}
tokens_per_day = 100000000000

[tier_policy]
auto_upgrade = false

[access_log]
enabled = {access_log}

[admin]
enabled = true
operator_key_sha256 = "{operator_sha}"

[providers.fake]
kind = "openai-compatible"
base_url = "{upstream}"
api_key = "sk-fake-upstream-cluster"
models = {{ "chat" = "gpt-4o-mini", "stream" = "gpt-4o-mini-c{chunks}-i{interval_ms}" }}
"""


# -- what a client saw -------------------------------------------------------------------
@dataclass(slots=True)
class Outcome:
    """One request as the client saw it (times: monotonic seconds)."""

    sent: float
    done: float = 0.0
    status: int | None = None
    code: str | None = None  # error.code; "balancer_503" for HAProxy's own page
    host: str | None = None  # x-axione-host (HAProxy) or the host polled directly
    request_id: str | None = None
    remaining: str | None = None  # x-ratelimit-remaining-requests
    error: str | None = None  # a client-side exception (connection, cut stream)
    complete: bool = False  # a 200 read to its end ([DONE] for a stream)
    tokens: int = 0
    chunks: int = 0


def _error_code(status: int, body: bytes, headers: httpx.Headers) -> str:
    try:
        code = json.loads(body)["error"]["code"]
        return str(code)
    except (ValueError, KeyError, TypeError):
        pass
    if status == 503 and "json" not in headers.get("content-type", ""):
        return "balancer_503"  # HAProxy's "No server is available" page
    return f"non_json_{status}"


def _chat_body(model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return body


async def chat(
    client: httpx.AsyncClient, base: str, key: str, model: str, *, stream: bool = False
) -> Outcome:
    """One chat request; never raises (a failure is in the outcome)."""
    out = Outcome(sent=time.monotonic())
    headers = {"authorization": f"Bearer {key}"}
    body = _chat_body(model, stream)
    try:
        if not stream:
            answer = await client.post(base + CHAT_PATH, json=body, headers=headers)
            _head(out, answer)
            if answer.status_code == 200:
                out.tokens = int(answer.json().get("usage", {}).get("total_tokens", 0))
                out.complete = True
            else:
                out.code = _error_code(answer.status_code, answer.content, answer.headers)
        else:
            async with client.stream("POST", base + CHAT_PATH, json=body, headers=headers) as ans:
                _head(out, ans)
                if ans.status_code != 200:
                    out.code = _error_code(ans.status_code, await ans.aread(), ans.headers)
                else:
                    async for line in ans.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            out.complete = True
                        elif line.startswith('data: {"error"'):
                            out.code = "stream_error_event"
                        else:
                            out.chunks += 1
    except httpx.HTTPError as exc:
        out.error = type(exc).__name__
    out.done = time.monotonic()
    return out


def _head(out: Outcome, answer: httpx.Response) -> None:
    out.status = answer.status_code
    out.host = answer.headers.get("x-axione-host", out.host)
    out.request_id = answer.headers.get("x-request-id")
    out.remaining = answer.headers.get("x-ratelimit-remaining-requests")


def _client(connections: int, *, keepalive: bool = True, timeout: float = 60) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections if keepalive else 0
    )
    return httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)


async def burst(base: str, key: str, model: str, n: int, concurrency: int) -> list[Outcome]:
    """`n` requests, at most `concurrency` at once (one connection each)."""
    gate = asyncio.Semaphore(concurrency)
    async with _client(concurrency) as client:

        async def one() -> Outcome:
            async with gate:
                return await chat(client, base, key, model)

        return list(await asyncio.gather(*(one() for _ in range(n))))


async def steady(
    base: str,
    key: str,
    model: str,
    clients: int,
    stop: asyncio.Event,
    *,
    stream: bool = False,
    host: str | None = None,
    pause_s: float = 0.0,
) -> list[Outcome]:
    """`clients` loops, each one request after the other, until `stop` is set.

    After an answer other than 200 a loop waits 20 ms (a client backing off
    a little), so an outage is not a busy loop of refusals.
    """
    outcomes: list[Outcome] = []
    async with _client(clients) as client:

        async def loop() -> None:
            while not stop.is_set():
                out = await chat(client, base, key, model, stream=stream)
                if host is not None:
                    out.host = host
                outcomes.append(out)
                if out.status != 200 or out.error:
                    await asyncio.sleep(0.02)
                elif pause_s:
                    await asyncio.sleep(pause_s)

        await asyncio.gather(*(loop() for _ in range(clients)))
    return outcomes


# -- summaries -------------------------------------------------------------------------------
def _label(o: Outcome) -> str:
    if o.error and o.status is None:
        return f"error:{o.error}"
    if o.status == 200:
        if o.complete:
            return "200"
        return f"200-cut:{o.error or 'incomplete'}"
    return f"{o.status}:{o.code}"


def counts(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """Answers by status and error code (`200`, `429:daily_request_limit_exceeded`, ...)."""
    return dict(sorted(Counter(_label(o) for o in outcomes).items()))


def by_host(outcomes: Iterable[Outcome]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter[str]] = {}
    for o in outcomes:
        table.setdefault(o.host or "none", Counter())[_label(o)] += 1
    return {h: dict(sorted(c.items())) for h, c in sorted(table.items())}


def _phase(outcomes: Iterable[Outcome], start: float, end: float) -> list[Outcome]:
    return [o for o in outcomes if start <= o.sent < end]


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


def _server_errors(outcomes: Iterable[Outcome]) -> int:
    return sum(1 for o in outcomes if o.status is not None and o.status >= 500 and o.status != 503)


def _client_errors(outcomes: Iterable[Outcome]) -> int:
    return sum(1 for o in outcomes if o.error is not None and o.status is None)


def _error_times(outcomes: Iterable[Outcome], t0: float) -> list[dict[str, Any]]:
    """The client-side failures: when each was sent and ended, and what it was."""
    return [
        {"sent_s": _rel(o.sent, t0), "done_s": _rel(o.done, t0), "error": o.error}
        for o in outcomes
        if o.error is not None and o.status is None
    ][:20]


class Checks:
    """A scenario's assertions: each recorded with its figures, none raising."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def check(self, name: str, ok: bool, detail: Any = None) -> bool:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail})
        return bool(ok)

    @property
    def ok(self) -> bool:
        return all(i["ok"] for i in self.items)


# -- the cluster -----------------------------------------------------------------------------
@dataclass
class Options:
    """How the cluster is built and loaded."""

    requests: int = 1000
    limit: int = 500
    concurrency: int = 200
    key_cache_ttl_s: float = 5.0
    revoke_bound_s: float | None = None  # default: key_cache_ttl_s + 1
    workers: int = 2
    inter_ms: int = 1000  # HAProxy's check interval (fall 2, rise 2)
    drain_s: float = 3.0
    keep_alive_s: int = 65  # the gateways' [server] keep_alive_s
    load_clients: int = 32
    stream_clients: int = 24
    stream_chunks: int = 100
    stream_interval_ms: int = 20
    redis_outage_s: float = 10.0
    before_s: float = 3.0
    after_s: float = 6.0
    recovery_bound_s: float = 1.0
    ledger_wait_s: float = 60.0
    access_log: bool = False
    persistent_redis: bool = True

    @property
    def revoke_bound(self) -> float:
        return (
            self.revoke_bound_s if self.revoke_bound_s is not None else self.key_cache_ttl_s + 1.0
        )


@dataclass
class Key:
    name: str
    id: str
    secret: str
    tier: int


class Cluster:
    """Everything of one run: network, Redis, PostgreSQL, upstream, gateways, HAProxy."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.run: hosts.RunDir | None = None
        self.network: hosts.Network | None = None
        self.redis: hosts.Redis | None = None
        self.postgres: hosts.Postgres | None = None
        self.upstream: hosts.FakeUpstream | None = None
        self.haproxy: hosts.HAProxy | None = None
        self.gateways: list[hosts.Gateway] = []
        self.keys: dict[str, Key] = {}
        self.mode = "closed"
        self.operator_key = "op-cluster-" + secrets.token_urlsafe(24)
        self.leftovers: list[str] = []
        self.timings: dict[str, float] = {}

    # -- building it ------------------------------------------------------------------------
    def start(self, keys: dict[str, int]) -> None:
        """Build the cluster; `keys`: name -> tier, made in PostgreSQL before the gateways start."""
        began = time.monotonic()
        self.leftovers = hosts.clean_leftovers()
        self.run = run = hosts.RunDir()
        self.network = net = hosts.Network(hosts=2)
        net.up()
        self.postgres = hosts.Postgres(run, net.gateway_ip, net.subnet)
        self.postgres.init()
        self.postgres.start()
        self.redis = hosts.Redis(run, net.gateway_ip, persistent=self.options.persistent_redis)
        self.redis.start()
        self.upstream = hosts.FakeUpstream(run, net.gateway_ip)
        self.upstream.start()
        self.timings["services_s"] = round(time.monotonic() - began, 2)
        config = self.write_config("closed")
        self.keys = asyncio.run(self._create_keys(config, keys))
        self.gateways = [
            hosts.Gateway(run, net, host, config, workers=self.options.workers) for host in (1, 2)
        ]
        gateways_began = time.monotonic()
        for gw in self.gateways:
            gw.start()
        for gw in self.gateways:
            gw.wait_ready()
        self.timings["gateways_s"] = round(time.monotonic() - gateways_began, 2)
        self.haproxy = hosts.HAProxy(
            run, {gw.name: gw.address for gw in self.gateways}, inter_ms=self.options.inter_ms
        )
        self.haproxy.start()
        self.wait_all_up()
        self.timings["setup_s"] = round(time.monotonic() - began, 2)

    def write_config(self, mode: str) -> Path:
        assert self.run and self.postgres and self.redis and self.upstream
        o = self.options
        pg = self.postgres.uri() + "?pool_max_size=6"
        text = GATEWAY_TOML.format(
            key_cache_ttl_s=o.key_cache_ttl_s,
            drain_s=o.drain_s,
            keep_alive_s=o.keep_alive_s,
            pg=pg,
            redis=self.redis.uri,
            on_counter_failure=mode,
            limited_tier=LIMITED_TIER,
            limit=o.limit,
            roomy_tier=ROOMY_TIER,
            roomy_requests=ROOMY_REQUESTS,
            access_log="true" if o.access_log else "false",
            operator_sha=hashlib.sha256(self.operator_key.encode()).hexdigest(),
            upstream=self.upstream.base_url,
            chunks=o.stream_chunks,
            interval_ms=o.stream_interval_ms,
        )
        path = self.run.path / f"axione-{mode}.toml"
        path.write_text(text)
        self.mode = mode
        return path

    async def _create_keys(self, config_path: Path, wanted: dict[str, int]) -> dict[str, Key]:
        # The same service layer as `axione keys create` and the admin API.
        from axione_asgi.admin.service import AdminService
        from axione_asgi.config import AxioneConfig
        from axione_asgi.stores import open_key_store

        config = AxioneConfig.from_toml(config_path)
        store = open_key_store(config.storage.keys, config.keys)
        service = AdminService(config, store)
        made: dict[str, Key] = {}
        try:
            for name, tier in wanted.items():
                record, secret = await service.create_key(f"cluster-{name}", tier)
                made[name] = Key(name, record.id, secret, tier)
        finally:
            await service.aclose()
            await store.close()
        return made

    def wait_all_up(self, timeout: float = 30) -> None:
        assert self.haproxy
        self.haproxy.wait_states({gw.name: "UP" for gw in self.gateways}, timeout)

    def ensure(self, mode: str) -> None:
        """Every host up, serving `[storage] on_counter_failure = mode` (restarted if need be)."""
        assert self.run
        if mode != self.mode:
            config = self.write_config(mode)
            for gw in self.gateways:
                gw.stop()
                gw.config = config
            for gw in self.gateways:
                gw.start()
        else:
            for gw in self.gateways:
                if not gw.proc or not gw.proc.alive():
                    gw.stop()
                    gw.start()
        for gw in self.gateways:
            gw.wait_ready()
        self.wait_all_up()

    # -- looking inside -------------------------------------------------------------------
    def ledger(self, key_id: str) -> dict[str, Any]:
        assert self.postgres
        rows, tokens = self.postgres.query(
            "SELECT count(*), coalesce(sum(prompt_tokens + completion_tokens), 0) "
            "FROM usage_ledger WHERE key_id = %s",
            (key_id,),
        )[0]
        statuses = self.postgres.query(
            "SELECT status, count(*) FROM usage_ledger WHERE key_id = %s GROUP BY status",
            (key_id,),
        )
        return {
            "rows": int(rows),
            "tokens": int(tokens),
            "by_status": {str(s): int(n) for s, n in sorted(statuses)},
        }

    def ledger_ids(self, key_id: str) -> Counter[str]:
        assert self.postgres
        rows = self.postgres.query(
            "SELECT request_id FROM usage_ledger WHERE key_id = %s", (key_id,)
        )
        return Counter(str(r[0]) for r in rows)

    def wait_ledger(self, key_id: str, expected: int | None = None) -> dict[str, Any]:
        """The key's ledger once the batching writers have flushed (bounded).

        With `expected`, until the rows reach it; else until they stop changing
        for 2 s. `waited_s` says how long it took.
        """
        began = time.monotonic()
        deadline = began + self.options.ledger_wait_s
        last: dict[str, Any] | None = None
        stable_since = began
        while True:
            now = time.monotonic()
            try:
                seen = self.ledger(key_id)
            except Exception as exc:  # the database restarting: try again
                seen = {"rows": -1, "tokens": -1, "by_status": {}, "error": type(exc).__name__}
            if last is None or seen["rows"] != last["rows"]:
                stable_since = now
            last = seen
            if expected is not None and seen["rows"] == expected:
                break
            if expected is None and seen["rows"] >= 0 and now - stable_since >= 2.0:
                break
            if now >= deadline:
                break
            time.sleep(0.2)
        last["waited_s"] = round(time.monotonic() - began, 2)
        return last

    def counters(self, key_id: str) -> dict[str, Any]:
        """The key's Redis counters: `axione:{<key_id>:<day>}:req` and `:tok`, any prefix."""
        assert self.redis
        client = self.redis.client()
        try:
            found: dict[str, int] = {}
            for raw in client.scan_iter(match=f"*axione:{{{key_id}:*", count=1000):
                name = raw.decode()
                value = client.get(raw)
                found[name] = int(value or 0)
        finally:
            client.close()
        req = sum(v for k, v in found.items() if k.endswith(":req"))
        tok = sum(v for k, v in found.items() if k.endswith(":tok"))
        return {"requests": req, "tokens": tok, "keys": sorted(found)}

    def reconcile(self, key_id: str, wait_s: float = 10.0) -> dict[str, Any]:
        """Counters against the flushed ledger, waited for up to `wait_s` to agree."""
        ledger = self.wait_ledger(key_id)
        began = time.monotonic()
        while True:
            counters = self.counters(key_id)
            agree = (
                counters["requests"] == ledger["rows"] and counters["tokens"] == ledger["tokens"]
            )
            if agree or time.monotonic() - began >= wait_s:
                break
            time.sleep(0.25)
            ledger = self.ledger(key_id) | {"waited_s": ledger["waited_s"]}
        return {
            "ledger": ledger,
            "counters": {"requests": counters["requests"], "tokens": counters["tokens"]},
            "redis_keys": counters["keys"],
            "agree": agree,
            "difference": {
                "requests": counters["requests"] - ledger["rows"],
                "tokens": counters["tokens"] - ledger["tokens"],
            },
            "waited_for_agreement_s": round(time.monotonic() - began, 2),
        }

    def log_marks(self) -> dict[str, int]:
        assert self.run
        return {p.name: p.stat().st_size for p in self.run.path.glob("*.log")}

    def log_findings(self, marks: dict[str, int]) -> dict[str, Any]:
        """What the gateways logged since `marks`: tracebacks, errors, outage lines."""
        assert self.run
        found: dict[str, Any] = {}
        for path in sorted(self.run.path.glob("gateway-*.log")):
            with open(path, "rb") as f:
                f.seek(marks.get(path.name, 0))
                text = f.read().decode(errors="replace")
            lines = text.splitlines()
            interesting = [
                ln
                for ln in lines
                if re.search(r"Traceback|ERROR|Error:|unreachable|reachable again|Not ready", ln)
            ]
            found[path.stem] = {
                "tracebacks": sum(1 for ln in lines if ln.startswith("Traceback")),
                "internal_error": text.count("internal_error"),
                "lines": interesting[:12],
            }
        proxy_log = self.run.path / "haproxy.log"
        if proxy_log.exists():
            with open(proxy_log, "rb") as f:
                f.seek(marks.get(proxy_log.name, 0))
                lines = [
                    ln
                    for ln in f.read().decode(errors="replace").splitlines()
                    if ln and not ln.startswith(("---", "[NOTICE]"))
                ]
            # Sessions that ended abnormally (httplog), health-check changes.
            found["haproxy"] = {"lines_count": len(lines), "lines": lines[:12]}
        return found

    def monitor_haproxy(
        self, stop: threading.Event, t0: float, changes: list[dict[str, Any]]
    ) -> None:
        """HAProxy's view of the servers, every 100 ms, appended to `changes` when it changes."""
        assert self.haproxy
        last: dict[str, str] = {}
        while not stop.is_set():
            with contextlib.suppress(OSError):
                states = self.haproxy.states()
                if states != last:
                    changes.append({"t": round(time.monotonic() - t0, 3), **states})
                    last = states
            stop.wait(0.1)

    # -- tearing it down ------------------------------------------------------------------
    def teardown(self, keep: bool = False) -> None:
        """Stop everything, in order, whatever state it is in; no step blocks the next."""
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.haproxy:
            steps.append(("haproxy", self.haproxy.stop))
        steps += [(f"gateway {gw.name}", gw.stop) for gw in self.gateways]
        if self.upstream:
            steps.append(("upstream", self.upstream.stop))
        if self.redis:
            steps.append(("redis", self.redis.stop))
        if self.postgres:
            steps.append(("postgres", self.postgres.stop))
        if self.network:
            steps.append(("network", self.network.down))
        if self.run and not keep:
            steps.append(("folder", self.run.remove))
        # A second Ctrl-C (or SIGTERM) must not leave half of it running.
        main = threading.current_thread() is threading.main_thread()
        quiet = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in quiet} if main else {}
        try:
            for name, step in steps:
                try:
                    step()
                except Exception as exc:
                    print(f"cluster: teardown of {name} failed: {exc}", file=sys.stderr)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# -- the scenarios -----------------------------------------------------------------------------
MODEL_CHAT = "fake/chat"
MODEL_STREAM = "fake/stream"


def scenario_exact(cluster: Cluster) -> dict[str, Any]:
    """N concurrent requests against a limit of N/2: exactly the limit admitted."""
    o, key = cluster.options, cluster.keys["exact"]
    assert cluster.haproxy
    cluster.ensure(cluster.mode)
    marks_before = cluster.log_marks()
    began = time.monotonic()
    outcomes = asyncio.run(
        burst(cluster.haproxy.url, key.secret, MODEL_CHAT, o.requests, o.concurrency)
    )
    elapsed = time.monotonic() - began
    tally = counts(outcomes)
    admitted = [x for x in outcomes if x.status == 200]
    ledger = cluster.wait_ledger(key.id, expected=len(admitted))
    ids = cluster.ledger_ids(key.id)
    recon = cluster.reconcile(key.id)
    c = Checks()
    refused_code = "429:daily_request_limit_exceeded"
    c.check("exactly the limit answered 200", len(admitted) == o.limit, len(admitted))
    c.check(
        "the rest answered 429 daily_request_limit_exceeded",
        tally.get(refused_code, 0) == o.requests - o.limit,
        tally.get(refused_code, 0),
    )
    c.check("no other answer", set(tally) <= {"200", refused_code}, tally)
    served = by_host(outcomes)
    c.check("both hosts served", all(h in served for h in ("h1", "h2")), sorted(served))
    c.check("ledger rows == admissions", ledger["rows"] == len(admitted), ledger["rows"])
    c.check(
        "each admitted request_id once in the ledger",
        all(ids.get(x.request_id or "") == 1 for x in admitted)
        and max(ids.values(), default=1) == 1,
        {"distinct": len(ids), "rows": sum(ids.values())},
    )
    c.check("counters == ledger (requests, tokens)", recon["agree"], recon["difference"])
    return {
        "requests": o.requests,
        "limit": o.limit,
        "concurrency": o.concurrency,
        "elapsed_s": round(elapsed, 2),
        "answers": tally,
        "by_host": served,
        "client_tokens": sum(x.tokens for x in admitted),
        "client_errors": _error_times(outcomes, began),
        "reconcile": recon,
        "logs": cluster.log_findings(marks_before),
        "checks": c.items,
    }


def scenario_revoke(cluster: Cluster) -> dict[str, Any]:
    """Revoke through host 1's admin API; poll host 2 directly until it answers 401."""
    o, key = cluster.options, cluster.keys["revoke"]
    cluster.ensure(cluster.mode)
    return asyncio.run(_revoke(cluster, key, o.revoke_bound))


async def _revoke(cluster: Cluster, key: Key, bound: float) -> dict[str, Any]:
    h1, h2 = cluster.gateways
    auth = {"authorization": f"Bearer {key.secret}"}
    # Fresh connections, so each lands on either worker of a host.
    async with _client(16, keepalive=False, timeout=10) as client:
        warm = await asyncio.gather(
            *(client.get(f"{gw.url}/api/v1/models", headers=auth) for gw in (h1, h2) * 12)
        )
        warm_ok = sum(1 for r in warm if r.status_code == 200)
        revoke_sent = time.monotonic()
        answer = await client.post(
            f"{h1.url}/api/v1/admin/keys/{key.id}/revoke",
            headers={"authorization": f"Bearer {cluster.operator_key}"},
        )
        revoked = time.monotonic()
        polls: dict[str, list[Outcome]] = {"h1": [], "h2": []}
        streak = {"h1": 0, "h2": 0}
        deadline = revoked + bound + 3.0

        async def poll(gw: hosts.Gateway) -> None:
            out = Outcome(sent=time.monotonic(), host=gw.name)
            try:
                r = await client.get(f"{gw.url}/api/v1/models", headers=auth)
                out.status = r.status_code
                if r.status_code != 200:
                    out.code = _error_code(r.status_code, r.content, r.headers)
            except httpx.HTTPError as exc:
                out.error = type(exc).__name__
            out.done = time.monotonic()
            polls[gw.name].append(out)
            streak[gw.name] = streak[gw.name] + 1 if out.status == 401 else 0

        while time.monotonic() < deadline and min(streak.values()) < 20:
            await asyncio.gather(poll(h1), poll(h2))
            await asyncio.sleep(0.02)

    def delays(name: str) -> dict[str, Any]:
        seen = polls[name]
        refused = [p for p in seen if p.status == 401]
        served = [p for p in seen if p.status == 200]
        first = min((p.done for p in refused), default=None)
        last_ok = max((p.done for p in served), default=None)
        # Every worker refuses from the later of the two moments on.
        all_refuse = None if first is None else max(first, last_ok or first)
        return {
            "polls": len(seen),
            "answers": counts(seen),
            "first_401_s": _rel(first, revoked),
            "last_200_s": _rel(last_ok, revoked),
            "refused_by_every_worker_s": _rel(all_refuse, revoked),
            "ended_with_401_streak": streak[name],
        }

    result = {
        "key_cache_ttl_s": cluster.options.key_cache_ttl_s,
        "bound_s": bound,
        "warm_200": warm_ok,
        "admin_revoke_status": answer.status_code,
        "admin_revoke_ms": round((revoked - revoke_sent) * 1000, 1),
        "h1": delays("h1"),
        "h2": delays("h2"),
    }
    codes = {p.code for p in polls["h2"] if p.status == 401}
    c = Checks()
    c.check("warm-up served on both hosts", warm_ok == len(warm), warm_ok)
    c.check("the admin API revoked the key", answer.status_code == 200, answer.status_code)
    delay = result["h2"]["refused_by_every_worker_s"]
    c.check(
        f"host 2 refuses within {bound} s (key_cache_ttl_s + 1)",
        delay is not None and delay <= bound and result["h2"]["ended_with_401_streak"] >= 20,
        delay,
    )
    c.check("the refusal is 401 invalid_api_key", codes == {"invalid_api_key"}, sorted(codes))
    result["checks"] = c.items
    return result


async def in_thread(fn: Callable[[], Any]) -> tuple[float, Any, float]:
    """`fn()` in a daemon thread: the moments it began and ended (taken there, not
    when the busy event loop gets round to it), and its result.

    A daemon thread, not the loop's executor: an interrupted run must not wait
    at exit for a fault still under way.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[tuple[float, Any, float]] = loop.create_future()

    def settle(outcome: tuple[float, Any, float] | BaseException) -> None:
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def timed() -> None:
        began = time.monotonic()
        try:
            outcome: tuple[float, Any, float] | BaseException = (began, fn(), time.monotonic())
        except Exception as exc:
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=timed, name="cluster-fault", daemon=True).start()
    return await future


async def _under_load(
    cluster: Cluster,
    key: Key,
    fault: Callable[[Callable[..., None]], Awaitable[None]],
    *,
    stream: bool = False,
    clients: int | None = None,
    probe_hosts: bool = False,
) -> tuple[list[Outcome], list[Outcome], dict[str, float], list[dict[str, Any]]]:
    """Steady load through HAProxy while `fault(mark)` runs; `mark(name)` stamps a moment.

    With `probe_hosts`, each host is also polled directly every 25 ms (a chat
    request), which shows the gateways' own behaviour behind HAProxy's.
    """
    assert cluster.haproxy
    t0 = time.monotonic()
    marks: dict[str, float] = {"load_start": t0}
    stop = asyncio.Event()
    watch_stop = threading.Event()
    changes: list[dict[str, Any]] = []
    watcher = threading.Thread(
        target=cluster.monitor_haproxy, args=(watch_stop, t0, changes), daemon=True
    )
    watcher.start()
    n = clients or (cluster.options.stream_clients if stream else cluster.options.load_clients)
    model = MODEL_STREAM if stream else MODEL_CHAT
    load = asyncio.create_task(
        steady(cluster.haproxy.url, key.secret, model, n, stop, stream=stream)
    )
    probes = [
        asyncio.create_task(
            steady(gw.url, key.secret, MODEL_CHAT, 1, stop, host=f"direct-{gw.name}", pause_s=0.025)
        )
        for gw in (cluster.gateways if probe_hosts else [])
    ]

    def mark(name: str, moment: float | None = None) -> None:
        marks[name] = time.monotonic() if moment is None else moment

    try:
        await fault(mark)
    finally:
        mark("load_stop")
        stop.set()
        watch_stop.set()
    outcomes = await load
    probed = [x for p in probes for x in await p]
    mark("load_drained")
    watcher.join(5)
    return outcomes, probed, marks, changes


def scenario_postgres(cluster: Cluster) -> dict[str, Any]:
    """PostgreSQL restarted under load: no 500, no ledger record lost."""
    o, key = cluster.options, cluster.keys["postgres"]
    assert cluster.postgres
    cluster.ensure(cluster.mode)
    marks_before = cluster.log_marks()

    async def fault(mark: Callable[..., None]) -> None:
        await asyncio.sleep(o.before_s)
        began, _, ended = await in_thread(cluster.postgres.restart)  # type: ignore[union-attr]
        mark("restart_begin", began)
        mark("restart_done", ended)
        await asyncio.sleep(o.after_s)

    outcomes, _, marks, changes = asyncio.run(_under_load(cluster, key, fault))
    ok200 = [x for x in outcomes if x.status == 200]
    ledger = cluster.wait_ledger(key.id, expected=len(ok200))
    ids = cluster.ledger_ids(key.id)
    t0 = marks["load_start"]
    result = {
        "clients": o.load_clients,
        "timeline_s": {k: _rel(v, t0) for k, v in marks.items()},
        "restart_s": round(marks["restart_done"] - marks["restart_begin"], 2),
        "answers": counts(outcomes),
        "before": counts(_phase(outcomes, t0, marks["restart_begin"])),
        "during": counts(_phase(outcomes, marks["restart_begin"], marks["restart_done"])),
        "after": counts(_phase(outcomes, marks["restart_done"], float("inf"))),
        "by_host": by_host(outcomes),
        "client_200": len(ok200),
        "ledger": ledger,
        "haproxy": changes,
        "client_errors": _error_times(outcomes, t0),
        "gateway_logs": cluster.log_findings(marks_before),
    }
    missing = [x.request_id for x in ok200 if x.request_id not in ids]
    c = Checks()
    c.check("no 500 (no answer >= 500 but 503)", _server_errors(outcomes) == 0, result["answers"])
    c.check("no connection error through HAProxy", _client_errors(outcomes) == 0, result["answers"])
    c.check(
        "ledger rows == 200 answers", ledger["rows"] == len(ok200), [ledger["rows"], len(ok200)]
    )
    c.check("every 200's request_id in the ledger", not missing, missing[:5])
    c.check("no request_id twice", max(ids.values(), default=1) == 1, len(ids))
    result["checks"] = c.items
    return result


def scenario_hostkill(cluster: Cluster) -> dict[str, Any]:
    """Host 1 killed mid-stream: host 2 keeps serving, nothing charged twice."""
    o, key = cluster.options, cluster.keys["hostkill"]
    assert cluster.haproxy
    cluster.ensure(cluster.mode)
    h1 = cluster.gateways[0]
    killed: list[int] = []
    marks_before = cluster.log_marks()

    async def fault(mark: Callable[..., None]) -> None:
        await asyncio.sleep(o.before_s)
        began, pids, ended = await in_thread(h1.kill)
        killed.extend(pids)
        mark("kill", began)
        mark("killed", ended)
        assert cluster.haproxy
        proxy = cluster.haproxy
        _, down, _ = await in_thread(lambda: proxy.wait_states({"h1": "DOWN"}, 30))
        marks_down["h1_down"] = down
        await asyncio.sleep(max(0.0, o.after_s + 2 - (time.monotonic() - down)))

    marks_down: dict[str, float] = {}
    outcomes, _, marks, changes = asyncio.run(_under_load(cluster, key, fault, stream=True))
    marks.update(marks_down)
    t0, t_kill = marks["load_start"], marks["kill"]
    before = [x for x in outcomes if x.sent < t_kill]
    after = [x for x in outcomes if x.sent >= marks["killed"]]
    cut = [x for x in outcomes if x.status == 200 and not x.complete]
    complete = [x for x in outcomes if x.status == 200 and x.complete]
    in_flight_h1 = [x for x in before if x.host == "h1" and x.done >= t_kill]
    ledger = cluster.wait_ledger(key.id)
    ids = cluster.ledger_ids(key.id)
    seen_ids = {x.request_id for x in outcomes if x.request_id}
    recon = cluster.counters(key.id)
    result = {
        "clients": o.stream_clients,
        "stream": f"{o.stream_chunks} chunks, {o.stream_interval_ms} ms apart",
        "killed_pids": len(killed),
        "timeline_s": {k: _rel(v, t0) for k, v in sorted(marks.items(), key=lambda kv: kv[1])},
        "haproxy_marked_down_after_s": _rel(marks.get("h1_down"), t_kill),
        "answers": counts(outcomes),
        "before_kill": by_host(before),
        "after_kill": by_host(after),
        "in_flight_on_h1_at_kill": len(in_flight_h1),
        "complete": len(complete),
        "cut": len(cut),
        "cut_errors": dict(Counter(x.error or "incomplete" for x in cut)),
        "ledger": ledger,
        "cut_streams_in_ledger": sum(1 for x in cut if x.request_id in ids),
        # Streams cut on host 1 were counted in Redis at admission; their
        # ledger rows died with the process (its writer's unflushed batch).
        "counters": {"requests": recon["requests"], "tokens": recon["tokens"]},
        "counters_minus_ledger": {
            "requests": recon["requests"] - ledger["rows"],
            "tokens": recon["tokens"] - ledger["tokens"],
        },
        "haproxy": changes,
        "client_errors": _error_times(outcomes, t0),
        "gateway_logs": cluster.log_findings(marks_before),
    }
    after_ok = [x for x in after if x.status == 200 and x.complete]
    c = Checks()
    c.check("no 500", _server_errors(outcomes) == 0, result["answers"])
    c.check(
        "every stream started after the kill completed",
        len(after_ok) == len(after) and after_ok,
        {"started": len(after), "complete": len(after_ok)},
    )
    c.check(
        "host 2 served after the kill",
        any(x.host == "h2" for x in after_ok),
        sorted({x.host or "none" for x in after_ok}),
    )
    c.check(
        "ledger rows <= complete + cut streams",
        ledger["rows"] <= len(complete) + len(cut),
        [ledger["rows"], len(complete), len(cut)],
    )
    c.check("no request_id twice in the ledger", max(ids.values(), default=1) == 1, len(ids))
    c.check(
        "every ledger request_id is one a client saw",
        set(ids) <= seen_ids,
        sorted(set(ids) - seen_ids)[:5],
    )
    result["checks"] = c.items
    return result


def scenario_redis(cluster: Cluster, mode: str) -> dict[str, Any]:
    """Redis killed for `redis_outage_s` under load: the configured answers, recovery, reconcile."""
    o = cluster.options
    key = cluster.keys["redis-open" if mode == "open" else "redis"]
    assert cluster.redis
    cluster.ensure(mode)
    marks_before = cluster.log_marks()

    async def fault(mark: Callable[..., None]) -> None:
        await asyncio.sleep(o.before_s)
        began, _, ended = await in_thread(cluster.redis.kill)  # type: ignore[union-attr]
        mark("redis_kill", began)
        mark("redis_killed", ended)
        await asyncio.sleep(o.redis_outage_s)
        mark("redis_start")
        _, up, _ = await in_thread(cluster.redis.start)  # type: ignore[union-attr]
        marks_up["redis_answers"] = up
        await asyncio.sleep(o.after_s)

    marks_up: dict[str, float] = {}
    outcomes, probed, marks, changes = asyncio.run(
        _under_load(cluster, key, fault, probe_hosts=True)
    )
    marks.update(marks_up)
    t0, t_kill, t_up = marks["load_start"], marks["redis_killed"], marks["redis_answers"]

    t_start = marks["redis_start"]

    def admitted(x: Outcome) -> bool:
        if x.status != 200:
            return False
        # Open mode: an admission Redis counted shows in the remaining requests.
        return mode == "closed" or x.remaining not in (None, str(ROOMY_REQUESTS))

    def fallback(x: Outcome) -> bool:
        """The gateway's answer for a counters failure: 503, or (open) an uncounted 200."""
        if mode == "closed":
            return x.status == 503 and x.code == "quota_unavailable"
        return x.status == 200 and not admitted(x)

    def recovery(seen: list[Outcome]) -> dict[str, Any]:
        first = min((x.done for x in seen if x.sent >= t_kill and admitted(x)), default=None)
        late = [x for x in seen if x.sent >= t_up and fallback(x)]
        return {
            "first_counted_admission_s": _rel(first, t_up),
            "fallbacks_after_redis_answered": len(late),
            "last_fallback_sent_s": _rel(max((x.sent for x in late), default=None), t_up),
        }

    # During: from the kill to the restart; the restart's own moments (Redis
    # may take a request before the harness's PING sees it) are apart.
    during = _phase(outcomes, t_kill, t_start)
    during_direct = _phase(probed, t_kill, t_start)
    recon = cluster.reconcile(key.id)
    direct = {
        gw.name: recovery([x for x in probed if x.host == f"direct-{gw.name}"])
        for gw in cluster.gateways
    }
    result = {
        "on_counter_failure": mode,
        "redis_persistence": "appendonly yes, appendfsync always" if o.persistent_redis else "none",
        "clients": o.load_clients,
        "outage_s": o.redis_outage_s,
        "timeline_s": {k: _rel(v, t0) for k, v in sorted(marks.items(), key=lambda kv: kv[1])},
        "redis_restart_to_answer_s": round(t_up - t_start, 3),
        "answers": counts(outcomes),
        "before": counts(_phase(outcomes, t0, marks["redis_kill"])),
        "killing": counts(_phase(outcomes, marks["redis_kill"], t_kill)),
        "during": counts(during),
        "restarting": counts(_phase(outcomes, t_start, t_up)),
        "after": counts(_phase(outcomes, t_up, float("inf"))),
        "direct_to_hosts": {
            "before": by_host(_phase(probed, t0, marks["redis_kill"])),
            "during": by_host(during_direct),
            "restarting": by_host(_phase(probed, t_start, t_up)),
            "after": by_host(_phase(probed, t_up, float("inf"))),
        },
        "recovery_s": {
            "via_haproxy": recovery(outcomes),
            **{f"direct_{name}": r for name, r in direct.items()},
        },
        "reconcile": recon,
        "haproxy": changes,
        "client_errors": _error_times(outcomes, t0),
        "gateway_logs": cluster.log_findings(marks_before),
    }
    everything = outcomes + probed
    c = Checks()
    c.check("no 500", _server_errors(everything) == 0, counts(everything))
    c.check("no connection error through HAProxy", _client_errors(outcomes) == 0, result["answers"])
    if mode == "closed":
        allowed = {"503:quota_unavailable", "503:balancer_503"}
        # The client's clock of a send runs a little ahead of the wire under
        # load (a request stamped just after the kill may have reached Redis
        # before it died), and one answered once Redis was starting again may
        # have been admitted: both were counted (see the reconciliation).
        ended_during = [x for x in during if x.sent >= t_kill + 0.1 and x.done < t_start]
        c.check(
            "answered during the outage: only 503 (quota_unavailable, or HAProxy's)",
            set(counts(ended_during)) <= allowed and bool(ended_during),
            {"ended_during": counts(ended_during), "sent_during": counts(during)},
        )
        c.check(
            "the gateways answered 503 quota_unavailable during the outage",
            set(counts(during_direct)) == {"503:quota_unavailable"},
            counts(during_direct),
        )
    else:
        c.check(
            "during the outage only 200",
            set(counts(during)) == {"200"} and set(counts(during_direct)) == {"200"},
            {"via_haproxy": counts(during), "direct": counts(during_direct)},
        )
    bound = o.recovery_bound_s
    firsts = {n: r["first_counted_admission_s"] for n, r in result["recovery_s"].items()}
    c.check(
        f"first counted admission within {bound} s of Redis answering (each host, directly)",
        all(v is not None and v <= bound for n, v in firsts.items() if n.startswith("direct_")),
        firsts,
    )
    lasts = {n: r["last_fallback_sent_s"] for n, r in result["recovery_s"].items()}
    c.check(
        f"no {'503 quota_unavailable' if mode == 'closed' else 'uncounted admission'} "
        f"for a request sent over {bound} s after Redis answered",
        all(v is None or v <= bound for v in lasts.values()),
        lasts,
    )
    c.check(
        "200s through HAProxy again after the outage", "200" in result["after"], result["after"]
    )
    # A script Redis ran (and, fsynced, kept) as it was killed, whose answer
    # was lost, is settled from Redis' record of the gateway's calls: an
    # admission counted but refused is undone, carried settlements arrive
    # once. So the two agree exactly.
    c.check(
        "counters == ledger afterwards (requests, tokens), exactly",
        recon["agree"],
        {
            "difference": recon["difference"],
            "ledger": recon["ledger"],
            "counters": recon["counters"],
        },
    )
    result["checks"] = c.items
    return result


SCENARIOS: dict[str, Callable[[Cluster], dict[str, Any]]] = {
    "exact": scenario_exact,
    "revoke": scenario_revoke,
    "postgres": scenario_postgres,
    "hostkill": scenario_hostkill,
    "redis": lambda cluster: scenario_redis(cluster, "closed"),
    "redis-open": lambda cluster: scenario_redis(cluster, "open"),
}
KEY_TIERS = {
    "exact": LIMITED_TIER,
    "revoke": ROOMY_TIER,
    "postgres": ROOMY_TIER,
    "hostkill": ROOMY_TIER,
    "redis": ROOMY_TIER,
    "redis-open": ROOMY_TIER,
}


# -- running and reporting ---------------------------------------------------------------------
def run_scenarios(options: Options, names: list[str], *, keep: bool = False) -> dict[str, Any]:
    """Build the cluster, run the named scenarios, tear it down; the report (never raises on
    a failed check; raises `hosts.HostError` when the cluster cannot be built)."""
    cluster = Cluster(options)
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": asdict(options) | {"revoke_bound_s": options.revoke_bound},
        "scenarios": {},
    }
    began = time.monotonic()
    try:
        with hosts.interrupts_as_keyboard():
            try:
                cluster.start({n: KEY_TIERS[n] for n in names})
                report["meta"] = _meta(cluster)
                for name in names:
                    print(f"cluster: scenario {name} ...", flush=True)
                    scenario_began = time.monotonic()
                    try:
                        result = SCENARIOS[name](cluster)
                    except hosts.HostError as exc:
                        result = {"checks": [{"check": "ran", "ok": False, "detail": str(exc)}]}
                    result["duration_s"] = round(time.monotonic() - scenario_began, 1)
                    report["scenarios"][name] = result
                    failed = [i["check"] for i in result["checks"] if not i["ok"]]
                    print(
                        f"cluster: {name}: {'ok' if not failed else 'FAILED: ' + '; '.join(failed)}"
                        f" ({result['duration_s']} s)",
                        flush=True,
                    )
            finally:
                if keep and cluster.run:
                    print(f"cluster: keeping {cluster.run.path}", flush=True)
                if any(not _ok(r) for r in report["scenarios"].values()) and cluster.run:
                    report["logs_tail"] = {
                        p.name: "\n".join(p.read_text(errors="replace").splitlines()[-30:])
                        for p in sorted(cluster.run.path.glob("*.log"))
                    }
                teardown_began = time.monotonic()
                cluster.teardown(keep=keep)
                cluster.timings["teardown_s"] = round(time.monotonic() - teardown_began, 2)
    finally:
        report["timings"] = cluster.timings | {"total_s": round(time.monotonic() - began, 1)}
        report["leftovers_removed"] = cluster.leftovers
    report["ok"] = all(_ok(r) for r in report["scenarios"].values())
    return report


def _ok(result: dict[str, Any]) -> bool:
    return all(i["ok"] for i in result.get("checks", []))


def _meta(cluster: Cluster) -> dict[str, Any]:
    assert cluster.haproxy and cluster.postgres and cluster.network
    commit = subprocess.run(
        ["git", "-C", str(hosts.ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(hosts.ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": commit + ("+dirty" if dirty else ""),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "haproxy": cluster.haproxy.version(),
        "redis": hosts.sh("redis-server", "--version").strip(),
        "postgres": cluster.postgres.version(),
        "subnet": cluster.network.subnet,
        "hosts": {gw.name: gw.address for gw in cluster.gateways},
        "haproxy_check": f"inter {cluster.options.inter_ms} ms, fall 2, rise 2",
    }


def markdown(report: dict[str, Any]) -> str:
    """A short summary of the report."""
    meta = report.get("meta", {})
    lines = [
        f"# Cluster run {report['started']}",
        "",
        f"Result: **{'all checks passed' if report['ok'] else 'CHECKS FAILED'}**; "
        f"commit {meta.get('commit', '?')}, {meta.get('cpus', '?')} CPUs, "
        f"{meta.get('haproxy', '')}, {meta.get('postgres', '')}; "
        f"total {report['timings'].get('total_s')} s.",
        "",
    ]
    for name, result in report["scenarios"].items():
        lines += [f"## {name} ({result.get('duration_s', '?')} s)", ""]
        for field_name in (
            "answers",
            "by_host",
            "during",
            "recovery_s",
            "h2",
            "cut",
            "complete",
            "haproxy_marked_down_after_s",
            "client_200",
            "ledger",
        ):
            if field_name in result:
                lines.append(f"- {field_name}: `{json.dumps(result[field_name])}`")
        if "reconcile" in result:
            r = result["reconcile"]
            lines.append(
                f"- counters vs ledger: counters `{json.dumps(r['counters'])}`, ledger rows "
                f"{r['ledger']['rows']} tokens {r['ledger']['tokens']}"
            )
        lines.append("")
        lines += ["| check | ok | detail |", "|---|---|---|"]
        for item in result.get("checks", []):
            detail = json.dumps(item["detail"])
            if len(detail) > 160:
                detail = detail[:157] + "..."
            lines.append(f"| {item['check']} | {'yes' if item['ok'] else '**no**'} | `{detail}` |")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = out / f"cluster-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    base.with_suffix(".md").write_text(markdown(report) + "\n")
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    parser.add_argument("--requests", type=int, default=1000, help="the exact scenario's burst")
    parser.add_argument("--limit", type=int, help="its daily request limit (default: half)")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--key-cache-ttl", type=float, default=5.0)
    parser.add_argument("--revoke-bound", type=float, help="default: key cache TTL + 1 s")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds Redis stays down")
    parser.add_argument("--clients", type=int, default=32, help="steady-load clients")
    parser.add_argument("--recovery-bound", type=float, default=1.0)
    parser.add_argument(
        "--quick", action="store_true", help="200 requests, a 4 s outage, shorter phases"
    )
    parser.add_argument("--no-persist", action="store_true", help="Redis without its AOF")
    parser.add_argument("--access-log", action="store_true", help="the gateways' access log on")
    parser.add_argument(
        "--keep-alive", type=int, default=65, help="the gateways' [server] keep_alive_s"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(ALL_SCENARIOS)}")
    missing = hosts.missing_requirements()
    if missing:
        print(f"cluster: cannot run here: {'; '.join(missing)}", file=sys.stderr)
        return 2
    requests = 200 if args.quick and args.requests == 1000 else args.requests
    options = Options(
        requests=requests,
        limit=args.limit or requests // 2,
        concurrency=min(args.concurrency, requests),
        key_cache_ttl_s=args.key_cache_ttl,
        revoke_bound_s=args.revoke_bound,
        redis_outage_s=4.0 if args.quick and args.outage == 10.0 else args.outage,
        load_clients=args.clients,
        before_s=2.0 if args.quick else 3.0,
        after_s=4.0 if args.quick else 6.0,
        recovery_bound_s=args.recovery_bound,
        access_log=args.access_log,
        keep_alive_s=args.keep_alive,
        persistent_redis=not args.no_persist,
    )
    try:
        report = run_scenarios(options, names, keep=args.keep)
    except hosts.HostError as exc:
        print(f"cluster: setup failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cluster: interrupted; everything was torn down", file=sys.stderr)
        return 130
    base = write_report(report, args.out)
    print(markdown(report))
    print(f"cluster: wrote {base}.json and {base}.md", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
