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

from load import ProcTree

AXIONE_KEY = "sk-axione-bench-0000000000000000"
LITELLM_MASTER_KEY = "sk-litellm-bench"
UPSTREAM_KEY = "sk-fake-upstream"
ANTHROPIC_VERSION = "2023-06-01"


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
) -> Target:
    """Axione under `python`; `source` (a tree holding axione_asgi/) goes first on
    PYTHONPATH, to measure another checkout than the installed one; `transport`
    names the provider's upstream transport (`httpx`, `aiohttp`), when set;
    `messages_shapes`, when set, are the models of an `anthropic` provider on the
    same fake upstream, which Messages requests are passed through to. Responses
    requests (`/responses`) are translated to chat completions by the
    `openai-compatible` provider (`responses = "translate"`), unless `source` is a
    tree from before the Responses ingress (its strict config knows no `responses`)."""
    port = free_port()
    env = {"PYTHONPATH": str(source)} if source is not None else {}
    name = name or (f"axione-{transport}" if transport else "axione")
    # The default ledger, as deployed. The memory ledger keeps every record (it
    # is for tests): over a long run it grew the heap by ~0.3 KB a request, and
    # the CPU per request of later rounds with it.
    ledger = f"sqlite:///{work / f'{name}-ledger.db'}"
    responses = source is None or (source / "axione_asgi/ingress/openai_responses.py").exists()
    config = work / f"{name}.toml"
    config.write_text(
        _axione_toml(upstream_port, shapes, ledger, transport, messages_shapes, responses)
    )
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
        headers={"Authorization": f"Bearer {AXIONE_KEY}"},
        messages_headers=(
            {"x-api-key": AXIONE_KEY, "anthropic-version": ANTHROPIC_VERSION}
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
        notes=f"key auth + memory quota counters, ledger {ledger}"
        + (f", axione_asgi from {source}" if source is not None else ""),
    )


def _axione_toml(
    upstream_port: int,
    shapes: list[str],
    ledger: str,
    transport: str | None = None,
    messages_shapes: list[str] | None = None,
    responses: bool = True,
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
    return f"""\
[storage]
keys = "memory://"
ledger = "{ledger}"
counters = "memory://"

[providers.openai]
kind = "openai-compatible"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "{UPSTREAM_KEY}"
models = {{ {models} }}
{responses_line}{transport_line}{anthropic}
[cache]
enabled = true                  # only temperature-0 requests: the cache_hit scenario

[[keys]]
name = "bench"
key_sha256 = "{digest}"
tier = 5

[tiers.5]
requests_per_day = 1000000000
tokens_per_day = 1000000000000
"""


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
