"""`/dashboard` (the page, public) and `/usage/history` (a key's last days, from the ledger)."""

from __future__ import annotations

import json
from importlib.resources import files

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from axione_asgi.errors import AuthenticationFailed, InvalidRequest
from axione_asgi.quota.days import Clock, utc_day
from axione_asgi.quota.history import daily_history
from axione_asgi.quota.ledger import Ledger
from axione_asgi.scope import exempt_from_quota, key_of

__all__ = ["DASHBOARD_PATH", "HISTORY_DAYS", "HISTORY_PATH", "DashboardRoutes"]

DASHBOARD_PATH = "/dashboard"
HISTORY_PATH = "/usage/history"
HISTORY_DAYS = 30
_MAX_DAYS = 90

# The page holds no data and loads nothing from elsewhere: it may only call
# back to this gateway, with the key the user types into it.
_PAGE_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


class DashboardRoutes:
    """The usage page and its history endpoint, over the app's ledger."""

    def __init__(self, ledger: Ledger, clock: Clock, *, page: bool = True) -> None:
        self.ledger = ledger
        self.clock = clock
        self._page = (
            files("axione_asgi.dashboard").joinpath("page.html").read_bytes() if page else None
        )

    def routes(self) -> list[BaseRoute]:
        """`/usage/history` always; `/dashboard` when the page is on."""
        out: list[BaseRoute] = [Route(HISTORY_PATH, self.history, methods=["GET"])]
        if self._page is not None:
            out.append(Route(DASHBOARD_PATH, self.page, methods=["GET"]))
        return out

    async def page(self, request: Request) -> Response:
        assert self._page is not None
        return Response(self._page, media_type="text/html", headers=_PAGE_HEADERS)

    async def history(self, request: Request) -> Response:
        """The calling key's requests and tokens per UTC day, oldest first, ending today."""
        key = key_of(request.scope)
        if key is None:
            raise AuthenticationFailed(f"{HISTORY_PATH} needs a key", code="missing_api_key")
        exempt_from_quota(request.scope)  # like /usage: reading one's use is not a use
        raw = request.query_params.get("days", str(HISTORY_DAYS))
        if not raw.isdigit() or not 1 <= int(raw) <= _MAX_DAYS:
            raise InvalidRequest(f"'days' must be between 1 and {_MAX_DAYS}", param="days")
        days, today, ledger = int(raw), utc_day(self.clock()), self.ledger
        data = await anyio.to_thread.run_sync(
            lambda: daily_history(ledger, key.id, days=days, today=today)
        )
        body = {"object": "list", "key_id": key.id, "days": days, "data": data}
        return Response(json.dumps(body).encode(), media_type="application/json")
