"""Load generation and process measurement for the benchmark.

- `run_wrk`: wrk (Debian's package) with a generated Lua script that POSTs a
  body and prints its summary and latency percentiles as one JSON line.
- `run_pydriver`: the fallback when wrk is missing, a keep-alive HTTP/1.1
  client on raw asyncio sockets, run in its own process (this file's CLI) so
  it can be pinned to a core and its CPU counted.
- `ttfe`: time to the first SSE event of a stream, one request at a time.
- `ProcTree`: CPU ticks and RSS of a process and its children, from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- /proc -------------------------------------------------------------------
class ProcTree:
    """A process and everything it spawned: CPU seconds and resident memory."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                    todo.extend(int(c) for c in children)
            except OSError:
                continue
        return out

    # utime, stime (stat fields 14, 15, counted after the command's parenthesis);
    # a subclass adds cutime, cstime (what reaped children used).
    _TIMES = slice(11, 13)

    def cpu_seconds(self) -> float:
        """utime + stime of every live process in the tree."""
        ticks = 0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += sum(int(f) for f in fields[self._TIMES])
        return ticks / CLK_TCK

    def rss_mb(self) -> float:
        """VmRSS summed over the tree, in MiB."""
        kb = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        kb += int(line.split()[1])
                        break
            except OSError:
                continue
        return kb / 1024


# -- requests ----------------------------------------------------------------
@dataclass
class Request:
    """One POST the load tools send over and over."""

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    @property
    def path(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def raw(self) -> bytes:
        host, port = self.host_port
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Content-Type: application/json",
            f"Content-Length: {len(self.body)}",
        ]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def _lua_string(value: str | bytes) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


_LUA_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk_script(request: Request) -> str:
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {_lua_string(request.body)}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in request.headers.items()
    ]
    return "\n".join(lines) + "\n" + _LUA_DONE


@dataclass
class LoadResult:
    """What one load run measured."""

    tool: str
    connections: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    driver_cpu_s: float
    # Of `errors`: the answers that came with a status of 400 or more (the rest
    # are connection errors and timeouts). `requests - non_2xx` were answered 2xx.
    non_2xx: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None:
        return cmd
    return ["taskset", "-c", str(core), *cmd]


def _wait_rusage(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for a child and return its user+system CPU seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pid, _status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(_status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            _pid, _status, usage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.01)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    request: Request, connections: int, duration_s: float, *, core: int | None = None
) -> LoadResult:
    """wrk with one thread (the driver gets one core), `connections` keep-alive connections."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(request))
    try:
        cmd = _pinned(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(duration_s))}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                request.url,
            ],
            core,
        )
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            cpu = _wait_rusage(proc, duration_s + 30)
            out.seek(0)
            text = out.read().decode(errors="replace")
    finally:
        os.unlink(script.name)
    line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary (exit {proc.returncode}):\n{text[-2000:]}")
    data = json.loads(line[len("WRKJSON ") :])
    seconds = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        tool="wrk",
        connections=connections,
        duration_s=seconds,
        requests=data["requests"],
        errors=errors,
        rps=data["requests"] / seconds if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        driver_cpu_s=cpu,
        non_2xx=data["status"],
    )


def run_pydriver(
    request: Request, connections: int, duration_s: float, *, core: int | None = None
) -> LoadResult:
    """This file's asyncio driver in its own process, pinned like wrk would be."""
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as spec:
        spec.write(
            json.dumps(
                {"url": request.url, "body": request.body.decode(), "headers": request.headers}
            ).encode()
        )
    try:
        cmd = _pinned(
            [
                sys.executable,
                __file__,
                "--spec",
                spec.name,
                "--connections",
                str(connections),
                "--duration",
                str(duration_s),
            ],
            core,
        )
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=duration_s + 60)
    finally:
        os.unlink(spec.name)
    if proc.returncode != 0:
        raise RuntimeError(f"python driver failed: {err.decode()[-2000:]}")
    data = json.loads(out.decode().strip().splitlines()[-1])
    return LoadResult(tool="python", **data)


def run_load(
    request: Request,
    connections: int,
    duration_s: float,
    *,
    core: int | None = None,
    tool: str = "auto",
) -> LoadResult:
    if tool == "wrk" or (tool == "auto" and have_wrk()):
        return run_wrk(request, connections, duration_s, core=core)
    return run_pydriver(request, connections, duration_s, core=core)


# -- the fallback driver -----------------------------------------------------
class _Conn:
    """One keep-alive connection that reads whole responses, chunked or not."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def roundtrip(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length >= 0:
            await self.reader.readexactly(length)
        else:
            raise ConnectionError("response without length")
        return status


async def _drive(request: Request, connections: int, duration_s: float) -> dict[str, Any]:
    raw = request.raw()
    host, port = request.host_port
    latencies: list[float] = []
    errors = 0
    non_2xx = 0
    deadline = 0.0

    async def worker() -> None:
        nonlocal errors, non_2xx
        conn: _Conn | None = None
        while time.perf_counter() < deadline:
            try:
                if conn is None:
                    conn = _Conn(*await asyncio.open_connection(host, port))
                started = time.perf_counter()
                status = await conn.roundtrip(raw)
                latencies.append(time.perf_counter() - started)
                if status >= 400:
                    errors += 1
                    non_2xx += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                conn = None
        if conn is not None:
            conn.writer.close()

    started = time.perf_counter()
    deadline = started + duration_s
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "connections": connections,
        "duration_s": elapsed,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "mean_ms": (statistics.fmean(latencies) * 1000) if latencies else 0.0,
        "max_ms": (latencies[-1] * 1000) if latencies else 0.0,
        "driver_cpu_s": usage.ru_utime + usage.ru_stime,
        "non_2xx": non_2xx,
    }


# -- time to first event -----------------------------------------------------
CHAT_END = b"[DONE]"
MESSAGES_END = b"event: message_stop"  # Anthropic's streams end with this event


def ttfe(
    request: Request, samples: int, *, timeout: float = 10.0, end: bytes = CHAT_END
) -> dict[str, Any]:
    """Send `samples` streaming requests one after another on fresh connections;
    time from the last byte sent to the first `data:` event, and to the end (`end`
    seen and the last chunk in: `[DONE]` for chat, `message_stop` for Messages)."""
    raw = request.raw()
    host, port = request.host_port
    firsts: list[float] = []
    totals: list[float] = []
    failures = 0
    for _ in range(samples):
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buf = b""
                sock.sendall(raw)
                started = time.perf_counter()
                first = None
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    buf += data
                    if first is None:
                        head_end = buf.find(b"\r\n\r\n")
                        if head_end >= 0 and buf.find(b"data:", head_end) >= 0:
                            first = time.perf_counter() - started
                    if end in buf and buf.endswith(b"0\r\n\r\n"):
                        break
                total = time.perf_counter() - started
            if first is None or not buf.startswith(b"HTTP/1.1 200"):
                failures += 1
                continue
            firsts.append(first * 1000)
            totals.append(total * 1000)
        except OSError:
            failures += 1
    firsts.sort()
    totals.sort()

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else 0.0

    return {
        "samples": len(firsts),
        "failures": failures,
        "p50_ms": pct(firsts, 50),
        "p90_ms": pct(firsts, 90),
        "p99_ms": pct(firsts, 99),
        "min_ms": firsts[0] if firsts else 0.0,
        "stream_p50_ms": pct(totals, 50),
        "firsts_ms": firsts,
        "totals_ms": totals,
    }


def fetch(request: Request, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection, the whole answer (for checks and polling)."""
    host, port = request.host_port
    raw = request.raw().replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(raw)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head[9:12]) if len(head) >= 12 else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(body: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(body[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(body[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2
    return b"".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the fallback load driver (asyncio, raw sockets)")
    parser.add_argument("--spec", required=True, help="JSON file: url, body, headers")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10)
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    request = Request(spec["url"], spec["body"].encode(), spec.get("headers") or {})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_drive(request, args.connections, args.duration))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
