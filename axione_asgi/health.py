"""`/healthz` and `/readyz` (SPEC section 10), and the drain on SIGTERM of `axione serve`.

`/healthz` answers 200 while the process can answer at all: a liveness probe.
`/readyz` answers 200 when the key store, the usage ledger, the counters and
the response store each answer a cheap read within `CHECK_TIMEOUT_S`, and 503
naming the ones that did not; once the server has begun to drain it answers
503 `{"status": "draining"}`, so a load balancer stops sending it new requests.
Both are served without a key and are not counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from axione_asgi.ingress.base import route

if TYPE_CHECKING:
    from axione_asgi.app import Runtime

__all__ = [
    "CHECK_TIMEOUT_S",
    "HEALTH_PATHS",
    "DrainOnSigterm",
    "HealthRoutes",
]

logger = logging.getLogger("axione")

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
# Served without a key, and never counted (the quota layer sees no key).
HEALTH_PATHS = (HEALTHZ_PATH, READYZ_PATH)
# Each readiness check gets this long; all run at once.
CHECK_TIMEOUT_S = 1.0
# The ids the checks read: nothing is stored under them, so each read is cheap.
_PROBE = "axione-readyz-probe"

_JSON = "application/json"
_HEADERS = {"cache-control": "no-store"}
_LIVE = json.dumps({"status": "ok"}).encode()
_DRAINING = json.dumps({"status": "draining"}).encode()


class HealthRoutes:
    """The two probe routes of one gateway app, over its `Runtime`."""

    def __init__(self, runtime: Runtime, *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self.runtime = runtime
        self.timeout_s = timeout_s
        # The checks failing at the last probe: a change is logged, not every probe.
        self._failing: frozenset[str] = frozenset()

    def routes(self) -> list[BaseRoute]:
        """`GET` (and `HEAD`) `/healthz` and `/readyz`, relative to the app's mount point."""
        return [
            route(HEALTHZ_PATH, self.healthz, "GET"),
            route(READYZ_PATH, self.readyz, "GET"),
        ]

    async def healthz(self, request: Request) -> Response:
        # Alive, draining or not: a liveness probe must not restart a draining server.
        return Response(_LIVE, media_type=_JSON, headers=_HEADERS)

    async def readyz(self, request: Request) -> Response:
        if self.runtime.draining:
            return Response(_DRAINING, status_code=503, media_type=_JSON, headers=_HEADERS)
        checks = await self.check()
        failing = frozenset(name for name, result in checks.items() if result != "ok")
        self._log_change(failing, checks)
        # With `on_counter_failure = "open"` requests are served while the
        # counters are down: the replica stays in the balancer, the check says why.
        storage = self.runtime.quota.config.storage
        tolerated = {"counters"} if storage.on_counter_failure == "open" else set()
        unready = failing - tolerated
        body = {"status": "not_ready" if unready else "ready", "checks": checks}
        return Response(
            json.dumps(body).encode(),
            status_code=503 if unready else 200,
            media_type=_JSON,
            headers=_HEADERS,
        )

    async def check(self) -> dict[str, str]:
        """Each store's answer to a cheap read: `"ok"`, `"timeout"` or the error's type."""
        runtime = self.runtime
        quota = runtime.quota
        today = quota.clock().date()
        probes: dict[str, Callable[[], Awaitable[Any]]] = {
            "keys": lambda: runtime.key_store.get(_PROBE),
            "ledger": lambda: anyio.to_thread.run_sync(
                lambda: quota.ledger.totals(day=today, key_id=_PROBE)
            ),
            "counters": lambda: quota.counters.read(_PROBE, today),
        }
        responses = runtime.responses
        if responses is not None:
            probes["responses"] = lambda: responses.get(_PROBE, _PROBE)
        results: dict[str, str] = {}

        async def run(name: str, probe: Callable[[], Awaitable[Any]]) -> None:
            try:
                with anyio.fail_after(self.timeout_s):
                    await probe()
            except TimeoutError:
                results[name] = "timeout"
            except Exception as exc:  # any failure of a store is "not ready"
                # The type only: the message may name hosts, and the route is public.
                results[name] = type(exc).__name__
                logger.debug("readiness check %s failed", name, exc_info=True)
            else:
                results[name] = "ok"

        async with anyio.create_task_group() as group:
            for name, probe in probes.items():
                group.start_soon(run, name, probe)
        return {name: results[name] for name in probes}

    def _log_change(self, failing: frozenset[str], checks: dict[str, str]) -> None:
        if failing == self._failing:
            return
        if failing:
            logger.warning(
                "Not ready: %s",
                ", ".join(f"{name} {checks[name]}" for name in sorted(failing)),
            )
        else:
            logger.info("Ready again: every readiness check answers")
        self._failing = failing


class DrainOnSigterm:
    """`axione serve`'s app with a drain: SIGTERM marks it draining, and uvicorn stops later.

    At lifespan start-up (uvicorn has installed its signal handlers by then,
    in every worker process) the SIGTERM handler is wrapped: the first SIGTERM
    sets `runtime.draining`, so `/readyz` answers 503, and hands the signal on
    to uvicorn `drain_s` seconds later. Meanwhile requests, new ones included,
    are served as usual; uvicorn's graceful shutdown follows. Another SIGTERM
    during the drain changes nothing (a supervisor may signal every process
    of the group, and uvicorn's parent signals its workers again); SIGINT
    stops at once, as before.
    """

    def __init__(self, app: ASGIApp, runtime: Runtime, drain_s: float) -> None:
        self.app = app
        self.runtime = runtime
        self.drain_s = drain_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.install()
        await self.app(scope, receive, send)

    def install(self) -> None:
        """Wrap the running server's SIGTERM handler (only from the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return  # no handler of the server's to defer to
        loop = asyncio.get_running_loop()
        handed_on = previous

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.runtime.draining:
                return
            self.runtime.draining = True
            # Only thread-safe calls from a signal handler: the loop does the rest.
            loop.call_soon_threadsafe(self._begin, handed_on, signum)

        signal.signal(signal.SIGTERM, handler)

    def _begin(self, previous: Callable[[int, FrameType | None], Any], signum: int) -> None:
        # Next to uvicorn's own lines about the shutdown.
        logging.getLogger("uvicorn.error").info(
            "SIGTERM: draining for %g s (/readyz answers 503), then shutting down",
            self.drain_s,
        )
        asyncio.get_running_loop().call_later(self.drain_s, previous, signum, None)
