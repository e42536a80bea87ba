"""Benchmark Axione beside the fake upstream alone (`direct`) and real peers, in one run.

    python benchmarks/run.py                          # direct + axione, 10 s a scenario
    python benchmarks/run.py --peers litellm,portkey  # side by side with the peers
    python benchmarks/run.py --smoke                  # ~5 s: the harness works
    python benchmarks/run.py --axione-stacks memory,redis-postgres --scenarios chat_c16
                                                      # Axione on shared stores, side by side

Chat completions go to every target; Anthropic Messages requests (`/messages`)
to those that serve them: `direct` (the fake upstream answers them itself) and
Axione, which passes them through to an `anthropic` provider on the same fake.
OpenAI Responses requests (`/responses`) go to Axione alone, which translates
them into chat completions to the same fake (the same upstream work as chat's).

The gateway under test runs pinned to core 0 (`taskset -c 0`); the fake
upstream, the load driver (wrk, else the asyncio driver in load.py) and this
script share core 1. Writes benchmarks/results/<timestamp>.{json,md,png}.

With `--axione-stacks`, Axione runs once per storage stack (targets.STACKS:
`axione-memory`, `axione-redis-postgres`, ...) in the same run; each load run's
requests then carry a `session-id` header naming the run, which Axione keeps in
its ledger, and after the load the harness counts each stack's ledger rows
(SQLite or PostgreSQL) against the answers the load driver got.
docs/benchmarks.md tells how to read the figures and install the peers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load  # noqa: E402
import report  # noqa: E402
import targets  # noqa: E402

GATEWAY_CORE = 0
HARNESS_CORE = 1

# Model names are how the fake upstream is told the shape of its answer.
CHAT = "gpt-4o-mini"
STREAM20 = "gpt-4o-mini-c20"
STREAM200 = "gpt-4o-mini-c200"
PACED = "gpt-4o-mini-c3-i10"  # 3 chunks, 10 ms apart: a buffering gateway shows >= 10 ms
SHAPES = [CHAT, STREAM20, STREAM200, PACED]
# The same shapes for Anthropic Messages, through Axione's `anthropic` provider (pass-through).
MESSAGES = "claude-bench"
MESSAGES_STREAM20 = "claude-bench-c20"
MESSAGES_PACED = "claude-bench-c3-i10"
MESSAGES_SHAPES = [MESSAGES, MESSAGES_STREAM20, MESSAGES_PACED]


@dataclass(frozen=True)
class Scenario:
    name: str
    shape: str
    connections: int
    stream: bool = False
    # Axione only: identical temperature-0 requests, answered from its response cache.
    cached: bool = False
    # "chat" (`/chat/completions`), "messages" (Anthropic's `/messages`) or
    # "responses" (OpenAI's `/responses`, translated by Axione into a chat completion).
    api: str = "chat"


FULL = [
    Scenario("chat_c1", CHAT, 1),
    Scenario("chat_c16", CHAT, 16),
    Scenario("chat_c64", CHAT, 64),
    Scenario("chat_c256", CHAT, 256),
    Scenario("stream20_c16", STREAM20, 16, stream=True),
    Scenario("stream200_c16", STREAM200, 16, stream=True),
    Scenario("cache_hit_c16", CHAT, 16, cached=True),
    Scenario("messages_c16", MESSAGES, 16, api="messages"),
    Scenario("messages_stream20_c16", MESSAGES_STREAM20, 16, stream=True, api="messages"),
    Scenario("responses_stream20_c16", STREAM20, 16, stream=True, api="responses"),
]
SMOKE = [
    Scenario("chat_c16", CHAT, 16),
    Scenario("stream20_c16", STREAM20, 16, stream=True),
    Scenario("messages_c16", MESSAGES, 16, api="messages"),
    Scenario("responses_stream20_c16", STREAM20, 16, stream=True, api="responses"),
]
PROMPT = "Say hello in one short sentence."


def body(model: str, *, stream: bool, cached: bool = False) -> bytes:
    """The request body; the same one is a valid chat completion and a valid Message."""
    data: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 32,
    }
    if stream:
        data["stream"] = True
    if cached:
        data["temperature"] = 0
    return json.dumps(data, separators=(",", ":")).encode()


def responses_body(model: str, *, stream: bool) -> bytes:
    """A Responses request that Axione translates into `body()`'s chat completion:
    the same user message and cap; `store: false`, so no response is kept."""
    data: dict[str, Any] = {"model": model, "input": PROMPT, "max_output_tokens": 32}
    if stream:
        data["stream"] = True
    data["store"] = False
    return json.dumps(data, separators=(",", ":")).encode()


def request_for(
    target: targets.Target, shape: str, *, stream: bool, cached: bool = False, api: str = "chat"
) -> load.Request:
    if api == "messages":
        if target.messages_headers is None:
            raise ValueError(f"{target.name} does not serve Anthropic Messages")
        return load.Request(
            f"{target.base_url}/messages",
            body(target.messages_model(shape), stream=stream, cached=cached),
            dict(target.messages_headers),
        )
    if api == "responses":
        if not target.responses:
            raise ValueError(f"{target.name} does not serve OpenAI Responses")
        return load.Request(
            f"{target.base_url}/responses",
            responses_body(target.model(shape), stream=stream),
            dict(target.headers),
        )
    return load.Request(
        f"{target.base_url}/chat/completions",
        body(target.model(shape), stream=stream, cached=cached),
        dict(target.headers),
    )


def serves(target: targets.Target, sc: Scenario) -> bool:
    if sc.api == "messages":
        return target.messages_headers is not None
    if sc.api == "responses":
        return target.responses
    return True


def messages_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """A stream of named events (Anthropic's, OpenAI Responses'), (name, data), in order."""
    out = []
    for block in raw.decode().split("\n\n"):
        lines = block.splitlines()
        name = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = "".join(ln[6:] for ln in lines if ln.startswith("data: "))
        if name is not None:
            out.append((name, json.loads(data)))
    return out


class NoMessages(RuntimeError):
    """The target does not serve `/messages`: an Axione from before the Messages ingress
    answers 404, or 401 before that (it took no `x-api-key` either)."""


def check_messages(target: targets.Target) -> None:
    """A Message and a Messages stream, read whole, as for `check_answers`."""
    status, raw = load.fetch(request_for(target, MESSAGES, stream=False, api="messages"))
    if status in (401, 404):
        raise NoMessages(f"{target.name}: /messages answered {status}: {raw[:300]!r}")
    if status != 200:
        raise RuntimeError(f"{target.name}: messages answered {status}: {raw[:500]!r}")
    message = json.loads(raw)
    if message.get("type") != "message" or not message["content"][0]["text"]:
        raise RuntimeError(f"{target.name}: the message has no text: {raw[:500]!r}")
    status, raw = load.fetch(request_for(target, MESSAGES_STREAM20, stream=True, api="messages"))
    events = messages_events(raw) if status == 200 else []
    deltas = sum(
        1 for name, data in events if name == "content_block_delta" and data["delta"].get("text")
    )
    names = [name for name, _ in events]
    if names[:1] != ["message_start"] or names[-1:] != ["message_stop"] or deltas != 20:
        raise RuntimeError(
            f"{target.name}: messages stream answered {status}, {deltas} text deltas, "
            f"events {names[:2]}...{names[-2:]}"
        )


class NoResponses(RuntimeError):
    """The target does not serve `/responses` (an Axione from before the Responses ingress)."""


def check_responses(target: targets.Target) -> None:
    """A Responses stream, read whole: `response.created` first, 20 text deltas, then
    `response.completed` last, with the whole text and the upstream's usage in it."""
    status, raw = load.fetch(request_for(target, STREAM20, stream=True, api="responses"))
    if status == 404:
        raise NoResponses(f"{target.name}: /responses answered {status}: {raw[:300]!r}")
    events = messages_events(raw) if status == 200 else []
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    names = [name for name, _ in events]
    final = events[-1][1].get("response", {}) if events else {}
    usage = final.get("usage") or {}
    text = "".join(
        part.get("text", "") for item in final.get("output", []) for part in item.get("content", [])
    )
    if (
        names[:1] != ["response.created"]
        or names[-1:] != ["response.completed"]
        or len([d for d in deltas if d]) != 20
        or final.get("status") != "completed"
        or text != "".join(deltas)
        or usage.get("output_tokens") != 20
    ):
        raise RuntimeError(
            f"{target.name}: responses stream answered {status}, {len(deltas)} text deltas, "
            f"events {names[:2]}...{names[-2:]}, status {final.get('status')!r}, "
            f"usage {usage!r}: {raw[:300]!r}"
        )


def check_answers(target: targets.Target) -> None:
    """One request of each kind, read whole: the load figures count only right answers."""
    status, raw = load.fetch(request_for(target, CHAT, stream=False))
    if status != 200:
        raise RuntimeError(f"{target.name}: chat answered {status}: {raw[:500]!r}")
    answer = json.loads(raw)
    if not answer["choices"][0]["message"]["content"]:
        raise RuntimeError(f"{target.name}: chat answer has no content: {raw[:500]!r}")
    status, raw = load.fetch(request_for(target, STREAM20, stream=True))
    events = [ln[6:] for ln in raw.decode().splitlines() if ln.startswith("data: ")]
    contents = 0
    for event in events[:-1]:
        chunk = json.loads(event)
        contents += sum(1 for c in chunk.get("choices", []) if c.get("delta", {}).get("content"))
    if status != 200 or not events or events[-1] != "[DONE]" or contents != 20:
        raise RuntimeError(
            f"{target.name}: stream answered {status}, {contents} content chunks, "
            f"last event {events[-1] if events else None!r}"
        )
    if target.messages_headers is not None:
        try:
            check_messages(target)
        except NoMessages as exc:
            # Still measured on chat; its Messages figures stay n/a.
            print(f"  {exc}: no Messages scenarios for it", file=sys.stderr, flush=True)
            target.messages_headers = None
            target.notes += "; serves no /messages"
    if target.responses:
        try:
            check_responses(target)
        except NoResponses as exc:
            print(f"  {exc}: no Responses scenarios for it", file=sys.stderr, flush=True)
            target.responses = False
            target.notes += "; serves no /responses"


class Live:
    """A started target and what has been measured of it so far."""

    def __init__(self, name: str, target: targets.Target, upstream: load.ProcTree) -> None:
        self.name = name
        self.target = target
        self.tree = target.tree() or upstream
        self.out: dict[str, Any] = {"notes": target.notes, "scenarios": {}, "rounds": {}}
        self.firsts: list[float] = []
        self.stream_totals: list[float] = []
        self.ttfe_failures = 0
        # The same for Messages streams (targets that serve them).
        self.messages_firsts: list[float] = []
        self.messages_stream_totals: list[float] = []
        self.messages_ttfe_failures = 0
        # A target on a storage stack: each load run by its `session-id` tag, as
        # (answered 2xx, connections, driver), to count against its ledger's rows;
        # and the 200s of the harness's own untagged requests (checks, TTFE).
        self.tagged: dict[str, tuple[int, int, str]] = {}
        self.untagged_ok = 0


def prepare(
    name: str,
    target: targets.Target,
    upstream: load.ProcTree,
    args: argparse.Namespace,
    log_dir: Path,
) -> Live:
    """Start the target alone: time to first 200, right answers, idle RSS."""
    target.start(log_dir)
    try:
        chat = request_for(target, CHAT, stream=False)
        live = Live(name, target, upstream)
        if target.command is not None:
            live.out["startup_s"] = targets.wait_first_200(
                lambda: load.fetch(chat, timeout=2)[0], target, timeout=120
            )
        else:
            live.out["startup_s"] = args.upstream_startup_s
        check_answers(target)
        live.out["notes"] = target.notes  # check_answers may have added to them
        # The first 200 polled for, then check_answers' chat and stream, its
        # message and Messages stream, its Responses stream.
        live.untagged_ok = (
            (1 if target.command is not None else 0)
            + 2
            + (2 if target.messages_headers is not None else 0)
            + (1 if target.responses else 0)
        )
        time.sleep(args.settle)
        live.out["rss_idle_mb"] = live.tree.rss_mb()
        print(
            f"  {name:8} started in {live.out['startup_s']:.2f} s, "
            f"RSS idle {live.out['rss_idle_mb']:.0f} MB",
            flush=True,
        )
        return live
    except BaseException:
        target.stop()
        raise


def tag_request(live: Live, request: load.Request, tag: str) -> load.Request:
    """On a storage stack, `request` with a `session-id` that Axione keeps in its
    ledger (`session_id`): this run's rows are counted apart from the others'."""
    if live.target.stack is not None:
        request.headers["session-id"] = tag
    return request


def record_tagged(live: Live, tag: str, result: load.LoadResult) -> None:
    if live.target.stack is not None:
        live.tagged[tag] = (result.requests - result.non_2xx, result.connections, result.tool)


def load_once(
    live: Live,
    others: list[Live],
    upstream: load.ProcTree,
    sc: Scenario,
    seconds: float,
    args: argparse.Namespace,
    core: int | None,
    *,
    tag: str = "",
    servers: list[load.ProcTree] | None = None,
    stores: targets.SharedStores | None = None,
) -> dict[str, Any]:
    """One load run against one target, with the CPU it and its neighbours used
    (and, with `servers`, the Redis and PostgreSQL servers' CPU meanwhile; with
    `stores`, the commands the Redis server ran)."""
    request = request_for(live.target, sc.shape, stream=sc.stream, cached=sc.cached, api=sc.api)
    tag_request(live, request, tag)
    servers = servers or []
    cpu0, up0 = live.tree.cpu_seconds(), upstream.cpu_seconds()
    idle0 = sum(o.tree.cpu_seconds() for o in others)
    st0 = sum(t.cpu_seconds() for t in servers)
    calls0 = stores.command_calls() if stores is not None else {}
    port = stores.redis_port if stores is not None else 0
    segs0 = targets.redis_segments(live.tree.pids(), port) if stores is not None else None
    result = load.run_load(request, sc.connections, seconds, core=core, tool=args.driver)
    segs1 = targets.redis_segments(live.tree.pids(), port) if stores is not None else None
    calls1 = stores.command_calls() if stores is not None else {}
    cpu1, up1 = live.tree.cpu_seconds(), upstream.cpu_seconds()
    idle1 = sum(o.tree.cpu_seconds() for o in others)
    st1 = sum(t.cpu_seconds() for t in servers)
    record_tagged(live, tag, result)
    row = result.as_dict()
    row["cpu_ms_per_req"] = (cpu1 - cpu0) * 1000 / max(result.requests, 1)
    row["connection_errors"] = result.errors - result.non_2xx
    if servers:
        # Not the gateway's: Redis's and PostgreSQL's own work (and anyone else's on them).
        row["store_servers_cpu_ms_per_req"] = (st1 - st0) * 1000 / max(result.requests, 1)
    if stores is not None:
        # The whole Redis server's commands: anyone else's on it meanwhile count too.
        ran = {c: n - calls0.get(c, 0) for c, n in calls1.items() if n > calls0.get(c, 0)}
        row["redis_commands_per_req"] = sum(ran.values()) / max(result.requests, 1)
        row["redis_commands"] = dict(sorted(ran.items(), key=lambda kv: -kv[1]))
        row["redis_evalsha_per_req"] = ran.get("evalsha", 0) / max(result.requests, 1)
    if segs0 is not None and segs1 is not None:
        # The gateway's own writes to Redis: its round trips, whatever else uses the
        # server. A connection opened meanwhile first writes its handshake.
        assert stores is not None
        writes = sum(n - segs0.get(addr, 0) for addr, n in segs1.items())
        opened = len(set(segs1) - set(segs0))
        row["redis_writes_per_req"] = writes / max(result.requests, 1)
        row["redis_new_connections"] = opened
        row["redis_round_trips_per_req"] = (writes - stores.handshake * opened) / max(
            result.requests, 1
        )
    # For `direct` the "gateway" is the upstream itself.
    row["gateway_core_pct"] = 100 * (cpu1 - cpu0) / result.duration_s
    row["upstream_core_pct"] = 100 * (up1 - up0) / result.duration_s
    row["driver_core_pct"] = 100 * result.driver_cpu_s / result.duration_s
    # The other targets sit idle on the gateway core meanwhile: this shows they stay idle.
    row["idle_neighbours_core_pct"] = 100 * (idle1 - idle0) / result.duration_s
    if not live.target.alive():
        raise RuntimeError(f"{live.name} died under load:\n{live.target.log_tail()}")
    return row


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (`requests`, `errors`: the sums)."""
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        values = [r[key] for r in rows]
        if key in (
            "requests",
            "errors",
            "non_2xx",
            "connection_errors",
            "duration_s",
            "driver_cpu_s",
            "redis_new_connections",
        ):
            out[key] = sum(values)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(values)
        else:
            out[key] = value
    out["rounds"] = len(rows)
    return out


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def _ttfe_summary(firsts: list[float], totals: list[float], failures: int) -> dict[str, Any]:
    return {
        "samples": len(firsts),
        "failures": failures,
        "p50_ms": _pct(firsts, 50),
        "p90_ms": _pct(firsts, 90),
        "p99_ms": _pct(firsts, 99),
        "min_ms": min(firsts, default=0.0),
        "stream_p50_ms": _pct(totals, 50),
    }


def measure_all(
    lives: list[Live],
    upstream: load.ProcTree,
    scenarios: list[Scenario],
    args: argparse.Namespace,
    core: int | None,
    failures: dict[str, str],
    servers: list[load.ProcTree] | None = None,
    stores: targets.SharedStores | None = None,
) -> None:
    """Rounds of every scenario, targets interleaved, so that a burst of noise from
    elsewhere on the machine lands on all targets alike rather than on one."""
    seconds = max(1.0, args.duration / args.rounds)
    samples = max(1, args.ttfe_samples // args.rounds)
    if args.warmup > 0:
        for live in lives:
            tag = f"{live.name}/warmup"
            chat = tag_request(live, request_for(live.target, CHAT, stream=False), tag)
            warm = load.run_load(chat, 16, args.warmup, core=core, tool=args.driver)
            record_tagged(live, tag, warm)
            live.out["warmup_rps"] = warm.rps
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds}", flush=True)
        for sc in scenarios:
            chosen = [x for x in lives if not sc.cached or x.name.startswith("axione")]
            for live in [x for x in chosen if serves(x.target, sc)]:
                others = [o for o in lives if o is not live]
                try:
                    row = load_once(
                        live,
                        others,
                        upstream,
                        sc,
                        seconds,
                        args,
                        core,
                        tag=f"{live.name}/{sc.name}/r{rnd + 1}",
                        servers=servers,
                        stores=stores,
                    )
                except Exception as exc:
                    failures[live.name] = str(exc)[-3000:]
                    print(f"  {live.name} failed: {exc}", file=sys.stderr, flush=True)
                    live.target.stop()
                    lives.remove(live)
                    if not args.keep_going:
                        raise
                    continue
                live.out["rounds"].setdefault(sc.name, []).append(row)
                print(
                    f"  {live.name:8} {sc.name:21} {row['rps']:9.0f} req/s  "
                    f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                    f"cpu {row['cpu_ms_per_req']:.3f} ms/req  errors {row['errors']}",
                    flush=True,
                )
        for live in lives if args.ttfe else []:
            paced = request_for(live.target, PACED, stream=True)
            got = load.ttfe(paced, samples)
            live.untagged_ok += got["samples"]
            live.firsts += got["firsts_ms"]
            live.stream_totals += got["totals_ms"]
            live.ttfe_failures += got["failures"]
            print(f"  {live.name:8} {'ttfe':21} p50 {got['p50_ms']:.2f} ms", flush=True)
            if live.target.messages_headers is None:
                continue
            paced = request_for(live.target, MESSAGES_PACED, stream=True, api="messages")
            got = load.ttfe(paced, samples, end=load.MESSAGES_END)
            live.untagged_ok += got["samples"]
            live.messages_firsts += got["firsts_ms"]
            live.messages_stream_totals += got["totals_ms"]
            live.messages_ttfe_failures += got["failures"]
            print(f"  {live.name:8} {'messages ttfe':21} p50 {got['p50_ms']:.2f} ms", flush=True)
    time.sleep(args.settle)
    for live in lives:
        for name, rows in live.out["rounds"].items():
            live.out["scenarios"][name] = _median_row(rows)
        if args.ttfe:
            live.out["ttfe"] = _ttfe_summary(live.firsts, live.stream_totals, live.ttfe_failures)
        if args.ttfe and live.target.messages_headers is not None:
            live.out["ttfe_messages"] = _ttfe_summary(
                live.messages_firsts, live.messages_stream_totals, live.messages_ttfe_failures
            )
        live.out["rss_after_mb"] = live.tree.rss_mb()


def _routine(line: str) -> bool:
    """An access-log line (Axione writes one a request whatever the log level) or the
    start-up banner."""
    return line.startswith("axione: serving on ") or (
        " request_id=" in line and " method=" in line and " status=" in line
    )


def log_problems(target: targets.Target) -> dict[str, Any]:
    """What the gateway logged besides its access lines (it runs with
    `--log-level warning`): the count of lines and of tracebacks, the first lines."""
    if target.log_path is None or not target.log_path.exists():
        return {"lines": 0, "tracebacks": 0, "first": []}
    lines = target.log_path.read_text(errors="replace").splitlines()
    shown = [
        ln for ln in lines if ln.strip() and not ln.startswith((" ", "\t")) and not _routine(ln)
    ]
    return {
        "lines": len(shown),
        "tracebacks": sum(1 for ln in lines if ln.startswith("Traceback")),
        "first": list(dict.fromkeys(shown))[:8],
    }


def _ledger_tally(live: Live) -> dict[str, Any]:
    """The target's ledger rows now: those of its load runs (by `session-id`) and the rest."""
    assert live.target.ledger_uri is not None
    rows = targets.ledger_rows(live.target.ledger_uri)
    runs: dict[str, dict[int, int]] = {}
    untagged: dict[int, int] = {}
    strangers: dict[int, int] = {}
    for (session, status), count in rows.items():
        if session in live.tagged:
            runs.setdefault(session, {})[status] = count
        elif session is None:
            untagged[status] = untagged.get(status, 0) + count
        else:
            strangers[status] = strangers.get(status, 0) + count
    return {
        "rows": sum(rows.values()),
        "runs": runs,
        "load_rows": sum(sum(by.values()) for by in runs.values()),
        "untagged": untagged,
        "strangers": strangers,
    }


def verify_ledger(live: Live, wait_s: float) -> dict[str, Any]:
    """Ledger rows against the answers counted: each load run's rows (all statuses)
    against the 2xx answers its driver counted, and the harness's own requests
    (start-up probe, answer checks, TTFE samples) against their 200s.

    The ledger writer flushes every 0.2 s off the request path: wait (at most
    `wait_s`) until the rows are all there, then once more, so that any extra
    ones show too. wrk stops with requests in flight, which the gateway may still
    finish and record: up to its connection count more rows than answers a run;
    the asyncio driver finishes every request it sent, so there it is exact.
    """
    expected_load = sum(n for n, _, _ in live.tagged.values())
    started = time.monotonic()
    tally = _ledger_tally(live)
    while time.monotonic() - started < wait_s and (
        tally["load_rows"] < expected_load or sum(tally["untagged"].values()) < live.untagged_ok
    ):
        time.sleep(0.25)
        tally = _ledger_tally(live)
    time.sleep(0.5)
    tally = _ledger_tally(live)
    waited = time.monotonic() - started
    per_run: dict[str, dict[str, Any]] = {}
    exact = within = True
    for tag, (answered, connections, tool) in live.tagged.items():
        by_status = tally["runs"].get(tag, {})
        rows = sum(by_status.values())
        bound = connections if tool == "wrk" else 0
        exact = exact and rows == answered and set(by_status) <= {200}
        within = within and 0 <= rows - answered <= bound
        per_run[tag] = {
            "driver_2xx": answered,
            "rows": rows,
            "rows_by_status": {str(k): v for k, v in sorted(by_status.items())},
            "in_flight_bound": bound,
        }
    untagged_rows = sum(tally["untagged"].values())
    harness_ok = untagged_rows == live.untagged_ok and not tally["strangers"]
    verdict = "exact" if exact else ("within in-flight bound" if within else "MISMATCH")
    if not harness_ok:
        verdict += "; harness requests MISMATCH"
    load_status: dict[int, int] = {}
    for by in tally["runs"].values():
        for status, count in by.items():
            load_status[status] = load_status.get(status, 0) + count
    return {
        "ledger": live.target.ledger_uri,
        "waited_s": round(waited, 2),
        "driver_2xx": expected_load,
        "load_rows": tally["load_rows"],
        "load_rows_by_status": {str(k): v for k, v in sorted(load_status.items())},
        "in_flight_bound": sum(r["in_flight_bound"] for r in per_run.values()),
        "harness_200": live.untagged_ok,
        "harness_rows": untagged_rows,
        "harness_rows_by_status": {str(k): v for k, v in sorted(tally["untagged"].items())},
        "other_session_rows": sum(tally["strangers"].values()),
        "rows_total": tally["rows"],
        "verdict": verdict,
        "runs": per_run,
    }


def start_upstream(
    port: int, log_dir: Path, core: int | None
) -> tuple[subprocess.Popen[bytes], float]:
    cmd = targets.pinned(
        [sys.executable, str(HERE / "fake_upstream.py"), "--port", str(port)], core
    )
    log = (log_dir / "upstream.log").open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    probe = load.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body(CHAT, stream=False))
    deadline = started + 30
    while time.perf_counter() < deadline:
        try:
            if load.fetch(probe, timeout=2)[0] == 200:
                return proc, time.perf_counter() - started
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.kill()
    raise RuntimeError((log_dir / "upstream.log").read_text())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=10, help="seconds per load scenario, over all rounds"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds over all scenarios and targets, interleaved; figures are the medians",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="~5 s run: direct and axione, 1 s each"
    )
    parser.add_argument("--peers", default="", help="comma list of peers to add: litellm,portkey")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct row")
    parser.add_argument("--no-axione", action="store_true", help="skip axione (peers only)")
    parser.add_argument("--driver", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--ttfe-samples", type=int, default=0, help="default: 20 per second")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds of load before measuring (duration / 5)"
    )
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before RSS")
    parser.add_argument("--litellm-venv", type=Path, default=Path("/tmp/litellm-venv"))
    parser.add_argument("--portkey-dir", type=Path, default=Path("/tmp/portkey"))
    parser.add_argument("--python", default=sys.executable, help="python that runs axione")
    parser.add_argument(
        "--axione-src",
        type=Path,
        help="a tree holding axione_asgi/ to measure instead of the installed one "
        "(e.g. a `git archive` export of a commit)",
    )
    parser.add_argument(
        "--compare-src",
        type=Path,
        help="also measure the axione_asgi/ in this tree, as `axione-compare`, in the "
        "same run (e.g. `git archive HEAD~1 | tar -x -C /tmp/before`): an A/B of a change",
    )
    parser.add_argument(
        "--axione-transports",
        type=lambda text: [t for t in text.split(",") if t],
        help="one axione target per upstream transport, e.g. httpx,aiohttp",
    )
    parser.add_argument(
        "--axione-stacks",
        type=lambda text: [t for t in text.split(",") if t],
        help="one axione target per storage stack, side by side, e.g. memory,redis-postgres "
        f"(of {', '.join(targets.STACKS)}; default: the axione target alone, on memory)",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: [t for t in text.split(",") if t],
        help="only these scenarios, e.g. chat_c1,chat_c16 (`ttfe` for the TTFE samples; "
        "default: all, or the smoke set with --smoke)",
    )
    parser.add_argument(
        "--redis",
        default=targets.BENCH_REDIS,
        help="the Redis database of the stacks on Redis (flushed before and after)",
    )
    parser.add_argument(
        "--postgres",
        default=targets.BENCH_POSTGRES,
        help=f"the PostgreSQL database of the stacks on PostgreSQL (in schemas "
        f"{targets.BENCH_SCHEMA}_*, dropped before and after)",
    )
    parser.add_argument(
        "--ledger-wait",
        type=float,
        default=15.0,
        help="seconds at most to wait for a stack's ledger rows after the load",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to cores")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="do not compile the Python targets' packages to bytecode first "
        "(start-up then includes compiling whatever has no .pyc)",
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="a target that fails is noted, not fatal"
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.axione_stacks or [] if s not in targets.STACKS]
    if unknown:
        parser.error(f"unknown stack {unknown[0]!r}: one of {', '.join(targets.STACKS)}")
    known = {sc.name for sc in FULL} | {"ttfe"}
    unknown = [s for s in args.scenarios or [] if s not in known]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}: one of {', '.join(sorted(known))}")
    args.ttfe = args.scenarios is None or "ttfe" in args.scenarios
    if args.smoke:
        args.duration = 1
        args.rounds = 1
        args.ttfe_samples = args.ttfe_samples or 10
        args.warmup = 0 if args.warmup is None else args.warmup
        args.settle = 0.3
    args.ttfe_samples = args.ttfe_samples or max(10, int(args.duration * 20))
    if args.warmup is None:
        args.warmup = max(1.0, args.duration / 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    gateway_core = GATEWAY_CORE if pin else None
    harness_core = HARNESS_CORE if pin else None
    if harness_core is not None:
        os.sched_setaffinity(0, {harness_core})  # this script's own TTFE client and polling
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    scenarios = SMOKE if args.smoke else FULL
    if args.scenarios is not None:
        scenarios = [sc for sc in FULL if sc.name in args.scenarios]
    stacks: list[str | None] = list(args.axione_stacks or [None])
    shared = any(s is not None and s != "memory" for s in stacks)
    stores = targets.SharedStores(args.redis, args.postgres) if shared else None
    driver = args.driver if args.driver != "auto" else ("wrk" if load.have_wrk() else "python")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "meta": {
            "started": stamp,
            "smoke": args.smoke,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "driver": driver,
            "pinned": {"gateway": gateway_core, "harness": harness_core},
            "cpus": os.cpu_count(),
            "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
            "versions": targets.versions(args.litellm_venv, args.portkey_dir),
            "argv": sys.argv[1:],
            "scenarios": [sc.name for sc in scenarios] + (["ttfe"] if args.ttfe else []),
        },
        "targets": {},
        "failures": {},
    }
    if stores is not None:
        stores.check()
        stores.flush_redis()
        results["meta"]["versions"].update(stores.versions())
        results["meta"]["stores"] = {
            "redis": stores.redis,
            "postgres": stores.postgres,
            "redis_handshake_writes": stores.handshake_writes(),
        }
    print(f"benchmark {stamp}: driver {driver}, pinned {pin}, {args.duration:g} s a scenario")
    try:
        run_targets(args, results, scenarios, stacks, stores, gateway_core, harness_core, peers)
    finally:
        if stores is not None:
            stores.cleanup()
    results["meta"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    base = args.out / stamp
    base.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.markdown(results)
    base.with_suffix(".md").write_text(markdown)
    chart_note = report.chart(results, base.with_suffix(".png"))
    print()
    print(markdown)
    print(chart_note)
    print(f"results: {base}.json, .md" + (", .png" if chart_note.startswith("chart:") else ""))
    return 1 if results["failures"] and not args.keep_going else 0


def run_targets(
    args: argparse.Namespace,
    results: dict[str, Any],
    scenarios: list[Scenario],
    stacks: list[str | None],
    stores: targets.SharedStores | None,
    gateway_core: int | None,
    harness_core: int | None,
    peers: list[str],
) -> None:
    """Start the upstream and the targets, measure them all, stop them all."""
    with TemporaryDirectory(prefix="axione-bench-") as tmp:
        work = Path(tmp)
        upstream_port = targets.free_port()
        upstream_proc, args.upstream_startup_s = start_upstream(upstream_port, work, harness_core)
        upstream = load.ProcTree(upstream_proc.pid)
        try:
            plan: list[tuple[str, Any]] = []
            if not args.no_direct:
                plan.append(("direct", lambda: targets.direct(upstream_port)))
            if not args.no_axione:
                for transport in args.axione_transports or [None]:
                    for stack in stacks:
                        name = "-".join(["axione", *(x for x in (transport, stack) if x)])
                        plan.append(
                            (
                                name,
                                lambda transport=transport, stack=stack, name=name: targets.axione(
                                    upstream_port,
                                    SHAPES,
                                    work,
                                    core=gateway_core,
                                    python=args.python,
                                    source=args.axione_src,
                                    transport=transport,
                                    name=name,
                                    messages_shapes=MESSAGES_SHAPES,
                                    stack=stack,
                                    stores=stores,
                                ),
                            )
                        )
            if args.compare_src is not None:
                plan.append(
                    (
                        "axione-compare",
                        lambda: targets.axione(
                            upstream_port,
                            SHAPES,
                            work,
                            core=gateway_core,
                            python=args.python,
                            source=args.compare_src,
                            name="axione-compare",
                            messages_shapes=MESSAGES_SHAPES,
                        ),
                    )
                )
            if "portkey" in peers:
                plan.append(
                    (
                        "portkey",
                        lambda: targets.portkey(
                            upstream_port, core=gateway_core, directory=args.portkey_dir
                        ),
                    )
                )
            if "litellm" in peers:
                plan.append(
                    (
                        "litellm",
                        lambda: targets.litellm(
                            upstream_port, SHAPES, work, core=gateway_core, venv=args.litellm_venv
                        ),
                    )
                )
            if not args.no_compile:
                # As `pip install` leaves them: start-up is measured from bytecode.
                pythons = {args.python: [p for p in (args.axione_src, args.compare_src) if p]}
                if "litellm" in peers:
                    pythons[str(args.litellm_venv / "bin" / "python")] = []
                results["meta"]["bytecode_compiled"] = [
                    folder
                    for python, extra in pythons.items()
                    for folder in targets.compile_bytecode(python, extra)
                ]
            lives: list[Live] = []
            try:
                for name, make in plan:
                    print(f"[{name}]", flush=True)
                    try:
                        lives.append(prepare(name, make(), upstream, args, work))
                    except Exception as exc:
                        results["failures"][name] = str(exc)[-3000:]
                        print(f"  {name} failed: {exc}", file=sys.stderr, flush=True)
                        if not args.keep_going:
                            raise
                servers = targets.store_servers() if stores is not None else None
                measure_all(
                    lives,
                    upstream,
                    scenarios,
                    args,
                    harness_core,
                    results["failures"],
                    servers,
                    stores,
                )
                for live in lives:
                    results["targets"][live.name] = live.out
                    live.out["log_problems"] = log_problems(live.target)
                    if live.target.stack is not None:
                        live.out["stack"] = live.target.stack
                        on_redis, on_postgres = targets.STACKS[live.target.stack]
                        live.out["stack_stores"] = {"redis": on_redis, "postgres": on_postgres}
                        try:
                            check = verify_ledger(live, args.ledger_wait)
                        except Exception as exc:
                            # Reported, not fatal: the load figures are kept.
                            results["failures"][f"{live.name} ledger check"] = repr(exc)
                            print(f"  {live.name} ledger check failed: {exc!r}", flush=True)
                            continue
                        live.out["ledger_check"] = check
                        print(
                            f"  {live.name} ledger: {check['load_rows']} rows for the load "
                            f"driver's {check['driver_2xx']} 2xx answers "
                            f"(by status {check['load_rows_by_status']}), "
                            f"{check['harness_rows']} for the harness's "
                            f"{check['harness_200']} own 200s, after {check['waited_s']} s: "
                            f"{check['verdict']}",
                            flush=True,
                        )
            finally:
                for live in lives:
                    live.target.stop()
                    check = live.out.get("ledger_check")
                    if check is not None:
                        # Whatever the writer still held is written at shutdown.
                        try:
                            rows = targets.ledger_rows(check["ledger"])
                            check["rows_after_stop"] = sum(rows.values())
                        except Exception as exc:
                            check["rows_after_stop"] = f"unread: {exc!r}"
        finally:
            upstream_proc.terminate()
            try:
                upstream_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                upstream_proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
