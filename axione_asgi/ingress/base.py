"""What every ingress shares: a route table entry, and the Ingress protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from axione_asgi.cache import CACHE_HEADER
from axione_asgi.dispatch import Endpoint, Handler
from axione_asgi.errors import ErrorEnvelope

if TYPE_CHECKING:
    from axione_asgi.exchange.pipeline import Pipeline

__all__ = ["JSON", "Ingress", "json_answer", "route"]

JSON = "application/json"


async def json_answer(
    pipeline: Pipeline,
    body: bytes,
    cache_key: str | None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A whole JSON answer; kept in the response cache (`x-axione-cache: miss`) when cacheable."""
    headers = headers or {}
    if cache_key is not None:
        await pipeline.keep(cache_key, body)
        headers[CACHE_HEADER] = "miss"
    return Response(body, media_type=JSON, headers=headers)


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
