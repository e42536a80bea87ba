"""The gateways under test: how to configure, start, address and stop each one.

Every target is reached at `base_url` + `/chat/completions` with the model
names of the benchmark's stream shapes (see fake_upstream.py), and all of them
route to the same fake upstream. Those that serve Anthropic's Messages API
(`direct` and Axione) are reached at `base_url` + `/messages` too, with
`messages_headers`; Axione passes those requests through to an `anthropic`
provider on the same fake upstream. Axione alone is reached at `base_url` +
`/responses` (OpenAI's Responses API, `responses = True`): its `openai-compatible`
provider is set to `responses = "translate"`, so a Responses request becomes a
chat completion to the same fake upstream as the chat scenarios'.

Axione runs on one of several storage stacks (`STACKS`): `memory` (memory
counters, the key in the config file, the ledger in SQLite: what a single host
runs, and the default) or `redis-postgres` (counters on Redis, keys and the
ledger in PostgreSQL: what replicas behind a load balancer share); the two
halves apart, `redis-sqlite` (Redis counters only) and `memory-postgres`
(PostgreSQL keys and ledger only), show which part costs what. The shared
stores live in a Redis database and PostgreSQL schemas of the benchmark's own
(`SharedStores`), emptied before and after a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from load import ProcTree

AXIONE_KEY = "sk-axione-bench-0000000000000000"
LITELLM_MASTER_KEY = "sk-litellm-bench"
UPSTREAM_KEY = "sk-fake-upstream"
ANTHROPIC_VERSION = "2023-06-01"

# Storage stacks, as (counters on Redis, keys and ledger in PostgreSQL): `memory`
# is what the `axione` target has always run on.
STACKS: dict[str, tuple[bool, bool]] = {
    "memory": (False, False),
    "redis-postgres": (True, True),
    "redis-sqlite": (True, False),
    "memory-postgres": (False, True),
}
# A Redis database and a PostgreSQL schema no test uses (the tests take Redis
# databases 11-14, the soak 9, bench_quota.py 12; their schemas are `axione_t_*`).
BENCH_REDIS = "redis://127.0.0.1:6379/10"
BENCH_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
BENCH_SCHEMA = "axione_bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None:
        return cmd
    return ["taskset", "-c", str(core), *cmd]


@dataclass
class Target:
    """One gateway (or the upstream itself, for `direct`)."""

    name: str
    base_url: str
    model_prefix: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    notes: str = ""
    # Anthropic Messages at `base_url` + `/messages`: None when the target does not serve it.
    messages_headers: dict[str, str] | None = None
    messages_model_prefix: str = ""
    # OpenAI Responses at `base_url` + `/responses`, with `headers` and `model()`.
    responses: bool = False
    # Axione's storage stack (`STACKS`), and the URI of its ledger (sqlite:/// or
    # postgresql://): the harness counts the rows there against the answers it got.
    stack: str | None = None
    ledger_uri: str | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    started_at: float = 0.0

    def model(self, shape: str) -> str:
        return self.model_prefix + shape

    def messages_model(self, shape: str) -> str:
        return self.messages_model_prefix + shape

    def start(self, log_dir: Path) -> None:
        if self.command is None:
            return
        self.log_path = log_dir / f"{self.name}.log"
        log = self.log_path.open("wb")
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()

    def tree(self) -> ProcTree | None:
        return ProcTree(self.process.pid) if self.process is not None else None

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM the process we started (then its leftover children), SIGKILL if slow."""
        proc = self.process
        if proc is None:
            return
        tree = ProcTree(proc.pid).pids()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for pid in tree[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process = None


def direct(upstream_port: int) -> Target:
    return Target(
        name="direct",
        base_url=f"http://127.0.0.1:{upstream_port}/v1",
        headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
        messages_headers={"x-api-key": UPSTREAM_KEY, "anthropic-version": ANTHROPIC_VERSION},
        notes="the fake upstream itself: the harness's own ceiling",
    )


def axione(
    upstream_port: int,
    shapes: list[str],
    work: Path,
    *,
    core: int | None,
    python: str,
    source: Path | None = None,
    transport: str | None = None,
    name: str | None = None,
    messages_shapes: list[str] | None = None,
    stack: str | None = None,
    stores: SharedStores | None = None,
) -> Target:
    """Axione under `python`; `source` (a tree holding axione_asgi/) goes first on
    PYTHONPATH, to measure another checkout than the installed one; `transport`
    names the provider's upstream transport (`httpx`, `aiohttp`), when set;
    `messages_shapes`, when set, are the models of an `anthropic` provider on the
    same fake upstream, which Messages requests are passed through to. Responses
    requests (`/responses`) are translated to chat completions by the
    `openai-compatible` provider (`responses = "translate"`), unless `source` is a
    tree from before the Responses ingress (its strict config knows no `responses`).

    `stack` (one of `STACKS`, default `memory`) is where its state lives; for
    the others, `stores` gives the Redis database and a PostgreSQL schema of
    this target's own; with keys in PostgreSQL the key is created there
    (`axione keys create`) instead of declared in the config."""
    port = free_port()
    env = {"PYTHONPATH": str(source)} if source is not None else {}
    name = name or (f"axione-{transport}" if transport else "axione")
    responses = source is None or (source / "axione_asgi/ingress/openai_responses.py").exists()
    config = work / f"{name}.toml"
    if stack is not None and stack not in STACKS:
        raise ValueError(f"unknown storage stack {stack!r}: one of {', '.join(STACKS)}")
    on_redis, on_postgres = STACKS[stack or "memory"]
    if (on_redis or on_postgres) and stores is None:
        raise ValueError(f"the {stack} stack needs the shared stores")
    # The default ledger, as deployed. The memory ledger keeps every record (it
    # is for tests): over a long run it grew the heap by ~0.3 KB a request, and
    # the CPU per request of later rounds with it.
    ledger = f"sqlite:///{work / f'{name}-ledger.db'}"
    storage = {"keys": "memory://", "ledger": ledger, "counters": "memory://"}
    notes = "key auth + memory quota counters" if not on_redis else "key auth"
    if on_redis:
        assert stores is not None
        storage["counters"] = stores.redis
        notes += f" + Redis counters {stores.redis}"
    if on_postgres:
        assert stores is not None
        keys_uri = stores.postgres_uri(name)
        spill = work / f"{name}-ledger.spill.jsonl"
        ledger = f"{keys_uri}&spill_path={quote(str(spill), safe='/')}"
        storage["keys"], storage["ledger"] = keys_uri, ledger
        notes += f", key and ledger in PostgreSQL (schema {stores.schema_of(name)})"
    else:
        notes += f", ledger {ledger}"
    static_key = not on_postgres
    config.write_text(
        _axione_toml(
            upstream_port,
            shapes,
            storage,
            transport,
            messages_shapes,
            responses,
            static_key=static_key,
        )
    )
    secret = AXIONE_KEY
    if not static_key:
        secret = create_key(python, config, work, env)
    command = [
        python,
        "-m",
        "axione_asgi.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return Target(
        name=name,
        base_url=f"http://127.0.0.1:{port}/api/v1",
        model_prefix="openai/",
        headers={"Authorization": f"Bearer {secret}"},
        messages_headers=(
            {"x-api-key": secret, "anthropic-version": ANTHROPIC_VERSION}
            if messages_shapes
            else None
        ),
        messages_model_prefix="anthropic/",
        responses=responses,
        command=pinned(command, core),
        env=env,
        # `python -m` puts the working folder first on sys.path: run from the
        # run's own folder, so the axione_asgi measured is `source` or the installed one.
        cwd=str(work),
        notes=notes + (f", axione_asgi from {source}" if source is not None else ""),
        stack=stack,
        ledger_uri=ledger,
    )


def create_key(python: str, config: Path, work: Path, env: dict[str, str]) -> str:
    """`axione keys create` in the config's key store (tier 5): the new key's secret."""
    command = [python, "-m", "axione_asgi.cli", "keys", "create", "--config", str(config)]
    done = subprocess.run(
        [*command, "--name", "bench", "--tier", "5"],
        capture_output=True,
        text=True,
        cwd=str(work),
        env={**os.environ, **env},
        timeout=60,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"axione keys create failed: {done.stdout}{done.stderr}")
    return lines[-1].strip()


def _axione_toml(
    upstream_port: int,
    shapes: list[str],
    storage: dict[str, str],
    transport: str | None = None,
    messages_shapes: list[str] | None = None,
    responses: bool = True,
    *,
    static_key: bool = True,
) -> str:
    models = ", ".join(f'"{s}" = "{s}"' for s in shapes)
    # Responses -> a chat completion upstream (the default of `openai-compatible`, written out).
    responses_line = 'responses = "translate"\n' if responses else ""
    transport_line = f'transport = "{transport}"\n' if transport else ""
    anthropic = ""
    if messages_shapes:
        # The Messages pass-through: `kind = "anthropic"` posts to {base_url}/v1/messages.
        claude = ", ".join(f'"{s}" = "{s}"' for s in messages_shapes)
        anthropic = f"""
[providers.anthropic]
kind = "anthropic"
base_url = "http://127.0.0.1:{upstream_port}"
api_key = "{UPSTREAM_KEY}"
models = {{ {claude} }}
{transport_line}"""
    digest = hashlib.sha256(AXIONE_KEY.encode()).hexdigest()
    # The key in the config file (memory stack), else one made in the key store.
    key = (
        f"""
[[keys]]
name = "bench"
key_sha256 = "{digest}"
tier = 5
"""
        if static_key
        else ""
    )
    return f"""\
[storage]
keys = "{storage["keys"]}"
ledger = "{storage["ledger"]}"
counters = "{storage["counters"]}"

[providers.openai]
kind = "openai-compatible"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "{UPSTREAM_KEY}"
models = {{ {models} }}
{responses_line}{transport_line}{anthropic}
[cache]
enabled = true                  # only temperature-0 requests: the cache_hit scenario
{key}
# Limits no run reaches: a refusal (429) would count as an error.
[tiers.5]
requests_per_day = 1000000000
tokens_per_day = 1000000000000
"""


class SharedStores:
    """The benchmark's own Redis database and PostgreSQL schemas (one per target).

    `reset()` empties them (the Redis database flushed, each schema dropped and
    made again), before a run and after it; `ledger_rows()` counts a ledger's
    rows by session and status.
    """

    def __init__(self, redis: str = BENCH_REDIS, postgres: str = BENCH_POSTGRES) -> None:
        self.redis = redis
        self.redis_port = urlsplit(redis).port or 6379
        self.postgres = postgres
        self.schemas: set[str] = set()
        # What a new redis-py connection writes before its first command (HELLO,
        # CLIENT ..., SELECT): measured by `handshake_writes()`.
        self.handshake = 0

    @staticmethod
    def schema_of(name: str) -> str:
        return BENCH_SCHEMA + "_" + "".join(c if c.isalnum() else "_" for c in name.lower())

    def postgres_uri(self, name: str) -> str:
        """The URI of `name`'s own schema, made empty now."""
        schema = self.schema_of(name)
        self.schemas.add(schema)
        self._reset_schema(schema)
        sep = "&" if "?" in self.postgres else "?"
        return f"{self.postgres}{sep}options={quote(f'-csearch_path={schema}', safe='')}"

    def _reset_schema(self, schema: str, *, create: bool = True) -> None:
        import psycopg

        with psycopg.connect(self.postgres, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            if create:
                conn.execute(f'CREATE SCHEMA "{schema}"')

    def flush_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis, socket_timeout=5)
        try:
            client.flushdb()
        finally:
            client.close()

    def check(self) -> None:
        """Both servers answer (a clear error before any target starts, if not)."""
        import psycopg
        import redis

        client = redis.Redis.from_url(self.redis, socket_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
        with psycopg.connect(self.postgres, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT 1")

    def handshake_writes(self) -> int:
        """The TCP data segments a new redis-py connection (this Python's) sends before
        its first command: each one a round trip of its own, awaited in turn."""
        import redis

        client = redis.Redis.from_url(self.redis, socket_timeout=5)
        try:
            conn = client.connection_pool.get_connection()  # connects: the handshake
            try:
                mine = redis_segments([os.getpid()], self.redis_port) or {}
            finally:
                client.connection_pool.release(conn)
        finally:
            client.close()
        self.handshake = sum(mine.values())
        return self.handshake

    def command_calls(self) -> dict[str, int]:
        """Calls of each command the Redis server has run (`INFO commandstats`): the
        whole server's, this benchmark's database or not; `info` itself left out."""
        import redis

        client = redis.Redis.from_url(self.redis, socket_timeout=5)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        out = {}
        for name, value in stats.items():
            command = name.removeprefix("cmdstat_")
            if command != "info" and isinstance(value, dict):
                out[command] = int(value.get("calls", 0))
        return out

    def cleanup(self) -> None:
        """The Redis database flushed, every schema of this run dropped."""
        errors = []
        try:
            self.flush_redis()
        except Exception as exc:
            errors.append(f"redis: {exc}")
        for schema in sorted(self.schemas):
            try:
                self._reset_schema(schema, create=False)
            except Exception as exc:
                errors.append(f"{schema}: {exc}")
        if errors:
            print(f"  shared stores not all cleaned: {'; '.join(errors)}", file=sys.stderr)

    def versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        try:
            import redis

            client = redis.Redis.from_url(self.redis, socket_timeout=5)
            try:
                out["redis-server"] = str(client.info("server").get("redis_version", "?"))
            finally:
                client.close()
            out["redis-py"] = redis.__version__
        except Exception as exc:
            out["redis-server"] = f"? ({exc})"
        try:
            import psycopg

            with psycopg.connect(self.postgres, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            out["postgresql"] = str(row[0]) if row else "?"
            out["psycopg"] = psycopg.__version__
        except Exception as exc:
            out["postgresql"] = f"? ({exc})"
        return out


def ledger_rows(uri: str) -> dict[tuple[str | None, int], int]:
    """A ledger's rows counted by (session id, status): SQLite or PostgreSQL."""
    sql = "SELECT session_id, status, count(*) FROM usage_ledger GROUP BY session_id, status"
    rows: list[Any]
    if uri.startswith("sqlite:///"):
        import sqlite3

        path = uri.removeprefix("sqlite:///")
        if not Path(path).exists():
            return {}
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise
        finally:
            conn.close()
    else:
        import psycopg
        from psycopg import errors

        # Axione's own `spill_path` (and pool) parameters are not libpq's.
        conninfo = "&".join(
            part for part in uri.split("&") if not part.startswith(("spill_path=", "pool_"))
        )
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            try:
                rows = conn.execute(sql).fetchall()
            except errors.UndefinedTable:
                return {}
    return {(r[0], int(r[1])): int(r[2]) for r in rows}


def redis_segments(pids: list[int], port: int = 6379) -> dict[str, int] | None:
    """TCP data segments the processes `pids` have sent on each open connection to
    Redis (`ss -ti`'s `data_segs_out`, by local address): one a round trip, for a
    client that writes each command, pipeline or script call whole with TCP_NODELAY
    (redis-py does, and asyncio sets TCP_NODELAY). None when `ss` is missing."""
    if shutil.which("ss") is None:
        return None
    listed = subprocess.run(
        ["ss", "-tinpH", "state", "established", f"( dport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    wanted = {f"pid={pid}," for pid in pids}
    out: dict[str, int] = {}
    local: str | None = None
    for line in listed.splitlines():
        if not line.startswith((" ", "\t")):
            # `0 0 127.0.0.1:41234 127.0.0.1:6379 users:(("python",pid=7,fd=9))`
            fields = line.split()
            local = fields[2] if any(w in line for w in wanted) and len(fields) > 2 else None
            continue
        if local is not None:
            for part in line.split():
                if part.startswith("data_segs_out:"):
                    out[local] = int(part.split(":", 1)[1])
    return out


class ServerTree(ProcTree):
    """A server and its children, counting the children it has reaped too: a
    PostgreSQL backend that exits mid-run (another client's) leaves its CPU in
    the postmaster's cutime/cstime instead of taking it out of the sum."""

    _TIMES = slice(11, 15)  # utime, stime, cutime, cstime


def store_servers() -> list[ProcTree]:
    """The machine's Redis and PostgreSQL servers (each top process with its children),
    for their CPU during a run: not the gateway's, shared with whatever else uses them."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if comm.startswith(("redis-server", "postgres")):
            found[int(entry.name)] = stat[stat.rindex(")") + 2 :].split()[1]
    # Top processes only: a postgres backend's parent is the postmaster, counted with it.
    return [ServerTree(pid) for pid, ppid in found.items() if int(ppid) not in found]


def litellm(
    upstream_port: int, shapes: list[str], work: Path, *, core: int | None, venv: Path
) -> Target:
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        raise FileNotFoundError(
            f"{exe} not found: python -m venv {venv} && "
            f"{venv}/bin/pip install 'litellm[proxy]==1.108.7'"
        )
    port = free_port()
    entries = "".join(
        f"""  - model_name: {s}
    litellm_params:
      model: openai/{s}
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: {UPSTREAM_KEY}
"""
        for s in shapes
    )
    config = work / "litellm.yaml"
    config.write_text(
        f"model_list:\n{entries}general_settings:\n  master_key: {LITELLM_MASTER_KEY}\n"
    )
    command = [
        str(exe),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    return Target(
        name="litellm",
        base_url=f"http://127.0.0.1:{port}/v1",
        headers={"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
        command=pinned(command, core),
        # No network here: use the cost map shipped in the package.
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        notes="LiteLLM proxy, master key only, no DB, default logging",
    )


def portkey(upstream_port: int, *, core: int | None, directory: Path) -> Target:
    script = directory / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not script.exists():
        raise FileNotFoundError(
            f"{script} not found: see docs/benchmarks.md for the npm install of "
            "@portkey-ai/gateway@1.15.2 with @hono/node-server 1.13.8"
        )
    node = shutil.which("node")
    if node is None:
        raise FileNotFoundError("node not found")
    port = free_port()
    return Target(
        name="portkey",
        base_url=f"http://127.0.0.1:{port}/v1",
        headers={
            "Authorization": f"Bearer {UPSTREAM_KEY}",
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"http://127.0.0.1:{upstream_port}/v1",
        },
        command=pinned([node, str(script), f"--port={port}", "--headless"], core),
        cwd=str(directory),
        notes="Portkey gateway (Node), no auth, no limits",
    )


def versions(litellm_venv: Path, portkey_dir: Path) -> dict[str, str]:
    """What ran, for the results file."""
    out: dict[str, str] = {"python": sys.version.split()[0]}
    repo = Path(__file__).resolve().parent.parent
    if (repo / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "axione_asgi"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        out["repo HEAD"] = head + (" (axione_asgi/ modified)" if dirty else "")
    try:
        from importlib.metadata import version

        out["axione-asgi"] = version("axione-asgi")
        out["uvicorn"] = version("uvicorn")
        out["starlette"] = version("starlette")
        out["httpx"] = version("httpx")
        out["pydantic"] = version("pydantic")
    except Exception:
        pass
    for name, cmd in {
        "wrk": ["wrk", "--version"],
        "node": ["node", "--version"],
    }.items():
        if shutil.which(cmd[0]):
            res = subprocess.run(cmd, capture_output=True, text=True)
            text = (res.stdout or res.stderr).strip().splitlines()
            out[name] = text[0] if text else "?"
    meta = litellm_venv / "bin" / "python"
    if meta.exists():
        res = subprocess.run(
            [str(meta), "-c", "from importlib.metadata import version; print(version('litellm'))"],
            capture_output=True,
            text=True,
        )
        out["litellm"] = res.stdout.strip() or "?"
    for pkg in ("@portkey-ai/gateway", "@hono/node-server"):
        manifest = portkey_dir / "node_modules" / pkg / "package.json"
        if manifest.exists():
            out[pkg] = json.loads(manifest.read_text()).get("version", "?")
    return out


def compile_bytecode(python: str, extra: list[Path]) -> list[str]:
    """Compile `python`'s installed packages (and `extra` source trees) to bytecode.

    `pip install` does this at install time, so a deployed gateway starts from
    .pyc files; an editable install, `uv pip install` or PYTHONDONTWRITEBYTECODE
    leave none, and every start then compiles its imports again (it doubled
    Axione's start-up in one measurement). Returns the folders compiled.
    """
    found = subprocess.run(
        [
            python,
            "-c",
            "import json, sysconfig, importlib.util as u; "
            "p = sysconfig.get_paths(); s = u.find_spec('axione_asgi'); "
            "print(json.dumps([p['purelib'], p['platlib'], "
            "*(s.submodule_search_locations or [] if s else [])]))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",  # not the current folder, which `-c` would put on sys.path
    )
    folders = sorted({*json.loads(found.stdout), *(str(e) for e in extra)})
    folders = [f for f in folders if Path(f).is_dir()]
    if folders:
        subprocess.run(
            [python, "-m", "compileall", "-q", "-j", "0", *folders],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,  # a file that does not compile is the package's own concern
        )
    return folders


def wait_first_200(check: object, target: Target, timeout: float) -> float:
    """Seconds from the process start until `check()` gives 200."""
    started = target.started_at or time.perf_counter()
    deadline = started + timeout
    first_answer = None
    while time.perf_counter() < deadline:
        if not target.alive():
            raise RuntimeError(f"{target.name} exited at start-up:\n{target.log_tail()}")
        try:
            status = check()  # type: ignore[operator]
        except OSError:
            status = 0
        if status == 200:
            return time.perf_counter() - started
        if status:
            # It listens but refuses: give it a few seconds, not the whole timeout.
            first_answer = first_answer or time.perf_counter()
            if time.perf_counter() - first_answer > 5:
                raise RuntimeError(
                    f"{target.name} answers {status} instead of 200:\n{target.log_tail()}"
                )
        time.sleep(0.01)
    raise TimeoutError(f"{target.name} gave no 200 within {timeout} s:\n{target.log_tail()}")
