"""Profile Axione under load with py-spy and summarise where its CPU goes.

    python benchmarks/profile.py --duration 15                 # chat, 16 connections
    python benchmarks/profile.py --stream --duration 15        # 20-chunk streams
    python benchmarks/profile.py --summarise /tmp/x.folded     # an existing raw profile

Starts the fake upstream (core 1) and `axione serve` (core 0) as run.py does,
loads it with wrk (or the asyncio driver), records it with
`py-spy record --format raw`, then prints: own time by group (server,
routing, our middleware, pydantic, httpx, json, ...), the top functions by
own time, and the share of every `axione_asgi` function including callees.
Writes the folded stacks beside the summary so speedscope or flamegraph.pl
can draw them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load  # noqa: E402
import targets  # noqa: E402
from run import CHAT, SHAPES, STREAM20, request_for, start_upstream  # noqa: E402

# First match wins: the order puts the specific before the general.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("axione upstream client", ("axione_asgi/transports/",)),
    ("axione middleware", ("axione_asgi/middleware/",)),
    ("axione quota", ("axione_asgi/quota/", "axione_asgi/scope.py")),
    ("axione routes", ("axione_asgi/routes.py", "axione_asgi/sse.py")),
    ("axione providers", ("axione_asgi/providers/",)),
    ("axione other", ("axione_asgi/",)),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("httpx/httpcore/h11 client", ("httpx/", "httpcore/", "h11/")),
    ("aiohttp client", ("aiohttp/", "multidict/", "yarl/", "aiosignal/", "frozenlist/")),
    ("logging", ("logging/",)),
    ("anyio", ("anyio/", "sniffio/")),
    ("uvicorn/httptools server", ("uvicorn/", "httptools/")),
    ("starlette", ("starlette/",)),
    ("json", ("json/", "orjson")),
    ("cachetools/limits", ("cachetools/", "limits/")),
    ("asyncio/uvloop event loop", ("asyncio/", "uvloop/", "uvloop")),
]

# Leaf frames in these files mean a helper thread waiting, not working (py-spy
# may sample a timed wait as busy); the event loop's own waits are never leaves here.
WAIT_FILES = ("threading.py", "queue.py", "selectors.py", "concurrent/futures/thread.py")

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def group_of(file: str) -> str:
    for name, needles in GROUPS:
        if any(n in file for n in needles):
            return name
    return "other"


def short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/tmp/axione-head/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def parse(folded: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """The raw py-spy output: one `frame;frame;... count` line per distinct stack."""
    stacks = []
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame.strip())
            frames.append((m["func"], m["file"]) if m else (frame.strip(), ""))
        frames = [f for f in frames if f[1]]
        # A helper thread parked in a timed wait is sometimes sampled as busy.
        if frames and frames[-1][1].endswith(WAIT_FILES):
            continue
        stacks.append((frames, int(count)))
    return stacks


def summarise(folded: Path, top: int = 15) -> str:
    stacks = parse(folded)
    total = sum(c for _, c in stacks) or 1
    own: Counter[tuple[str, str]] = Counter()
    own_group: Counter[str] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    inclusive_group: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        leaf = frames[-1]
        own[(leaf[0], short(leaf[1]))] += count
        own_group[group_of(leaf[1])] += count
        seen = set()
        seen_groups = set()
        for func, file in frames:
            key = (func, short(file))
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
            g = group_of(file)
            if g not in seen_groups:
                seen_groups.add(g)
                inclusive_group[g] += count

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    out = [f"{total} samples (on-CPU only)", "", "own time by group (incl. = with callees):"]
    for g, n in own_group.most_common():
        out.append(f"  {pct(n)}  (incl. {pct(inclusive_group[g])})  {g}")
    out += ["", f"top {top} functions by own time:"]
    for (func, file), n in own.most_common(top):
        out.append(f"  {pct(n)}  {func}  {file}")
    out += ["", "axione_asgi functions, including callees:"]
    ours = [(k, n) for k, n in inclusive.most_common() if "axione_asgi/" in k[1]]
    for (func, file), n in ours[:25]:
        out.append(f"  {pct(n)}  {file}:{func}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="profile 20-chunk streams")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument(
        "--blocking",
        action="store_true",
        help="pause the process at each sample (exact stacks, but it slows it a lot)",
    )
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--axione-src", type=Path)
    parser.add_argument("--output", type=Path, default=Path("/tmp/axione-profile.folded"))
    parser.add_argument("--speedscope", type=Path, help="also record a speedscope file here")
    parser.add_argument("--summarise", type=Path, help="only summarise this raw profile")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise, args.top), end="")
        return 0
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    pin = (os.cpu_count() or 1) >= 2
    gateway_core, harness_core = (0, 1) if pin else (None, None)
    if harness_core is not None:
        os.sched_setaffinity(0, {harness_core})
    with TemporaryDirectory(prefix="axione-profile-") as tmp:
        work = Path(tmp)
        port = targets.free_port()
        upstream, _ = start_upstream(port, work, harness_core)
        target = targets.axione(
            port, SHAPES, work, core=gateway_core, python=args.python, source=args.axione_src
        )
        try:
            target.start(work)
            chat = request_for(target, CHAT, stream=False)
            targets.wait_first_200(lambda: load.fetch(chat, timeout=2)[0], target, timeout=60)
            request = request_for(target, STREAM20 if args.stream else CHAT, stream=args.stream)
            load.run_load(request, args.connections, 2, core=harness_core)  # warm up
            assert target.process is not None
            formats = [("raw", args.output)]
            if args.speedscope:
                formats.append(("speedscope", args.speedscope))
            recorders = []
            for fmt, path in formats:
                cmd = [
                    pyspy,
                    "record",
                    "--pid",
                    str(target.process.pid),
                    "--duration",
                    str(int(args.duration)),
                    "--rate",
                    str(args.rate),
                    "--format",
                    fmt,
                    "--output",
                    str(path),
                ]
                if args.native:
                    cmd.append("--native")
                if not args.blocking:
                    cmd.append("--nonblocking")
                recorders.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                )
            time.sleep(0.5)
            result: dict[str, load.LoadResult] = {}
            loader = threading.Thread(
                target=lambda: result.setdefault(
                    "r", load.run_load(request, args.connections, args.duration, core=harness_core)
                )
            )
            loader.start()
            for rec in recorders:
                _, err = rec.communicate(timeout=args.duration + 60)
                if rec.returncode != 0:
                    print(err.decode(errors="replace")[-2000:], file=sys.stderr)
            loader.join()
        finally:
            target.stop()
            upstream.terminate()
            upstream.wait(timeout=10)
    r = result.get("r")
    if r is not None:
        print(
            f"load during the profile: {r.rps:,.0f} req/s at {args.connections} connections, "
            f"p50 {r.p50_ms:.2f} ms, errors {r.errors} (py-spy slows the process it samples)"
        )
    print(f"folded stacks: {args.output}")
    print(summarise(args.output, args.top), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
