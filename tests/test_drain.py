"""The drain on SIGTERM of a real `axione serve` (`[server] drain_s`).

SIGTERM marks the server draining: `/readyz` answers 503 at once, while
in-flight and new requests are still served for `drain_s`; uvicorn's graceful
shutdown follows.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.slow_openai import SlowOpenAI
from tests.faults import UPSTREAM_KEY
from tests.helpers import AxioneServer, free_port, serve_in_thread
from tests.quota_app import static_key

CONFIG = """\
prefix = "/api/v1"
[server]
drain_s = {drain_s}
[storage]
keys = "memory://"
ledger = "sqlite:///{db}"
[providers.slow]
kind = "openai"
base_url = "{upstream}/v1"
api_key = "{upstream_key}"
models = {{ "gpt-4o" = "gpt-4o" }}
[[keys]]
name = "drain"
key_sha256 = "{sha}"
"""

DRAIN_S = 3.0


def _readyz(base_url: str) -> tuple[int, dict[str, object]]:
    response = httpx.get(f"{base_url}/api/v1/readyz", timeout=2)
    return response.status_code, response.json()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_readyz_503_while_requests_still_complete(
    tmp_path: Path, workers: int
) -> None:
    upstream = SlowOpenAI(api_key=UPSTREAM_KEY, chunks=20, interval_s=0.1)  # ~2 s of stream
    secret, entry = static_key()
    auth = {"authorization": f"Bearer {secret}"}
    db = tmp_path / "ledger.db"
    with serve_in_thread(upstream) as upstream_url:
        config = tmp_path / "axione.toml"
        config.write_text(
            CONFIG.format(
                drain_s=DRAIN_S,
                db=db,
                upstream=upstream_url,
                upstream_key=UPSTREAM_KEY,
                sha=entry["key_sha256"],
            )
        )
        args = ["--config", str(config), "--workers", str(workers)]
        server = AxioneServer(args, cwd=tmp_path, port=free_port())
        try:
            server.wait_ready()
            deadline = time.monotonic() + 20
            while _readyz(server.base_url)[0] != 200:  # every worker up
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.1)
            if workers > 1:
                time.sleep(1.0)  # the second worker's lifespan, too
            body = {
                "model": "slow/gpt-4o",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            lines: list[str] = []
            began = threading.Event()

            def inflight() -> None:
                with httpx.stream(
                    "POST",
                    f"{server.base_url}/api/v1/chat/completions",
                    json=body,
                    headers=auth,
                    timeout=15,
                ) as response:
                    lines.append(str(response.status_code))
                    for line in filter(None, response.iter_lines()):
                        lines.append(line)
                        began.set()

            worker = threading.Thread(target=inflight)
            worker.start()
            assert began.wait(10), server.output()
            server.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()

            # /readyz turns 503 "draining" at once (on every worker)...
            statuses: list[tuple[int, dict[str, object]]] = []
            while time.monotonic() - sent < 1.0:
                statuses.append(_readyz(server.base_url))
                time.sleep(0.05)
            assert statuses[-1] == (503, {"status": "draining"}), (statuses, server.output())
            # ...while new requests are still served during the drain.
            models = httpx.get(f"{server.base_url}/api/v1/models", headers=auth, timeout=5)
            assert models.status_code == 200
            assert server.proc.poll() is None
            worker.join(timeout=15)
            code = server.proc.wait(timeout=20)
            stopped = time.monotonic() - sent
        finally:
            server.stop()
    assert lines[0] == "200"
    assert lines[-1] == "data: [DONE]", server.output()
    assert stopped >= DRAIN_S - 0.5
    assert code in (0, -signal.SIGTERM)
    assert "draining for 3 s" in server.output()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, completion_tokens FROM usage_ledger").fetchall()
    assert rows == [(200, 20)]
