"""Benchmark Axione beside the fake upstream alone (`direct`) and real peers, in one run.

    python benchmarks/run.py                          # direct + axione, 10 s a scenario
    python benchmarks/run.py --peers litellm,portkey  # side by side with the peers
    python benchmarks/run.py --smoke                  # ~5 s: the harness works

Chat completions go to every target; Anthropic Messages requests (`/messages`)
to those that serve them: `direct` (the fake upstream answers them itself) and
Axione, which passes them through to an `anthropic` provider on the same fake.
OpenAI Responses requests (`/responses`) go to Axione alone, which translates
them into chat completions to the same fake (the same upstream work as chat's).

The gateway under test runs pinned to core 0 (`taskset -c 0`); the fake
upstream, the load driver (wrk, else the asyncio driver in load.py) and this
script share core 1. Writes benchmarks/results/<timestamp>.{json,md,png}.
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


def load_once(
    live: Live,
    others: list[Live],
    upstream: load.ProcTree,
    sc: Scenario,
    seconds: float,
    args: argparse.Namespace,
    core: int | None,
) -> dict[str, Any]:
    """One load run against one target, with the CPU it and its neighbours used."""
    request = request_for(live.target, sc.shape, stream=sc.stream, cached=sc.cached, api=sc.api)
    cpu0, up0 = live.tree.cpu_seconds(), upstream.cpu_seconds()
    idle0 = sum(o.tree.cpu_seconds() for o in others)
    result = load.run_load(request, sc.connections, seconds, core=core, tool=args.driver)
    cpu1, up1 = live.tree.cpu_seconds(), upstream.cpu_seconds()
    idle1 = sum(o.tree.cpu_seconds() for o in others)
    row = result.as_dict()
    row["cpu_ms_per_req"] = (cpu1 - cpu0) * 1000 / max(result.requests, 1)
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
        if key in ("requests", "errors", "duration_s", "driver_cpu_s"):
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
) -> None:
    """Rounds of every scenario, targets interleaved, so that a burst of noise from
    elsewhere on the machine lands on all targets alike rather than on one."""
    seconds = max(1.0, args.duration / args.rounds)
    samples = max(1, args.ttfe_samples // args.rounds)
    if args.warmup > 0:
        for live in lives:
            chat = request_for(live.target, CHAT, stream=False)
            live.out["warmup_rps"] = load.run_load(
                chat, 16, args.warmup, core=core, tool=args.driver
            ).rps
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds}", flush=True)
        for sc in scenarios:
            chosen = [x for x in lives if not sc.cached or x.name.startswith("axione")]
            for live in [x for x in chosen if serves(x.target, sc)]:
                others = [o for o in lives if o is not live]
                try:
                    row = load_once(live, others, upstream, sc, seconds, args, core)
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
        for live in lives:
            paced = request_for(live.target, PACED, stream=True)
            got = load.ttfe(paced, samples)
            live.firsts += got["firsts_ms"]
            live.stream_totals += got["totals_ms"]
            live.ttfe_failures += got["failures"]
            print(f"  {live.name:8} {'ttfe':21} p50 {got['p50_ms']:.2f} ms", flush=True)
            if live.target.messages_headers is None:
                continue
            paced = request_for(live.target, MESSAGES_PACED, stream=True, api="messages")
            got = load.ttfe(paced, samples, end=load.MESSAGES_END)
            live.messages_firsts += got["firsts_ms"]
            live.messages_stream_totals += got["totals_ms"]
            live.messages_ttfe_failures += got["failures"]
            print(f"  {live.name:8} {'messages ttfe':21} p50 {got['p50_ms']:.2f} ms", flush=True)
    time.sleep(args.settle)
    for live in lives:
        for name, rows in live.out["rounds"].items():
            live.out["scenarios"][name] = _median_row(rows)
        live.out["ttfe"] = _ttfe_summary(live.firsts, live.stream_totals, live.ttfe_failures)
        if live.target.messages_headers is not None:
            live.out["ttfe_messages"] = _ttfe_summary(
                live.messages_firsts, live.messages_stream_totals, live.messages_ttfe_failures
            )
        live.out["rss_after_mb"] = live.tree.rss_mb()


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
        },
        "targets": {},
        "failures": {},
    }
    print(f"benchmark {stamp}: driver {driver}, pinned {pin}, {args.duration:g} s a scenario")
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
                    plan.append(
                        (
                            f"axione-{transport}" if transport else "axione",
                            lambda transport=transport: targets.axione(
                                upstream_port,
                                SHAPES,
                                work,
                                core=gateway_core,
                                python=args.python,
                                source=args.axione_src,
                                transport=transport,
                                messages_shapes=MESSAGES_SHAPES,
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
                measure_all(lives, upstream, scenarios, args, harness_core, results["failures"])
                for live in lives:
                    results["targets"][live.name] = live.out
            finally:
                for live in lives:
                    live.target.stop()
        finally:
            upstream_proc.terminate()
            try:
                upstream_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                upstream_proc.kill()
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


if __name__ == "__main__":
    raise SystemExit(main())
