"""For e2e tests of a real CLI (Claude Code, Codex) through `axione serve`: a recording proxy.

It forwards every request unchanged and keeps the exact bytes both ways, so a
test can compare what the client sent with what reached the upstream.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from tests.helpers import run_cli

__all__ = ["KeysAndLedger", "RecordingProxy", "Sent"]


@dataclass
class Sent:
    """One request as the CLI sent it, and what the gateway answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    answer_headers: dict[str, str] = field(default_factory=dict)
    answer: bytes = b""  # the response body as the gateway sent it

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[tuple[str, Any]]:
        """The answer's server-sent events, decoded."""
        out = []
        for frame in self.answer.decode().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
            if "event" in fields:
                out.append((fields["event"], json.loads(fields["data"])))
        return out


class RecordingProxy:
    """An ASGI app that forwards every request to `target` and keeps it as it came."""

    _HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})

    def __init__(self, target: str, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.sent: list[Sent] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        query = scope["query_string"].decode("latin-1")
        sent = Sent(scope["method"], scope["path"], query, dict(headers), body)
        self.sent.append(sent)
        url = self.target + scope["path"] + (f"?{query}" if query else "")
        forward = [(k, v) for k, v in headers if k.lower() not in self._HOP]
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            request = client.build_request(scope["method"], url, headers=forward, content=body)
            response = await client.send(request, stream=True)
            sent.status = response.status_code
            sent.answer_headers = {k.lower(): v for k, v in response.headers.items()}
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [
                            (k, v)
                            for k, v in response.headers.raw
                            if k.decode("latin-1").lower() not in self._HOP - {"content-length"}
                        ],
                    }
                )
                async for chunk in response.aiter_raw():
                    sent.answer += chunk
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await response.aclose()


class KeysAndLedger:
    """What an e2e test asks of its `axione serve`: keys made by the CLI, the ledger's rows.

    Mixed into a test's gateway record, which sets `config` (the serve's
    config file), `db` (its SQLite file) and `keys`.
    """

    config: Path
    db: Path
    keys: dict[str, str]

    def create_key(self, name: str) -> tuple[str, str]:
        """`axione keys create`; returns the key id and the key."""
        done = run_cli("keys", "create", "--config", str(self.config), "--name", name)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        key_id = next(w for w in lines[0].split() if w.startswith("key_"))
        self.keys[key_id] = lines[-1]
        return key_id, lines[-1]

    def ledger(self, key_id: str, *, expect: int) -> list[dict[str, Any]]:
        """The ledger's rows for `key_id`, waiting (briefly) for `expect` of them."""
        deadline = time.monotonic() + 10
        while True:
            rows = [r for r in self.ledger_rows() if r["key_id"] == key_id]
            if len(rows) >= expect or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)

    def ledger_rows(self) -> list[dict[str, Any]]:
        """Every ledger row so far (the serve writes them in batches, the table at the first)."""
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            db.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in db.execute("SELECT * FROM usage_ledger ORDER BY id")]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise
