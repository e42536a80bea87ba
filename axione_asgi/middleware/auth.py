"""KeyAuthMiddleware: the client's key (Bearer or x-api-key), through a TTL cache, to a KeyStore."""

from __future__ import annotations

from collections.abc import Collection

from cachetools import TTLCache
from starlette.types import ASGIApp, Receive, Scope, Send

from axione_asgi.errors import AuthenticationFailed
from axione_asgi.keys import KeyRecord, KeyStore, hash_key, hashes_equal
from axione_asgi.middleware.errors import send_error
from axione_asgi.scope import KEY, api_key_of, route_path, state_of

__all__ = ["KeyAuthMiddleware"]

_MISSING = AuthenticationFailed(
    "Missing API key: send it as 'Authorization: Bearer sk-...' or 'x-api-key: sk-...'",
    code="missing_api_key",
)


class KeyAuthMiddleware:
    """Puts the caller's `KeyRecord` in the scope, or answers 401.

    Lookups are cached for `cache_ttl` seconds, so a revocation or tier change
    made elsewhere (another worker, the CLI) takes effect within that time.
    Unknown keys are remembered for at most one second, so a key made by the
    CLI works almost at once. Paths in `public_paths` (relative to the app's
    mount point) pass without a key.
    """

    def __init__(
        self,
        app: ASGIApp,
        key_store: KeyStore,
        *,
        cache_ttl: float = 5.0,
        cache_size: int = 100_000,
        public_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.key_store = key_store
        self.public_paths = frozenset(public_paths)
        self._known: TTLCache[str, KeyRecord] | None = (
            TTLCache(cache_size, cache_ttl) if cache_ttl > 0 else None
        )
        self._unknown: TTLCache[str, bool] | None = (
            TTLCache(cache_size, min(cache_ttl, 1.0)) if cache_ttl > 0 else None
        )

    def forget(self, key_hash: str | None = None) -> None:
        """Drop cached lookups (one key, or all), e.g. after an admin change."""
        for cache in (self._known, self._unknown):
            if cache is None:
                continue
            if key_hash is None:
                cache.clear()
            else:
                cache.pop(key_hash, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            self.public_paths and route_path(scope) in self.public_paths
        ):
            await self.app(scope, receive, send)
            return
        secret = api_key_of(scope)
        if not secret:
            await send_error(send, _MISSING, scope=scope)
            return
        record = await self._resolve(hash_key(secret))
        if record is None or record.revoked:
            await send_error(
                send,
                AuthenticationFailed(
                    "Incorrect API key provided" if record is None else "This API key was revoked",
                    code="invalid_api_key",
                ),
                scope=scope,
            )
            return
        state_of(scope)[KEY] = record
        await self.app(scope, receive, send)

    async def _resolve(self, key_hash: str) -> KeyRecord | None:
        if self._known is not None:
            cached = self._known.get(key_hash)
            if cached is not None:
                return cached
            if key_hash in self._unknown:  # type: ignore[operator]
                return None
        record = await self.key_store.get_by_hash(key_hash)
        if record is not None and not hashes_equal(record.key_hash, key_hash):
            record = None
        if self._known is not None:
            if record is None:
                self._unknown[key_hash] = True  # type: ignore[index]
            else:
                self._known[key_hash] = record
        return record
