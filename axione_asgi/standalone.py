"""The app `axione serve` runs: the gateway mounted at the configured prefix."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount

from axione_asgi.app import create_app
from axione_asgi.config import AxioneConfig
from axione_asgi.middleware.errors import ErrorFormatMiddleware
from axione_asgi.observability.access_log import install_access_handler

__all__ = ["CONFIG_ENV", "build_standalone", "load_config", "standalone_app"]

# How `axione serve` hands its --config to worker processes it spawns.
CONFIG_ENV = "AXIONE_CONFIG"


def load_config(path: str | None) -> AxioneConfig:
    """The file's configuration, or the embedded default when there is none."""
    return AxioneConfig.from_toml(path) if path else AxioneConfig.embedded_default()


def build_standalone(config: AxioneConfig) -> Starlette:
    """The gateway under `config.prefix`, with SPEC errors for paths outside it too."""
    api = create_app(config)
    if not config.prefix:
        return api
    return Starlette(
        routes=[Mount(config.prefix, app=api)],
        middleware=[Middleware(ErrorFormatMiddleware)],
        lifespan=api.lifespan,
    )


def standalone_app() -> Starlette:
    """uvicorn's factory: each worker builds its app from the same config."""
    config = load_config(os.environ.get(CONFIG_ENV) or None)
    if config.access_log.enabled:
        install_access_handler()  # uvicorn sets up only its own loggers
    return build_standalone(config)
