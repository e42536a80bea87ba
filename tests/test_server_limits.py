"""Issue 17, the server itself, against a real `axione serve` on 127.0.0.1.

Without a key, a client must not be able to hold connections, file
descriptors or memory: connections past `[server].max_connections` are
refused at once, a request head must arrive within `header_timeout_s` and
within `max_header_bytes`, and a body must start within `body_timeout_s`.
A stream still running when the shutdown grace ends gets its error event.
Every test opens a bounded number of loopback sockets and ends in seconds.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.slow_openai import SlowOpenAI
from tests.faults import UPSTREAM_KEY
from tests.helpers import AxioneServer, free_port, serve_in_thread
from tests.quota_app import static_key

MAX_CONNECTIONS = 20
HEADER_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 16 * 1024
BODY_TIMEOUT_S = 1.0

SERVER_TABLE = f"""\
[server]
max_connections = {MAX_CONNECTIONS}
header_timeout_s = {HEADER_TIMEOUT_S}
max_header_bytes = {MAX_HEADER_BYTES}
graceful_shutdown_s = 1
"""

CONFIG = """\
prefix = "/api/v1"
[storage]
keys = "memory://"
ledger = "memory://"
[request]
body_timeout_s = {body_timeout_s}
{providers}
[[keys]]
name = "limits"
key_sha256 = "{sha}"
"""


def _config(tmp: Path, sha: str, providers: str = "", server: str = SERVER_TABLE) -> Path:
    path = tmp / "axione.toml"
    text = CONFIG.format(body_timeout_s=BODY_TIMEOUT_S, providers=providers, sha=sha)
    path.write_text(text + "\n" + server)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AxioneServer, str]]:
    tmp = tmp_path_factory.mktemp("limits")
    secret, entry = static_key()
    server = AxioneServer(
        ["--config", str(_config(tmp, entry["key_sha256"]))], cwd=tmp, port=free_port()
    )
    try:
        server.wait_ready()
        yield server, secret
    finally:
        server.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (EOF, reset, or an answer before closing)."""
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 ")


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float | None]:
    """What the server sends until it closes `sock`, and when it closed (None: still open)."""
    began = time.monotonic()
    got = b""
    sock.settimeout(0.05)
    while time.monotonic() - began < timeout:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return got, time.monotonic() - began
        if not data:
            return got, time.monotonic() - began
        got += data
    return got, None


def _wait_answering(server: AxioneServer, secret: str) -> None:
    """The server answers a normal request again (within the header timeout plus a second)."""
    deadline = time.monotonic() + HEADER_TIMEOUT_S + 3
    while True:
        try:
            response = httpx.get(
                f"{server.base_url}/api/v1/models",
                headers={"authorization": f"Bearer {secret}"},
                timeout=2,
            )
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server stopped answering"
        time.sleep(0.1)


def test_idle_connections_past_the_limit_are_refused_and_the_rest_time_out(
    served: tuple[AxioneServer, str],
) -> None:
    server, secret = served
    _wait_answering(server, secret)
    socks = [_connect(server.port) for _ in range(50)]
    try:
        began = time.monotonic()
        while sum(map(_closed_by_server, socks)) < 50 - MAX_CONNECTIONS:
            assert time.monotonic() - began < HEADER_TIMEOUT_S / 2, "surplus connections stay"
            time.sleep(0.02)
        held = [s for s in socks if not _closed_by_server(s)]
        assert len(held) <= MAX_CONNECTIONS
        # Those held send nothing: each is closed once the header timeout passes.
        while held:
            held = [s for s in held if not _closed_by_server(s)]
            assert time.monotonic() - began < HEADER_TIMEOUT_S + 1.5, f"{len(held)} still open"
            time.sleep(0.05)
    finally:
        for sock in socks:
            sock.close()
    _wait_answering(server, secret)


def test_a_head_sent_one_line_at_a_time_is_cut_at_the_header_timeout(
    served: tuple[AxioneServer, str],
) -> None:
    server, secret = served
    _wait_answering(server, secret)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        began = time.monotonic()
        closed_after: float | None = None
        sock.settimeout(0.2)
        for line in range(int((HEADER_TIMEOUT_S + 3) / 0.2)):
            try:
                sock.sendall(b"X-Slow-%d: a\r\n" % line)
                sock.recv(65536)  # an answer (408) or EOF: the server cut it
            except TimeoutError:
                continue  # still open: one more line
            except OSError:
                pass  # reset
            closed_after = time.monotonic() - began
            break
    assert closed_after is not None, "a head trickling in a line at a time is never cut"
    assert HEADER_TIMEOUT_S * 0.8 <= closed_after <= HEADER_TIMEOUT_S + 1, closed_after


def test_an_endless_head_is_refused_before_it_is_buffered(
    served: tuple[AxioneServer, str],
) -> None:
    server, secret = served
    _wait_answering(server, secret)
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sock.settimeout(0.01)
        piece = b"a" * 8192
        with contextlib.suppress(OSError):
            while sent < 8 * 1024 * 1024:
                try:
                    answer = sock.recv(65536)
                    break  # an answer, or EOF: refused
                except TimeoutError:
                    pass
                sock.sendall(piece)
                sent += len(piece)
    # Refused within what the kernel's socket buffers hold past the limit, not after 8 MiB.
    assert sent < 4 * 1024 * 1024, f"{sent} bytes of one unfinished head were taken"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]


def test_a_head_within_the_limit_is_served(served: tuple[AxioneServer, str]) -> None:
    server, secret = served
    _wait_answering(server, secret)
    response = httpx.get(
        f"{server.base_url}/api/v1/models",
        headers={"authorization": f"Bearer {secret}", "x-pad": "p" * (MAX_HEADER_BYTES // 2)},
        timeout=5,
    )
    assert response.status_code == 200, response.text


def test_a_request_whose_body_never_starts_is_answered_408(
    served: tuple[AxioneServer, str],
) -> None:
    server, secret = served
    _wait_answering(server, secret)
    head = (
        "POST /api/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head.encode())
        answer, closed_after = _read_until_closed(sock, BODY_TIMEOUT_S + 3)
        if closed_after is None and not answer:
            pytest.fail("a request whose body never starts is never timed out")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"request_timeout"' in answer


# -- a stream cut by shutdown ----------------------------------------------------------

PROVIDER = """\
[providers.slow]
kind = "openai"
base_url = "{upstream}/v1"
api_key = "{key}"
models = {{ "gpt-4o" = "gpt-4o" }}
"""


def test_a_stream_still_running_after_the_grace_period_ends_on_its_error_event(
    tmp_path: Path,
) -> None:
    upstream = SlowOpenAI(api_key=UPSTREAM_KEY, chunks=200, interval_s=0.05)  # ~10 s of stream
    secret, entry = static_key()
    with serve_in_thread(upstream) as upstream_url:
        providers = PROVIDER.format(upstream=upstream_url, key=UPSTREAM_KEY)
        config = _config(tmp_path, entry["key_sha256"], providers)
        server = AxioneServer(["--config", str(config)], cwd=tmp_path, port=free_port())
        lines: list[str] = []
        try:
            server.wait_ready()
            body = {
                "model": "slow/gpt-4o",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            began = 0.0
            with (
                httpx.stream(
                    "POST",
                    f"{server.base_url}/api/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {secret}"},
                    timeout=15,
                ) as response,
                contextlib.suppress(httpx.RemoteProtocolError),  # closed after the event
            ):
                for line in filter(None, response.iter_lines()):
                    lines.append(line)
                    if len(lines) == 2:
                        server.proc.send_signal(signal.SIGTERM)
                        began = time.monotonic()
            ended_after = time.monotonic() - began
            server.proc.wait(timeout=15)
        finally:
            server.stop()
    # The grace period (1 s) passed, then the stream ended on its error event, not bare.
    assert 0.8 <= ended_after < 5, ended_after
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["error"]["code"] == "server_shutting_down", lines[-3:]
    assert len(lines) < 150
