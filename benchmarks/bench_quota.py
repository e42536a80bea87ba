"""What TierQuotaMiddleware adds per request: in-process ASGI calls, with and without it.

The key is already in the scope (as KeyAuthMiddleware leaves it), so only the
quota layer is measured. Inner apps:

- `bare`: a trivial ASGI app answering `ok` (the baseline);
- `implicit`: the middleware around it; the app never calls the handle, so
  each request is one atomic admission, no tokens, one ledger record;
- `metered`: the app admits with a token reservation and reports usage, as
  `/chat/completions` does (admission, settlement, ledger record);
- `starlette` / `+quota`: a one-route Starlette app alone, and metered, to
  show the cost at the scale of a small real app.

Run: `python benchmarks/bench_quota.py [--requests 20000] [--redis URI | --no-redis]`.
One caller (per-request latency), then 64 concurrent callers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from axione_asgi import AxioneConfig, TierQuotaMiddleware
from axione_asgi.keys import KeyRecord
from axione_asgi.quota import MemoryLedger, QuotaService
from axione_asgi.scope import KEY, quota_of
from axione_asgi.stores import MemoryKeyStore

Scope = MutableMapping[str, Any]
ASGI = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]

_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
_BODY = {"type": "http.response.body", "body": b"ok"}


async def bare_app(scope: Scope, receive: Any, send: Any) -> None:
    await send(_START)
    await send(_BODY)


async def _admit_and_report(scope: Scope) -> None:
    quota = quota_of(scope)
    assert quota is not None
    await quota.admit(reserve_tokens=1_100, model="bench/m", provider="bench")
    quota.report(prompt_tokens=40, completion_tokens=60)


async def metered_app(scope: Scope, receive: Any, send: Any) -> None:
    await _admit_and_report(scope)
    await send(_START)
    await send(_BODY)


async def _hello(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _hello_metered(request: Request) -> Response:
    await _admit_and_report(request.scope)
    return PlainTextResponse("ok")


starlette_app = Starlette(routes=[Route("/bench", _hello)])
starlette_metered_app = Starlette(routes=[Route("/bench", _hello_metered)])


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


def _scope(key: KeyRecord) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/bench",
        "raw_path": b"/bench",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "server": ("bench", 80),
        "client": ("127.0.0.1", 1),
        "state": {KEY: key},
    }


async def _run(app: Any, key: KeyRecord, requests: int, concurrency: int) -> float:
    """Microseconds per request, wall clock."""

    async def caller(count: int) -> None:
        for _ in range(count):
            await app(_scope(key), _receive, _send)

    await caller(min(500, requests))  # warm-up: imports, connections, caches
    share = requests // concurrency
    began = time.perf_counter()
    await asyncio.gather(*(caller(share) for _ in range(concurrency)))
    return (time.perf_counter() - began) / (share * concurrency) * 1e6


def _service(counters: str) -> QuotaService:
    config = AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", "counters": counters},
            "tiers": {"1": {"requests_per_day": 10**9, "tokens_per_day": 10**12}},
        }
    )
    return QuotaService(config, key_store=MemoryKeyStore(), ledger=MemoryLedger())


async def measure(counters: str, requests: int, concurrency: int) -> dict[str, float]:
    """µs per request of each inner app, on one counters storage."""
    key = KeyRecord(
        id=f"key_bench_{time.time_ns()}",
        name="bench",
        tier=1,
        prefix="sk-ax-bench",
        key_hash="0" * 64,
        created=datetime.now(UTC),
    )
    service = _service(counters)
    await service.start()

    def quota(app: Any) -> TierQuotaMiddleware:
        return TierQuotaMiddleware(app, service)

    try:
        return {
            "bare": await _run(bare_app, key, requests, concurrency),
            "implicit": await _run(quota(bare_app), key, requests, concurrency),
            "metered": await _run(quota(metered_app), key, requests, concurrency),
            "starlette": await _run(starlette_app, key, requests, concurrency),
            "+quota": await _run(quota(starlette_metered_app), key, requests, concurrency),
        }
    finally:
        today = service.clock().date()
        with contextlib.suppress(Exception):
            for day in (today, today - timedelta(days=1)):
                await service.counters.clear(key.id, day)
        await service.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    stores = [("memory", "memory://", args.requests)]
    if not args.no_redis:
        stores.append(("redis", args.redis, max(2_000, args.requests // 4)))
    columns = ("bare", "implicit", "metered", "starlette", "+quota")
    print("µs per request (added = metered - bare; ratio = +quota / starlette)")
    print(
        f"{'counters':<9}{'callers':>8}"
        + "".join(f"{c:>11}" for c in columns)
        + f"{'added':>9}{'ratio':>8}"
    )
    for name, uri, count in stores:
        for concurrency in (1, 64):
            r = await measure(uri, count, concurrency)
            print(
                f"{name:<9}{concurrency:>8}"
                + "".join(f"{r[c]:>11.1f}" for c in columns)
                + f"{r['metered'] - r['bare']:>9.1f}{r['+quota'] / r['starlette']:>7.2f}x"
            )


if __name__ == "__main__":
    asyncio.run(main())
