"""Gateway cost per request with 10 vs 1,000,000 keys in the store.

In-process ASGI calls (no network), the key cache off so every request looks
its key up in the store, the same 10 active keys drawn from each store size.
Run: `python benchmarks/bench_keys.py` (about a minute; the 1M SQLite file
goes to a temporary folder).
"""

import asyncio
import json
import os
import random
import sqlite3
import tempfile
import time
from datetime import UTC, datetime

from axione_asgi import AxioneConfig, create_app
from axione_asgi.keys import KeyRecord, hash_key
from axione_asgi.stores import MemoryKeyStore, SQLiteKeyStore

BODY = json.dumps(
    {
        "model": "demo/echo",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 5,
    }
).encode()


def fill_memory(n):
    store = MemoryKeyStore()
    secrets = []
    now = datetime.now(UTC)
    for i in range(n):
        s = f"sk-ax-bench{i:012d}"
        r = KeyRecord(
            id=f"key_{i:012d}", name="b", tier=1, prefix=s[:12], key_hash=hash_key(s), created=now
        )
        store._by_id[r.id] = r
        store._id_by_hash[r.key_hash] = r.id
        secrets.append(s)
    return store, secrets


def fill_sqlite(n, path):
    store = SQLiteKeyStore(path)
    conn = sqlite3.connect(path)
    now = datetime.now(UTC).isoformat()
    rows = (
        (f"key_{i:012d}", "b", 1, "sk-ax-bench", hash_key(f"sk-ax-bench{i:012d}"), now)
        for i in range(n)
    )
    conn.executemany(
        "INSERT INTO api_keys (id, name, tier, prefix, key_hash, created, revoked) "
        "VALUES (?,?,?,?,?,?,0)",
        rows,
    )
    conn.commit()
    conn.close()
    return store, [f"sk-ax-bench{i:012d}" for i in range(n)]


async def measure(store, secrets, requests=3000):
    cfg = AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://"},
            "key_cache_ttl_s": 0,
            "tiers": {"1": {"requests_per_day": 10**9, "tokens_per_day": 10**12}},
            "access_log": {"enabled": False},
        }
    )
    app = create_app(cfg, key_store=store)
    rnd = random.Random(1)
    async with app.lifespan():

        async def one(secret):
            headers = [
                (b"authorization", f"Bearer {secret}".encode()),
                (b"content-type", b"application/json"),
            ]
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/chat/completions",
                "raw_path": b"/chat/completions",
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 1),
                "server": ("x", 80),
            }
            sent = False
            ev = asyncio.Event()

            async def receive():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": BODY, "more_body": False}
                await ev.wait()
                return {"type": "http.disconnect"}

            out = []

            async def send(m):
                out.append(m)

            await app(scope, receive, send)
            assert out[0]["status"] == 200, out

        for _ in range(300):
            await one(rnd.choice(secrets))
        t = time.perf_counter()
        for _ in range(requests):
            await one(rnd.choice(secrets))
        return (time.perf_counter() - t) / requests * 1e6


async def main():
    rows = []
    tmp = tempfile.mkdtemp()
    for n in (10, 1_000_000):
        mem, s = fill_memory(n)
        sq, s2 = fill_sqlite(n, os.path.join(tmp, f"k{n}.db"))
        # The same 10 active keys' worth of traffic, drawn from a store of n keys.
        active = random.Random(2).sample(range(n), 10)
        rows.append(
            (
                n,
                await measure(mem, [s[i] for i in active]),
                await measure(sq, [s2[i] for i in active]),
            )
        )
        del mem, s, sq, s2
    for n, m, q in rows:
        print(
            f"{n:>9,} keys: memory store {m:6.1f} us/request, "
            f"sqlite store {q:6.1f} us/request (key cache off)"
        )


asyncio.run(main())
