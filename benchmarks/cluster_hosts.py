"""Hosts for the multi-host cluster test: network namespaces on a bridge, and what runs on them.

Two (or more) Linux network namespaces play two hosts, joined to a bridge in
the root namespace by veth pairs. The shared services run in the root
namespace, bound to the bridge's address: a Redis and a PostgreSQL of the
test's own (the machine's own ones on 127.0.0.1 are never touched; a
namespace cannot reach them anyway), the fake upstream, and HAProxy on
127.0.0.1 in front of the hosts. Each host runs `axione serve` inside its
namespace.

Everything this module makes is named after the process that made it
(`axcl<pid>...` links and namespaces, `/tmp/axione-cluster-<pid>-*` folders),
so a run that crashed leaves nothing in the way of the next one:
`clean_leftovers()` removes what belongs to processes that are gone, and
ends the processes such a run started (by the pids it recorded, each checked
to carry that run's marker in its environment) and nothing else.

Needs root (`ip netns`), `haproxy`, `redis-server`, the PostgreSQL server
binaries and a `postgres` user (`runuser -u postgres --` runs initdb and
pg_ctl as that user).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TAG = "axcl"  # links and namespaces: axcl<pid>b, axcl<pid>v<n>, axcl<pid>h<n>
TMP_PREFIX = "axione-cluster-"  # folders: /tmp/axione-cluster-<pid>-<random>
MARKER_ENV = "AXIONE_CLUSTER_RUN"  # in the environment of every process a run starts
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_NAME = re.compile(rf"^{TAG}(\d+)(b|v\d+|h\d+)$")


class HostError(RuntimeError):
    """A piece of the cluster did not start or answer in time."""


# -- small helpers --------------------------------------------------------------------
def sh(*argv: str, check: bool = True, timeout: float = 60) -> str:
    """Run a command; its stdout (stderr too in the error when it fails)."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise HostError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started_by(pid: int, marker: str, folder: Path) -> bool:
    """Whether `pid` is a process of the run with this marker and folder.

    Its environment holds the marker, or (Redis and PostgreSQL rewrite theirs
    with their process titles) its working folder is inside the run's folder.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    if f"{MARKER_ENV}={marker}".encode() in environ.split(b"\0"):
        return True
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == str(folder) or cwd.startswith(f"{folder}/")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(host: str, port: int, timeout: float, proc: Proc | None = None) -> None:
    """Until `host:port` accepts a connection (or `proc` died, or `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise HostError(f"{proc.name} exited ({proc.returncode()}):\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise HostError(f"{host}:{port} did not accept connections within {timeout:.0f} s")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian's layout), if any."""
    versions = [Path(p).parent.parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = sorted(versions, key=lambda v: int(v.name) if v.name.isdigit() else 0)
    return found[-1] / "bin" if found else None


def missing_requirements() -> list[str]:
    """Why the cluster cannot run on this machine (empty: it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("not root (network namespaces need it)")
    for tool in ("ip", "haproxy", "redis-server", "runuser"):
        if shutil.which(tool) is None:
            missing.append(f"no `{tool}`")
    if postgres_bin() is None:
        missing.append("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    return missing


# -- processes --------------------------------------------------------------------------
@dataclass
class Proc:
    """One process of the cluster, in its own session, its output in a log file."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    netns: str | None = None
    popen: subprocess.Popen[bytes] | None = None
    registry: Path | None = None  # the run's pid list, for clean_leftovers

    def start(self) -> Proc:
        argv = ["ip", "netns", "exec", self.netns, *self.argv] if self.netns else self.argv
        with open(self.log, "ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                # Its own session: a Ctrl-C in the terminal reaches the runner
                # only, which then stops everything in order.
                start_new_session=True,
            )
        if self.registry is not None:
            with open(self.registry, "a") as reg:
                reg.write(f"{self.popen.pid} {self.name}\n")
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def signal_group(self, sig: int) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """`sig` to its process group, then SIGKILL after `timeout`; reaps it."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal_group(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(5)
        # Children of its group still around (a worker that outlived its parent).
        self.signal_group(signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# -- the run's folder and leftovers -----------------------------------------------------
class RunDir:
    """The run's temporary folder: configs, data, logs, and the list of pids it started."""

    def __init__(self) -> None:
        self.marker = f"{os.getpid()}-{int(time.time())}"
        self.path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        # PostgreSQL runs as `postgres`: it must reach its folder below this one.
        self.path.chmod(0o755)
        (self.path / "marker").write_text(self.marker)
        self.registry = self.path / "pids"
        self.registry.touch()

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process of this run: ours, its marker, no proxies."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        }
        env[MARKER_ENV] = self.marker
        env.update(extra or {})
        return env

    def proc(self, name: str, argv: Sequence[str], **kw: Any) -> Proc:
        kw.setdefault("env", self.env())
        return Proc(name, list(argv), self.path / f"{name}.log", registry=self.registry, **kw)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _stop_leftover_postgres(folder: Path) -> str | None:
    """Stop the PostgreSQL a dead run left in `folder` (an immediate shutdown)."""
    pid_file = folder / "pg" / "data" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _started_by(pid, "", folder):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)  # what `pg_ctl stop -m immediate` sends
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return f"postgres {pid}"


def clean_leftovers() -> list[str]:
    """Remove what runs whose process is gone left behind; what was removed."""
    removed: list[str] = []
    for folder in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*-*"):
        match = re.match(rf"{TMP_PREFIX}(\d+)-", folder.name)
        if not match or _alive(int(match.group(1))):
            continue
        marker = (folder / "marker").read_text().strip() if (folder / "marker").exists() else ""
        registry = folder / "pids"
        if marker and registry.exists():
            for line in registry.read_text().splitlines():
                pid = int(line.split()[0])
                if _started_by(pid, marker, folder):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    removed.append(f"process {pid} ({line.split(maxsplit=1)[-1]})")
        stopped = _stop_leftover_postgres(folder)
        if stopped:
            removed.append(stopped)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    for ns in sh("ip", "netns", "list", check=False).split():
        match = _NAME.match(ns)
        if match and not _alive(int(match.group(1))):
            for pid in _netns_pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
            removed.append(f"netns {ns}")
    for line in sh("ip", "-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            sh("ip", "link", "del", name, check=False)
            removed.append(f"link {name}")
    return removed


def _netns_pids(ns: str) -> list[int]:
    return [int(p) for p in sh("ip", "netns", "pids", ns, check=False).split() if p.isdigit()]


# -- the network ------------------------------------------------------------------------
class Network:
    """A bridge in the root namespace (10.88.X.1/24) and one namespace per host (10.88.X.1N)."""

    def __init__(self, hosts: int = 2) -> None:
        self.tag = f"{TAG}{os.getpid()}"
        self.bridge = f"{self.tag}b"
        self.hosts = hosts
        self.octet = self._free_octet()
        self.subnet = f"10.88.{self.octet}.0/24"
        self.gateway_ip = f"10.88.{self.octet}.1"
        self.up_done = False

    @staticmethod
    def _free_octet() -> int:
        used = {int(m) for m in re.findall(r"\b10\.88\.(\d+)\.", sh("ip", "-4", "-o", "addr"))}
        start = os.getpid() % 200 + 1
        for octet in [*range(start, 255), *range(1, start)]:
            if octet not in used:
                return octet
        raise HostError("no free 10.88.X.0/24 subnet")

    def ns(self, host: int) -> str:
        return f"{self.tag}h{host}"

    def ip(self, host: int) -> str:
        return f"10.88.{self.octet}.{10 + host}"

    def up(self) -> None:
        self.up_done = True
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for host in range(1, self.hosts + 1):
            ns, veth, peer = self.ns(host), f"{self.tag}v{host}", f"{self.tag}p{host}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", peer, "netns", ns)
            sh("ip", "-n", ns, "link", "set", peer, "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(host)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", self.gateway_ip)
            sh("ip", "link", "set", veth, "master", self.bridge)
            sh("ip", "link", "set", veth, "up")

    def pids(self, host: int) -> list[int]:
        """Every process in a host's namespace."""
        return _netns_pids(self.ns(host))

    def kill_host(self, host: int) -> list[int]:
        """SIGKILL every process of a host, as a machine that loses power."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def down(self) -> None:
        if not self.up_done:
            return
        for host in range(1, self.hosts + 1):
            self.kill_host(host)
            sh("ip", "netns", "del", self.ns(host), check=False)
            sh("ip", "link", "del", f"{self.tag}v{host}", check=False)
        sh("ip", "link", "del", self.bridge, check=False)


# -- Redis --------------------------------------------------------------------------------
class Redis:
    """A redis-server of the run, on the bridge address.

    `persistent`: append-only file, fsynced at every write, so a Redis killed
    with SIGKILL starts again with every counter it had acknowledged (as an
    operator who cares about the day's counts runs it). Without it, a killed
    Redis starts empty.
    """

    def __init__(self, run: RunDir, host: str, port: int = 6390, *, persistent: bool = True):
        self.run, self.host, self.port, self.persistent = run, host, port, persistent
        self.dir = run.path / "redis"
        self.dir.mkdir()
        self.proc: Proc | None = None

    @property
    def uri(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def argv(self) -> list[str]:
        argv = [
            "redis-server", "--bind", self.host, "--port", str(self.port),
            "--dir", str(self.dir), "--save", "", "--protected-mode", "no",
            "--daemonize", "no", "--maxclients", "10000",
        ]  # fmt: skip
        if self.persistent:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def start(self, timeout: float = 15) -> float:
        """Start it; the moment (monotonic) it first answered PING."""
        self.proc = self.run.proc("redis", self.argv()).start()
        return self.wait_ready(timeout)

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and not self.proc.alive():
                raise HostError(f"redis exited:\n{self.proc.tail()}")
            if self.ping():
                return time.monotonic()
            time.sleep(0.01)
        raise HostError(f"redis did not answer within {timeout} s")

    def kill(self) -> None:
        """SIGKILL, no shutdown, no final save."""
        if self.proc is not None:
            self.proc.stop(signal.SIGKILL, timeout=5)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=10)

    def client(self) -> Any:
        import redis

        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)


# -- PostgreSQL ---------------------------------------------------------------------------
class Postgres:
    """A PostgreSQL cluster of the run (initdb into its folder), trust auth, on the bridge."""

    def __init__(self, run: RunDir, host: str, subnet: str, port: int = 5440) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise HostError("no PostgreSQL server binaries")
        self.bin = bin_dir
        self.run, self.host, self.subnet, self.port = run, host, subnet, port
        self.data = run.path / "pg" / "data"
        self.log = run.path / "postgres.log"
        self.database = "axione"
        self.started = False

    def _pg(self, *argv: str, timeout: float = 60) -> str:
        return sh("runuser", "-u", "postgres", "--", *argv, timeout=timeout)

    def init(self) -> None:
        self.data.parent.mkdir()
        shutil.chown(self.data.parent, "postgres", "postgres")
        self.log.touch()
        shutil.chown(self.log, "postgres", "postgres")
        self._pg(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '{self.host}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.data.parent}'\n"
                "max_connections = 300\nshared_buffers = 64MB\n"
            )
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.subnet} trust\n")

    def _ctl(self, *args: str) -> None:
        self._pg(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            *args,
        )  # fmt: skip

    def start(self) -> None:
        self._ctl("start")
        self.started = True
        self.create_database()

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True) as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone():
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every connection is cut, the server is back when it returns."""
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        if self.started:
            self.started = False
            with contextlib.suppress(HostError, subprocess.TimeoutExpired):
                self._ctl("stop", "-m", "fast")

    def uri(self, database: str | None = None) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database or self.database}"

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.uri(), autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def version(self) -> str:
        return sh(str(self.bin / "postgres"), "--version").strip()


# -- the fake upstream --------------------------------------------------------------------
class FakeUpstream:
    """benchmarks/fake_upstream.py on the bridge address, reachable from every host."""

    def __init__(self, run: RunDir, host: str, port: int = 9100) -> None:
        self.run, self.host, self.port = run, host, port
        self.proc: Proc | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> None:
        argv = [sys.executable, str(HERE / "fake_upstream.py"), "--host", self.host]
        self.proc = self.run.proc("upstream", [*argv, "--port", str(self.port)]).start()
        wait_port(self.host, self.port, 15, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


# -- HAProxy ------------------------------------------------------------------------------
HAPROXY_CFG = """\
# Written by benchmarks/cluster_hosts.py, after examples/cluster/haproxy.cfg.
global
    maxconn 4000                      # examples/cluster: 20000 (needs ulimit -n above 40000)
    stats socket {socket} mode 600 level admin
    # Sessions that ended abnormally only (option dontlog-normal), to its log file.
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 5s
    timeout http-request 10s
    timeout http-keep-alive 5s
    timeout client 300s
    timeout server 300s
    option redispatch
    retries 2

frontend ai
    bind 127.0.0.1:{port}
    default_backend axione

backend axione
    balance leastconn
    option httpchk GET /api/v1/readyz
    http-check expect status 200
    # Which host answered: the cluster test counts answers per host.
    http-response set-header x-axione-host %[srv_name]
    default-server inter {inter_ms}ms fall {fall} rise {rise} maxconn 900
{servers}
"""


@dataclass
class HAProxy:
    """HAProxy on 127.0.0.1 balancing to the hosts, health-checked on /api/v1/readyz."""

    run: RunDir
    servers: dict[str, str]  # name -> "ip:port"
    inter_ms: int = 1000
    fall: int = 2
    rise: int = 2
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.run.path / "haproxy.sock"

    def config(self) -> str:
        # Each host twice: checked, and as an unchecked backup used only when no
        # checked server is up (a shared store down takes every host out, and
        # the gateways still answer in the API's format): examples/cluster.
        servers = "\n".join(
            [f"    server {n} {a} check" for n, a in self.servers.items()]
            + [f"    server {n}-any {a} backup" for n, a in self.servers.items()]
        )
        return HAPROXY_CFG.format(
            socket=self.socket_path,
            port=self.port,
            inter_ms=self.inter_ms,
            fall=self.fall,
            rise=self.rise,
            servers=servers,
        )

    def start(self) -> None:
        cfg = self.run.path / "haproxy.cfg"
        cfg.write_text(self.config())
        sh("haproxy", "-c", "-q", "-f", str(cfg))
        self.proc = self.run.proc("haproxy", ["haproxy", "-db", "-f", str(cfg)]).start()
        wait_port("127.0.0.1", self.port, 10, self.proc)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each server's check status ("UP", "DOWN", "UP 1/2", ...)."""
        text = self.command("show stat").lstrip("# ")
        states = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") == "axione" and row.get("svname") in self.servers:
                states[row["svname"]] = row.get("status", "")
        return states

    def wait_states(self, wanted: dict[str, str], timeout: float) -> float:
        """Until every named server has the wanted status; the moment it did."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                states = self.states()
                if all(states.get(n) == s for n, s in wanted.items()):
                    return time.monotonic()
            time.sleep(0.05)
        raise HostError(f"HAProxy servers {states} did not become {wanted} within {timeout} s")

    def version(self) -> str:
        return sh("haproxy", "-v").splitlines()[0]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


# -- gateways -----------------------------------------------------------------------------
@dataclass
class Gateway:
    """`axione serve --workers N` inside one host's namespace."""

    run: RunDir
    network: Network
    host: int
    config: Path
    workers: int = 2
    port: int = 8000
    proc: Proc | None = None

    @property
    def name(self) -> str:
        return f"h{self.host}"

    @property
    def address(self) -> str:
        return f"{self.network.ip(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        folder = self.run.path / self.name  # its working folder: the ledger's spill file
        folder.mkdir(exist_ok=True)
        argv = [
            sys.executable, "-m", "axione_asgi.cli", "serve", "--config", str(self.config),
            "--host", "0.0.0.0", "--port", str(self.port), "--workers", str(self.workers),
        ]  # fmt: skip
        self.proc = self.run.proc(
            f"gateway-{self.name}", argv, cwd=folder, netns=self.network.ns(self.host)
        ).start()

    def ready(self) -> bool:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}/api/v1/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and not self.proc.alive():
                raise HostError(f"gateway {self.name} exited:\n{self.proc.tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        tail = self.proc.tail() if self.proc else ""
        raise HostError(f"gateway {self.name} not ready within {timeout} s:\n{tail}")

    def kill(self) -> list[int]:
        """SIGKILL every process of the host (`ip netns pids`)."""
        pids = self.network.kill_host(self.host)
        if self.proc is not None and self.proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.popen.wait(5)
        return pids

    def stop(self) -> None:
        """SIGINT (no drain: shut down at once, the ledger flushed), SIGKILL after 15 s."""
        if self.proc is not None:
            self.proc.stop(signal.SIGINT, timeout=15)
        self.network.kill_host(self.host)


@contextlib.contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so `finally` blocks tear down."""

    def raise_interrupt(signum: int, frame: Any) -> None:
        on_sigint = signal.getsignal(signal.SIGINT)
        if callable(on_sigint) and on_sigint is not signal.default_int_handler:
            # asyncio.run's own handler: it cancels the running task, and the
            # runner raises KeyboardInterrupt once that task has wound down.
            on_sigint(signal.SIGINT, frame)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
