"""Secrets: keys never reach logs, errors, the ledger or `/usage`; upstream keys never leave.

The witness fixture (tests/faults.py) captures every log line of every logger
at DEBUG and every response body, and fails a test that lets a gateway key or
the upstream key through; the fault tests use it too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import pytest

from axione_asgi import keys as keys_module
from axione_asgi.errors import scrub_secrets
from axione_asgi.quota import UsageRecord
from axione_asgi.quota.ledger import SQLiteLedger
from axione_asgi.stores.sqlite import SQLiteKeyStore
from tests.fakes.openai_fake import FakeOpenAI
from tests.faults import (
    UPSTREAM_KEY,
    Upstreams,
    Witness,
    fault_config,
    provider_table,
    rig,
    served_upstreams,
    sse_events,
    upstreams,
    witness,
)
from tests.helpers import AxioneServer, assert_spec_error, free_port, serve_in_thread
from tests.quota_app import static_key

__all__ = ["served_upstreams", "upstreams", "witness"]  # fixtures used here

INJECTIONS = ["x' OR '1'='1", "'); DROP TABLE api_keys; --", 'a"b', "key_'--", "\u0000'"]


def two(up: Upstreams) -> dict[str, dict[str, object]]:
    return {
        "primary": provider_table(up.primary_url, {"gpt-4o": "gpt-4o"}, timeout_s=0.3),
        "backup": provider_table(up.backup_url, {"gpt-4o-mini": "gpt-4o-mini"}),
        "down": provider_table(up.refused_url, {"gone": "gone"}),
    }


@pytest.mark.parametrize(
    "text",
    [
        "key sk-proj-abcdefghijklmnop1234 rejected",
        "header Authorization: Bearer abcdefgh.ijklmnop",
        "google said AIzaSyA1234567890abcdefghijklmnopqrstu",
        'config api_key="abcdefgh12345678"',
        "gateway key sk-ax-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg",
    ],
)
def test_scrub_secrets_removes_anything_shaped_like_a_key(text: str) -> None:
    scrubbed = scrub_secrets(text)
    assert "[redacted]" in scrubbed
    assert not any(len(w) >= 16 and w.isalnum() for w in scrubbed.split())


def test_scrub_secrets_removes_a_literal_secret_of_any_shape() -> None:
    assert scrub_secrets("oops: plainsecret42 leaked", "plainsecret42") == "oops: [redacted] leaked"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 429, 500, 503])
async def test_upstream_error_quoting_the_upstream_key_is_scrubbed(
    upstreams: Upstreams, witness: Witness, status: int
) -> None:
    upstreams.primary.fail_status, upstreams.primary.echo_key_in_errors = status, True
    async with rig(fault_config(two(upstreams), max_retries=0), witness) as r:
        response = await r.chat()
        error = assert_spec_error(response, response.status_code)
        assert UPSTREAM_KEY not in response.text
        assert "[redacted]" in error["message"]


@pytest.mark.anyio
async def test_every_fault_leaves_no_key_in_any_body_ledger_usage_or_log(
    upstreams: Upstreams, witness: Witness
) -> None:
    """The grep: every fault once, echoing keys where the fake can; the witness checks all."""
    p = upstreams.primary
    p.echo_key_in_errors = True
    async with rig(fault_config(two(upstreams), max_retries=1), witness) as r:
        scenarios = [
            ("fail_status", 500, {}),
            ("fail_status", 429, {}),
            ("fail_status", 401, {}),
            ("fail_status", 400, {}),
            ("malformed", True, {}),
            ("delay_s", 1.0, {}),
            ("cut_stream_after", 2, {"stream": True}),
            ("stream_error_after", 2, {"stream": True}),
            ("fail_status", 500, {"stream": True, "models": ["backup/gpt-4o-mini"]}),
        ]
        for knob, value, fields in scenarios:
            p.reset()
            p.echo_key_in_errors = True
            setattr(p, knob, value)
            await r.chat(**fields)
        await r.chat(model="down/gone")
        await r.chat(model="down/gone", stream=True)
        # A wrong gateway key is not quoted back either.
        wrong = "sk-ax-wrong-" + "z" * 30
        witness.secrets.add(wrong)
        bad = await r.gw.client.post(
            "/chat/completions", json={}, headers={"authorization": f"Bearer {wrong}"}
        )
        witness.saw(bad.text)
        assert bad.status_code == 401
        await r.usage()
        records = await r.ledger(count=len(scenarios) + 2)
        assert len(records) == len(scenarios) + 2
    assert witness.bodies and not witness.leaks()


@pytest.mark.anyio
async def test_usage_and_ledger_name_the_key_by_id_only(
    upstreams: Upstreams, witness: Witness
) -> None:
    async with rig(fault_config(two(upstreams)), witness) as r:
        await r.chat()
        usage = await r.usage()
        assert usage["key_id"] == r.gw.key_id
        (record,) = await r.ledger()
        assert record.key_id == r.gw.key_id
        assert r.gw.secret not in repr(usage) + repr(record)


def test_key_check_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = keys_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)

    async def run() -> int:
        from tests.quota_app import gateway, quota_config

        async with gateway(quota_config()) as gw:
            return (await gw.chat()).status_code

    assert anyio.run(run) == 200
    assert seen, "the key's hash was not compared with hmac.compare_digest"


# -- SQLite against injection ---------------------------------------------------------
@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteKeyStore]:
    store = SQLiteKeyStore(str(tmp_path / "keys.db"))
    yield store
    anyio.run(store.close)


@pytest.mark.parametrize("name", INJECTIONS)
def test_sqlite_key_store_keeps_hostile_names_as_data(
    sqlite_store: SQLiteKeyStore, name: str
) -> None:
    async def run() -> None:
        record, _ = await sqlite_store.create(name)
        assert (await sqlite_store.get(record.id)).name == name  # type: ignore[union-attr]
        assert [r.name for r in await sqlite_store.list()] == [name]

    anyio.run(run)


@pytest.mark.parametrize("key_id", INJECTIONS)
def test_sqlite_key_store_finds_nothing_for_hostile_ids(
    sqlite_store: SQLiteKeyStore, key_id: str
) -> None:
    async def run() -> None:
        record, _ = await sqlite_store.create("victim")
        assert await sqlite_store.get(key_id) is None
        assert await sqlite_store.get_by_hash(key_id) is None
        assert not await sqlite_store.revoke(key_id)
        assert not await sqlite_store.set_tier(key_id, 5)
        (kept,) = await sqlite_store.list()
        assert (kept.id, kept.tier, kept.revoked) == (record.id, 1, False)

    anyio.run(run)


def test_sqlite_ledger_keeps_hostile_key_ids_as_data(tmp_path: Path) -> None:
    ledger = SQLiteLedger(str(tmp_path / "ledger.db"))
    now = datetime(2030, 1, 1, tzinfo=UTC)
    records = [
        UsageRecord(now, key_id, "m'", 'p"', 1, 2, False, 200, 1.0, "r'") for key_id in INJECTIONS
    ]
    ledger.write(records)
    for key_id in INJECTIONS:
        (found,) = ledger.records(key_id=key_id)
        assert found.key_id == key_id
        assert ledger.totals(day=now.date(), key_id=key_id)[key_id].requests == 1
    assert len(ledger.records()) == len(INJECTIONS)
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM usage_ledger").fetchone() == (len(INJECTIONS),)


# -- a real `axione serve`: its whole output ------------------------------------------
CONFIG = """\
prefix = "/api/v1"
[retry]
max_retries = 1
backoff_s = 0.01
[storage]
keys = "memory://"
ledger = "sqlite:///{db}"
[providers.openai]
kind = "openai"
base_url = "{upstream}/v1"
api_key = "{upstream_key}"
timeout_s = 0.5
models = {{ "gpt-4o" = "gpt-4o" }}
[[keys]]
name = "live"
key_sha256 = "{sha}"
"""


def test_a_live_servers_output_at_debug_holds_no_key(tmp_path: Path) -> None:
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    secret, entry = static_key()
    bodies: list[str] = []
    with serve_in_thread(fake) as upstream:
        config = tmp_path / "axione.toml"
        config.write_text(
            CONFIG.format(
                db=tmp_path / "a.db",
                upstream=upstream,
                upstream_key=UPSTREAM_KEY,
                sha=entry["key_sha256"],
            )
        )
        server = AxioneServer(
            ["--config", str(config), "--log-level", "debug"], cwd=tmp_path, port=free_port()
        )
        try:
            server.wait_ready()
            api = f"{server.base_url}/api/v1"
            auth = {"authorization": f"Bearer {secret}"}
            body = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
            fake.echo_key_in_errors = True
            for knob, value, stream in [
                ("fail_status", 500, False),
                ("fail_status", 429, False),
                ("stream_error_after", 1, True),
                ("delay_s", 1.0, False),
                ("malformed", True, False),
            ]:
                fake.reset()
                fake.echo_key_in_errors = True
                setattr(fake, knob, value)
                r = httpx.post(f"{api}/chat/completions", json={**body, "stream": stream},
                               headers=auth, timeout=10)  # fmt: skip
                bodies.append(r.text + str(r.headers))
            r = httpx.get(f"{api}/usage", headers=auth)
            bodies.append(r.text)
            assert r.json()["used"]["requests"] == 5
            events = sse_events(bodies[2].split("Headers(")[0])
            assert "error" in events[-1]
        finally:
            server.stop()
    output = server.output()
    assert "Finished server process" in output  # the whole output, to its end
    for text in [*bodies, output]:
        assert secret not in text and UPSTREAM_KEY not in text
