"""Key changes pushed to every replica: Redis pub/sub when the counters are on Redis.

A revocation or a tier change is committed to the shared key store first;
every worker's `KeyAuthMiddleware` would see it when its cached lookup
expires (`key_cache_ttl_s`). With the counters on Redis, the worker that made
the change also publishes the key's hash on one channel, and every worker of
every replica listening there drops its cached lookup at once, so the change
applies within a Redis round trip instead of a TTL.

The push only shortens the bound, it is never needed for correctness: a
message lost while a listener was disconnected is made up for by dropping the
whole cache when it subscribes again, and the TTL stays as the backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from axione_asgi.quota.counters import COUNTER_ERRORS, release_redis_pool, shared_redis_pool

__all__ = ["CHANNEL", "KeyEvents", "RedisKeyEvents", "open_key_events"]

logger = logging.getLogger("axione")

CHANNEL = "axione:key-changes"
# How long a listener that lost Redis waits before subscribing again.
_RESUBSCRIBE_S = 0.5


class KeyEvents(Protocol):
    """Where key changes are announced and heard."""

    async def publish(self, key_hash: str) -> None:
        """Tell every listener that the key with this hash changed (best effort)."""
        ...

    async def listen(self, changed: Callable[[str | None], None]) -> None:
        """Call `changed(key_hash)` per change heard, `changed(None)` when some may have
        been missed (at each new subscription); runs until cancelled."""
        ...

    def stop_listening(self) -> None:
        """Make `listen` return soon (also when its cancellation is lost in a client)."""
        ...

    async def aclose(self) -> None:
        """Release the connections."""
        ...


class RedisKeyEvents:
    """Key changes on a Redis channel, over the process's shared pool."""

    def __init__(self, uri: str, *, max_connections: int = 64, timeout_s: float = 2.0) -> None:
        from redis.asyncio import Redis

        self._pool: Any = shared_redis_pool(
            uri, max_connections=max_connections, timeout_s=timeout_s, socket_timeout_s=timeout_s
        )
        self._client: Any = Redis(connection_pool=self._pool)
        self._listening = True

    async def publish(self, key_hash: str) -> None:
        try:
            await self._client.publish(CHANNEL, key_hash)
        except COUNTER_ERRORS as exc:
            # The store has the change; the other replicas see it within the cache TTL.
            logger.warning(
                "key change not pushed to the other replicas (%s); they see it within "
                "key_cache_ttl_s",
                type(exc).__name__,
            )

    def stop_listening(self) -> None:
        self._listening = False

    async def listen(self, changed: Callable[[str | None], None]) -> None:
        down = False
        self._listening = True
        # The flag as well as cancellation: a cancellation that lands as a read's
        # own timeout expires may be swallowed (asyncio.timeout on Python 3.11).
        while self._listening:
            pubsub: Any = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                # Whatever was published while this listener was away is unknown.
                changed(None)
                if down:
                    logger.warning("key change channel subscribed again")
                    down = False
                while self._listening:
                    # A bounded wait, not a blocking read: older redis-py releases
                    # apply the pool's socket timeout to a blocking read.
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    data = message.get("data")
                    if isinstance(data, bytes):
                        data = data.decode("ascii", "replace")
                    if isinstance(data, str) and data:
                        changed(data)
            except COUNTER_ERRORS as exc:
                if not down:
                    down = True
                    logger.warning(
                        "key change channel lost (%s); key changes apply within "
                        "key_cache_ttl_s until it is subscribed again",
                        type(exc).__name__,
                    )
                await asyncio.sleep(_RESUBSCRIBE_S)
            finally:
                with contextlib.suppress(*COUNTER_ERRORS):  # the connection may be gone
                    await pubsub.aclose()

    async def aclose(self) -> None:
        self._listening = False
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await self._client.aclose(close_connection_pool=False)
            finally:
                await release_redis_pool(pool)


def open_key_events(
    counters_uri: str, *, max_connections: int = 64, timeout_s: float = 2.0
) -> KeyEvents | None:
    """Redis pub/sub when the counters are on a plain Redis (and redis-py is installed)."""
    import importlib.util

    bare = counters_uri.removeprefix("async+")
    if not bare.startswith(("redis://", "rediss://")):
        return None
    if importlib.util.find_spec("redis") is None:
        return None
    return RedisKeyEvents(bare, max_connections=max_connections, timeout_s=timeout_s)
