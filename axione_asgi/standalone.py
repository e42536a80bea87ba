"""The app `axione serve` runs: the gateway mounted at the configured prefix."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from axione_asgi.app import AxioneApp, create_app
from axione_asgi.config import AxioneConfig, ServerConfig
from axione_asgi.health import DrainOnSigterm
from axione_asgi.middleware.errors import ErrorFormatMiddleware
from axione_asgi.observability.access_log import install_access_handler

__all__ = [
    "CONFIG_ENV",
    "PrefixedGateway",
    "build_standalone",
    "load_config",
    "server_options",
    "serving",
    "standalone_app",
]

# How `axione serve` hands its --config to worker processes it spawns.
CONFIG_ENV = "AXIONE_CONFIG"


def load_config(path: str | None) -> AxioneConfig:
    """The file's configuration, or the embedded default when there is none."""
    return AxioneConfig.from_toml(path) if path else AxioneConfig.embedded_default()


class PrefixedGateway:
    """The gateway at `prefix`; any other path is a SPEC 404.

    What a Starlette app with one `Mount` would do, without its router and
    exception layers in front of every request (they showed as a tenth of
    the CPU of a standalone request). Lifespan events run `api.lifespan`.
    """

    def __init__(self, api: AxioneApp, prefix: str) -> None:
        self.api = api
        self.prefix = prefix.rstrip("/")
        self.outside = ErrorFormatMiddleware(PlainTextResponse("Not Found", status_code=404))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope.get("path", "")
        prefix = self.prefix
        if path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] in ("", "/"):
            # As Starlette's Mount: `path` stays whole, `root_path` names the prefix.
            await self.api(
                {**scope, "root_path": scope.get("root_path", "") + prefix}, receive, send
            )
        else:
            await self.outside(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        started = False
        try:
            async with self.api.lifespan():
                started = True
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
        except BaseException as exc:
            failed = "lifespan.shutdown.failed" if started else "lifespan.startup.failed"
            await send({"type": failed, "message": f"{type(exc).__name__}: {exc}"})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def build_standalone(config: AxioneConfig) -> ASGIApp:
    """The gateway under `config.prefix`, with SPEC errors for paths outside it too."""
    api = create_app(config)
    if not config.prefix:
        return api
    return PrefixedGateway(api, config.prefix)


def standalone_app() -> ASGIApp:
    """uvicorn's factory: each worker builds its app from the same config."""
    config = load_config(os.environ.get(CONFIG_ENV) or None)
    return serving(build_standalone(config), config)


def serving(app: ASGIApp, config: AxioneConfig) -> ASGIApp:
    """`app` made ready to be served by this process: the access log, the drain, the GC."""
    if config.server.drain_s > 0:
        api = app.api if isinstance(app, PrefixedGateway) else app
        if isinstance(api, AxioneApp):
            app = DrainOnSigterm(app, api.runtime, config.server.drain_s)
    if config.access_log.enabled:
        install_access_handler()  # uvicorn sets up only its own loggers
    # What exists now (modules, models, config) lives as long as the process:
    # out of the collector's generations, full collections stop re-walking it
    # (a few percent of the CPU per request under load, measured in one run
    # with benchmarks/run.py --compare-src). Only the standalone server does
    # this; a host app decides for its own process.
    gc.freeze()
    return app


def _guarded_protocol() -> Callable[..., Any]:
    # Imported only to serve: uvicorn's protocol module costs every other
    # `axione` command (keys, usage) a tenth of a second at start.
    from axione_asgi.server_protocol import GuardedHttpToolsProtocol

    return GuardedHttpToolsProtocol


def server_options(server: ServerConfig) -> dict[str, Any]:
    """uvicorn's settings for `[server]`: its limits, and the protocol that adds the rest."""
    return {
        # A partial, not a subclass per config: uvicorn pickles it to the workers it spawns.
        "http": partial(_guarded_protocol(), limits=server),
        "backlog": server.backlog,
        "timeout_keep_alive": server.keep_alive_s,
        # On SIGTERM, in-flight requests and streams get this long to finish
        # before they are cut; the lifespan then flushes the ledger.
        "timeout_graceful_shutdown": server.graceful_shutdown_s,
    }
