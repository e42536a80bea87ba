"""The gateway's own routes as plain ASGI apps, found by one dict lookup.

Starlette's app wraps every request in two exception layers and its router
tries each route's regular expression in turn; `request_response` then adds
two more layers per request. For the gateway's fixed paths none of that does
anything `ErrorFormatMiddleware` does not already do, and on the hot path it
cost about a tenth of the gateway's CPU. `Endpoint` runs a handler with no
layer in between; `ExactRoutes` finds it by path and method, and hands every
other request (path parameters, host routes, 404 and 405) to Starlette's
router as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from axione_asgi.scope import route_path

__all__ = ["Endpoint", "ExactRoutes"]

Handler = Callable[[Request], Awaitable[Response]]


class Endpoint:
    """A `Request -> Response` handler served as a plain ASGI app.

    Given to `starlette.routing.Route`, which treats it as an ASGI app and so
    adds no wrapping of its own. Errors propagate to the middleware above.
    """

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


class ExactRoutes:
    """Serves routes with a fixed path and an `Endpoint` straight from a dict.

    Everything else goes to `fallback` (the Starlette router, with its
    exception layer), so behaviour is the router's: only the cost differs.
    """

    def __init__(self, routes: Iterable[BaseRoute], fallback: ASGIApp) -> None:
        self.fallback = fallback
        self.table: dict[str, dict[str, Endpoint]] = {}
        for route in routes:
            if not isinstance(route, Route) or not isinstance(route.app, Endpoint):
                continue
            if route.param_convertors:  # a path with parameters: the router's job
                continue
            methods = self.table.setdefault(route.path, {})
            for method in route.methods or ("GET", "HEAD", "POST"):
                methods.setdefault(method, route.app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            methods = self.table.get(route_path(scope))
            if methods is not None:
                endpoint = methods.get(scope["method"])
                if endpoint is not None:
                    await endpoint(scope, receive, send)
                    return
        await self.fallback(scope, receive, send)
