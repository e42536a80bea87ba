"""What the middleware and routes share through the ASGI scope, and how to read it."""

from __future__ import annotations

from typing import Any, Protocol

from starlette.types import Scope

from axione_asgi.keys import KeyRecord

__all__ = [
    "DIALECT",
    "KEY",
    "QUOTA",
    "REQUEST_ID",
    "QuotaHandle",
    "api_key_of",
    "bearer_token",
    "exempt_from_quota",
    "key_of",
    "quota_of",
    "request_id_of",
    "route_path",
    "state_of",
]

DIALECT = "axione.dialect"
KEY = "axione.key"
QUOTA = "axione.quota"
REQUEST_ID = "axione.request_id"


class QuotaHandle(Protocol):
    """What `TierQuotaMiddleware` lends the inner app for one request.

    The route calls `admit` once it knows the request is valid and what it may
    cost, and `report` with the real usage; the middleware settles when the
    response ends or the client goes away. A route that never calls `admit` is
    admitted at its first response message for one request and no tokens.
    """

    async def admit(
        self,
        *,
        reserve_tokens: int = 0,
        minimum_tokens: int = 0,
        model: str | None = None,
        provider: str | None = None,
    ) -> int:
        """Count the request and reserve tokens, or raise `RateLimited`.

        Returns the tokens reserved: at most what is left of the day, and a
        refusal when that is below `minimum_tokens`.
        """
        ...

    def report(
        self,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        estimated: bool = False,
        cache_hit: bool = False,
    ) -> None:
        """Record the request's real token usage (replaces an earlier report).

        `cache_hit` marks an answer served from the response cache.
        """
        ...

    def answered_by(self, *, model: str, provider: str) -> None:
        """Name the model that answered (a fallback), for the ledger record."""
        ...

    def attempted(self, count: int) -> None:
        """The upstream calls the request made, retries and fallbacks included."""
        ...

    def exempt(self) -> None:
        """Do not count this request (metadata such as `/usage`); headers still show the day."""
        ...


def state_of(scope: Scope) -> dict[str, Any]:
    """The scope's shared state dict (Starlette's `request.state` reads the same)."""
    state: dict[str, Any] | None = scope.get("state")
    if state is None:
        state = scope["state"] = {}
    return state


def key_of(scope: Scope) -> KeyRecord | None:
    """The key `KeyAuthMiddleware` resolved for this request."""
    return state_of(scope).get(KEY)


def quota_of(scope: Scope) -> QuotaHandle | None:
    """The quota handle, when `TierQuotaMiddleware` is in the stack."""
    return state_of(scope).get(QUOTA)


def exempt_from_quota(scope: Scope) -> None:
    """Mark this request as not counted, when `TierQuotaMiddleware` is in the stack."""
    handle = quota_of(scope)
    if handle is not None:
        handle.exempt()


def request_id_of(scope: Scope) -> str | None:
    """The request id `ErrorFormatMiddleware` stamped."""
    return state_of(scope).get(REQUEST_ID)


def route_path(scope: Scope) -> str:
    """The path relative to the app's mount point.

    Inside a Mount, `path` still holds the mount prefix and `root_path` names it.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return (token.strip() or None) if scheme.lower() == "bearer" else None
    return None


def api_key_of(scope: Scope) -> str | None:
    """The client's key: `Authorization: Bearer ...`, else `x-api-key`.

    The first is what OpenAI clients and `ANTHROPIC_AUTH_TOKEN` send, the
    second what `ANTHROPIC_API_KEY` sends; every route takes either.
    """
    x_api_key: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer: str = token.strip()
                return bearer
        elif name == b"x-api-key":
            x_api_key = value.decode("latin-1").strip() or None
    return x_api_key
