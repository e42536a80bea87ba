"""Graceful shutdown of a real `axione serve`: SIGTERM lets in-flight streams finish, then flushes.

Also in-process: stopping the app's lifespan closes every provider's HTTP client.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest

from axione_asgi import create_app
from axione_asgi.providers.base import HTTPProvider
from tests.fakes.slow_openai import SlowOpenAI
from tests.faults import UPSTREAM_KEY, fault_config, provider_table
from tests.helpers import AxioneServer, free_port, serve_in_thread
from tests.quota_app import static_key

CONFIG = """\
prefix = "/api/v1"
[storage]
keys = "memory://"
ledger = "sqlite:///{db}"
[providers.slow]
kind = "openai"
base_url = "{upstream}/v1"
api_key = "{upstream_key}"
models = {{ "gpt-4o" = "gpt-4o" }}
[[keys]]
name = "shutdown"
key_sha256 = "{sha}"
"""


def test_sigterm_lets_an_inflight_stream_finish_and_flushes_the_ledger(tmp_path: Path) -> None:
    upstream = SlowOpenAI(api_key=UPSTREAM_KEY, chunks=20, interval_s=0.05)  # ~1 s of stream
    secret, entry = static_key()
    db = tmp_path / "ledger.db"
    with serve_in_thread(upstream) as upstream_url:
        config = tmp_path / "axione.toml"
        config.write_text(
            CONFIG.format(
                db=db, upstream=upstream_url, upstream_key=UPSTREAM_KEY, sha=entry["key_sha256"]
            )
        )
        server = AxioneServer(["--config", str(config)], cwd=tmp_path, port=free_port())
        try:
            server.wait_ready()
            body = {
                "model": "slow/gpt-4o",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            lines: list[str] = []
            with (
                httpx.Client(base_url=f"{server.base_url}/api/v1", timeout=10) as client,
                client.stream(
                    "POST",
                    "/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {secret}"},
                ) as response,
            ):
                for line in filter(None, response.iter_lines()):
                    lines.append(line)
                    if len(lines) == 2:  # streaming has begun: now stop the server
                        server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(timeout=15)
        finally:
            server.stop()
    assert lines[-1] == "data: [DONE]", server.output()
    assert sum(line.startswith("data: {") for line in lines) >= 20
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, completion_tokens FROM usage_ledger").fetchall()
    assert rows == [(200, 20)]


@pytest.mark.anyio
async def test_stopping_the_app_closes_every_provider_client() -> None:
    config = fault_config(
        {
            "a": provider_table("http://127.0.0.1:9/v1", {"m": "m"}),
            "b": provider_table("http://127.0.0.1:9/v1", {"m": "m"}),
        }
    )
    app = create_app(config)
    providers = [p for p in app.runtime.registry.providers.values() if isinstance(p, HTTPProvider)]
    async with app.lifespan():
        clients = [p.client for p in providers]
        assert clients and not any(c.is_closed for c in clients)
    assert all(c.is_closed for c in clients)


def test_a_new_connection_during_shutdown_is_refused_not_hung(tmp_path: Path) -> None:
    """Once SIGTERM arrives the listener closes: new clients fail fast, in-flight ones finish."""
    upstream = SlowOpenAI(api_key=UPSTREAM_KEY, chunks=20, interval_s=0.05)
    secret, entry = static_key()
    with serve_in_thread(upstream) as upstream_url:
        config = tmp_path / "axione.toml"
        config.write_text(
            CONFIG.format(
                db=tmp_path / "l.db",
                upstream=upstream_url,
                upstream_key=UPSTREAM_KEY,
                sha=entry["key_sha256"],
            )
        )
        server = AxioneServer(["--config", str(config)], cwd=tmp_path, port=free_port())
        try:
            server.wait_ready()
            auth = {"authorization": f"Bearer {secret}"}
            body = {
                "model": "slow/gpt-4o",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            }
            done: list[str] = []

            def inflight() -> None:
                with httpx.stream("POST", f"{server.base_url}/api/v1/chat/completions",
                                  json=body, headers=auth, timeout=10) as r:  # fmt: skip
                    done.extend(filter(None, r.iter_lines()))

            worker = threading.Thread(target=inflight)
            worker.start()
            time.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            began = time.monotonic()
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{server.base_url}/api/v1/models", headers=auth, timeout=2)
            assert time.monotonic() - began < 2
            worker.join(timeout=10)
            server.proc.wait(timeout=15)
        finally:
            server.stop()
    assert done and done[-1] == "data: [DONE]"


_ = anyio  # anyio's pytest plugin runs the async test above
