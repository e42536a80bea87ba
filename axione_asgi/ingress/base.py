"""What every ingress shares: a route table entry, and the Ingress protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from starlette.routing import BaseRoute, Route

from axione_asgi.dispatch import Endpoint, Handler
from axione_asgi.errors import ErrorEnvelope

__all__ = ["JSON", "Ingress", "route"]

JSON = "application/json"


def route(path: str, handler: Handler, method: str) -> Route:
    """An exact route: an `Endpoint`, which Starlette adds no per-request layers to."""
    return Route(path, Endpoint(handler), methods=[method], name=handler.__name__)


class Ingress(Protocol):
    """One client dialect: its routes, and the error envelope its clients read."""

    def routes(self) -> list[BaseRoute]:
        """The dialect's Starlette routes, relative to the app's mount point."""
        ...

    def error_envelopes(self) -> Mapping[str, ErrorEnvelope]:
        """Route path -> how errors are written there (paths not named get OpenAI's)."""
        ...
