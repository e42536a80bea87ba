"""KeyAuthMiddleware: the client's key (Bearer or x-api-key), through a TTL cache, to a KeyStore."""

from __future__ import annotations

import asyncio
import functools
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
        self._looking_up: dict[str, asyncio.Task[KeyRecord | None]] = {}
        self._generation = 0

    def forget(self, key_hash: str | None = None) -> None:
        """Drop cached lookups (one key, or all), e.g. after an admin change."""
        # A lookup in flight may have read the store before the change: what
        # it finds is answered, but not cached, and the next request reads again.
        self._generation += 1
        if key_hash is None:
            self._looking_up.clear()
        else:
            self._looking_up.pop(key_hash, None)
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
        else:
            return await self._look_up(key_hash)  # no cache: the store on every request
        # One lookup per key at a time: when a busy key's cached record
        # expires, its requests in flight would otherwise all ask the store
        # at once (hundreds, on a pool of ten: seconds of queueing). A task of
        # its own, so a client that goes away cancels only its own wait.
        task = self._looking_up.get(key_hash)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._look_up(key_hash))
            self._looking_up[key_hash] = task
            task.add_done_callback(functools.partial(self._looked_up, key_hash))
        return await asyncio.shield(task)

    def _looked_up(self, key_hash: str, task: asyncio.Task[KeyRecord | None]) -> None:
        if self._looking_up.get(key_hash) is task:
            del self._looking_up[key_hash]
        if not task.cancelled():
            task.exception()  # retrieved: its waiters, if any, have it raised

    async def _look_up(self, key_hash: str) -> KeyRecord | None:
        generation = self._generation
        record = await self.key_store.get_by_hash(key_hash)
        if record is not None and not hashes_equal(record.key_hash, key_hash):
            record = None
        if self._known is not None and generation == self._generation:
            if record is None:
                self._unknown[key_hash] = True  # type: ignore[index]
            else:
                self._known[key_hash] = record
        return record
