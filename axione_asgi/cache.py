"""The opt-in response cache for non-streamed chat completions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from cachetools import TTLCache

from axione_asgi.config import CacheConfig
from axione_asgi.openai_types import ChatCompletionRequest
from axione_asgi.quota.counters import (
    CACHE_HEALTH,
    COUNTER_ERRORS,
    release_redis_pool,
    shared_redis_pool,
)

__all__ = [
    "CACHE_HEADER",
    "ChatCache",
    "MemoryResponseCache",
    "RedisResponseCache",
    "ResponseCache",
    "cache_key",
]

# The request header that steers the cache, and the response header that reports it.
CACHE_HEADER = "x-axione-cache"

# Fields that never change what the model answers, so they stay out of the key.
# `user` is in it: the end users behind one gateway key never share an answer.
_NOT_IN_KEY = frozenset({"stream", "stream_options"})


class ResponseCache(Protocol):
    """Where cached answers live: bytes by key, each with the cache's TTL."""

    async def get(self, key: str) -> bytes | None:
        """The stored answer, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes) -> None:
        """Store an answer for the configured TTL."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class MemoryResponseCache:
    """A `cachetools` TTL cache in this process; `clock` drives expiry (tests move it)."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], datetime]) -> None:
        self._entries: TTLCache[str, bytes] = TTLCache(
            max_entries, ttl_s, timer=lambda: clock().timestamp()
        )

    async def get(self, key: str) -> bytes | None:
        return self._entries.get(key)

    async def set(self, key: str, value: bytes) -> None:
        self._entries[key] = value

    async def aclose(self) -> None:
        self._entries.clear()


class RedisResponseCache:
    """Entries in Redis, shared by every worker using the same counters server.

    Its connections come from the process's shared pool for that server (the
    counters'). A Redis that cannot answer makes a miss and stores nothing:
    counted in `CACHE_HEALTH`, logged once per outage, never an error answer.
    """

    def __init__(self, url: str, ttl_s: float, prefix: str = "axione:cache:") -> None:
        from redis.asyncio import Redis

        self._pool: Any = shared_redis_pool(url)
        self._redis: Any = Redis(connection_pool=self._pool)
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(self._prefix + key)
        except COUNTER_ERRORS as exc:
            CACHE_HEALTH.failed(exc, "reading a cached answer")
            return None
        CACHE_HEALTH.ok()
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes) -> None:
        try:
            await self._redis.set(self._prefix + key, value, px=self._ttl_ms)
        except COUNTER_ERRORS as exc:
            CACHE_HEALTH.failed(exc, "storing an answer")
        else:
            CACHE_HEALTH.ok()

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        try:
            await self._redis.aclose()
        finally:
            if pool is not None:
                await release_redis_pool(pool)


def cache_key(request: ChatCompletionRequest, scope: str) -> str:
    """A digest of everything in the request that can change the answer, and the scope.

    `scope` is the key id, or a shared name when the operator lets keys share.
    """
    fields = request.model_dump(exclude=set(_NOT_IN_KEY), exclude_none=True)
    canonical = json.dumps(
        [scope, fields], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class ChatCache:
    """Decides what may be cached and keeps it in a `ResponseCache`.

    A request is cached only when it is not streamed and is deterministic
    enough: `temperature == 0`, or `mode = "always"`, or the request header
    `x-axione-cache: use`. `x-axione-cache: bypass` turns the cache off for
    one request.
    """

    def __init__(self, config: CacheConfig, store: ResponseCache) -> None:
        self.config = config
        self.store = store

    def key_for(
        self,
        request: ChatCompletionRequest,
        headers: Mapping[str, str],
        key_id: str | None,
        *,
        variant: str = "",
    ) -> str | None:
        """The entry's key, or None when this request must not use the cache.

        `variant` names what the entry holds when it is not an OpenAI chat
        completion (another dialect's rendering of the same answer).
        """
        if request.stream:
            return None
        asked = headers.get(CACHE_HEADER, "").strip().lower()
        if asked in ("bypass", "no-store", "no-cache"):
            return None
        deterministic = request.temperature == 0 or self.config.mode == "always" or asked == "use"
        if not deterministic:
            return None
        scope = "shared" if self.config.shared_across_keys else f"key:{key_id}"
        return cache_key(request, f"{variant}:{scope}" if variant else scope)

    async def get(self, key: str) -> bytes | None:
        """The cached answer body."""
        return await self.store.get(key)

    async def put(self, key: str, body: bytes) -> None:
        """Keep an answer body, unless it is over the entry size limit."""
        if len(body) <= self.config.max_entry_bytes:
            await self.store.set(key, body)

    async def aclose(self) -> None:
        """Close the store."""
        await self.store.aclose()


def open_chat_cache(
    config: CacheConfig, counters_uri: str, clock: Callable[[], datetime]
) -> ChatCache | None:
    """The cache the configuration asks for: None when disabled; Redis when counters are."""
    if not config.enabled:
        return None
    store: ResponseCache
    if counters_uri.startswith(("redis://", "rediss://", "async+redis://")):
        store = RedisResponseCache(counters_uri.removeprefix("async+"), config.ttl_s)
    else:
        store = MemoryResponseCache(config.max_entries, config.ttl_s, clock)
    return ChatCache(config, store)
