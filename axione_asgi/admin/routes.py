"""The admin API: key and usage operations under an opt-in prefix, for the operator key only."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from axione_asgi.admin.service import MAX_NAME_LENGTH, AdminService, KeyNotFound, key_dict
from axione_asgi.errors import (
    AuthenticationFailed,
    AxioneError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RequestTooLarge,
)
from axione_asgi.exchange.parsing import parse_body
from axione_asgi.keys import KeyStore, hash_key, hashes_equal
from axione_asgi.middleware.errors import send_error
from axione_asgi.scope import api_key_of, route_path

__all__ = ["AdminGateMiddleware", "admin_routes"]

_JSON = "application/json"
# Admin bodies are a name and a tier: anything larger is not one.
_MAX_BODY = 64 * 1024


class _CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    tier: int = 1


class _SetTier(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: int


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data).encode(), status_code=status, media_type=_JSON)


def _day(request: Request) -> date | None:
    raw = request.query_params.get("day")
    if raw is None:
        return None
    try:
        day: date | None = date.fromisoformat(raw)
    except ValueError:
        day = None
    # The last date is refused too: its end, the next midnight, is past what a date holds.
    if day is None or day == date.max:
        raise InvalidRequest("'day' must be a date as YYYY-MM-DD before 9999-12-31", param="day")
    return day


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer", param=name) from None


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise RequestTooLarge(f"The request body is over {_MAX_BODY} bytes")
    return body


def _failure(exc: Exception) -> AxioneError:
    if isinstance(exc, KeyNotFound):
        return NotFound(f"No key with id '{exc.key_id}'", code="key_not_found")
    return InvalidRequest(str(exc), code="invalid_value")


class _Endpoints:
    def __init__(self, service: AdminService) -> None:
        self.service = service

    async def list_keys(self, request: Request) -> Response:
        keys = await self.service.list_keys()
        return _json({"object": "list", "data": [key_dict(k) for k in keys]})

    async def create_key(self, request: Request) -> Response:
        body = parse_body(_CreateKey, await _body(request))
        try:
            record, secret = await self.service.create_key(body.name, body.tier)
        except ValueError as exc:
            raise _failure(exc) from None
        # The secret is in this answer and nowhere else, ever.
        return _json({**key_dict(record), "key": secret}, status=201)

    async def get_key(self, request: Request) -> Response:
        try:
            record = await self.service.get_key(request.path_params["key_id"])
        except KeyNotFound as exc:
            raise _failure(exc) from None
        return _json(key_dict(record))

    async def revoke_key(self, request: Request) -> Response:
        try:
            record = await self.service.revoke_key(request.path_params["key_id"])
        except (KeyNotFound, ValueError) as exc:
            raise _failure(exc) from None
        return _json(key_dict(record))

    async def set_tier(self, request: Request) -> Response:
        body = parse_body(_SetTier, await _body(request))
        try:
            record = await self.service.set_tier(request.path_params["key_id"], body.tier)
        except (KeyNotFound, ValueError) as exc:
            raise _failure(exc) from None
        return _json(key_dict(record))

    async def usage(self, request: Request) -> Response:
        key_id = request.query_params.get("key_id")
        try:
            reports = await self.service.usage(key_id, _day(request))
        except LookupError:
            raise _failure(KeyNotFound(key_id or "")) from None
        return _json({"object": "list", "data": reports})

    async def usage_by_model(self, request: Request) -> Response:
        day = _day(request) or self.service.today()
        try:
            rows = await self.service.usage_by_model(day, request.query_params.get("key_id"))
        except KeyNotFound as exc:
            raise _failure(exc) from None
        return _json({"object": "list", "day": day.isoformat(), "data": rows})

    async def history(self, request: Request) -> Response:
        key_id = request.path_params["key_id"]
        days = _int_param(request, "days", 30)
        try:
            await self.service.get_key(key_id)
            data = await self.service.history(key_id, days)
        except (KeyNotFound, ValueError) as exc:
            raise _failure(exc) from None
        return _json({"object": "list", "key_id": key_id, "data": data})


def admin_routes(service: AdminService) -> list[BaseRoute]:
    """The admin endpoints, relative to the admin prefix."""
    e = _Endpoints(service)
    return [
        Route("/keys", e.list_keys, methods=["GET"]),
        Route("/keys", e.create_key, methods=["POST"]),
        Route("/keys/{key_id}", e.get_key, methods=["GET"]),
        Route("/keys/{key_id}/revoke", e.revoke_key, methods=["POST"]),
        Route("/keys/{key_id}/tier", e.set_tier, methods=["POST", "PUT"]),
        Route("/keys/{key_id}/history", e.history, methods=["GET"]),
        Route("/usage", e.usage, methods=["GET"]),
        Route("/usage/models", e.usage_by_model, methods=["GET"]),
    ]


class AdminGateMiddleware:
    """Serves the admin API under `prefix` to the operator key; passes every other path on.

    Sits before `KeyAuthMiddleware`, so admin paths never touch the gateway's
    key auth or quota: no key or an unknown one is 401, a gateway key is 403
    (`operator_key_required`), the operator key reaches the admin routes.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str,
        operator_key_sha256: str,
        key_store: KeyStore,
        service: AdminService,
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.key_store = key_store
        self._operator = operator_key_sha256.lower()
        # The router raises HTTPException for an unknown path or method: Starlette's
        # exception layer makes it a 404/405 (then SPEC JSON, above), not a 500.
        self._admin = ExceptionMiddleware(
            Router(routes=[Mount(prefix, routes=admin_routes(service))])
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _under(route_path(scope), self.prefix):
            await self.app(scope, receive, send)
            return
        secret = api_key_of(scope)
        if not secret:
            await send_error(
                send,
                AuthenticationFailed(
                    "Missing operator key: send it as 'Authorization: Bearer ...'",
                    code="missing_api_key",
                ),
            )
            return
        digest = hash_key(secret)
        if not hashes_equal(digest, self._operator):
            record = await self.key_store.get_by_hash(digest)
            if record is not None and not record.revoked:
                error: AxioneError = PermissionDenied(
                    "The admin API needs the operator key, not a gateway key",
                    code="operator_key_required",
                )
            else:
                error = AuthenticationFailed("Incorrect operator key", code="invalid_api_key")
            await send_error(send, error)
            return
        await self._admin(scope, receive, send)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")
