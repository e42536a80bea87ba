"""API keys: generation, hashing, the key record and the KeyStore protocol."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "KEY_PREFIX",
    "KeyRecord",
    "KeyStore",
    "generate_key",
    "hash_key",
    "hashes_equal",
    "new_key",
]

KEY_PREFIX = "sk-ax-"
_VISIBLE = len(KEY_PREFIX) + 6


def generate_key() -> str:
    """A new secret key: `sk-ax-` and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def visible_prefix(key: str) -> str:
    """The few leading characters shown in listings, never enough to use."""
    return key[:_VISIBLE]


def hashes_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the gateway knows of a key; never its secret."""

    id: str
    name: str
    tier: int
    prefix: str
    key_hash: str
    created: datetime
    revoked: bool = False
    source: Literal["store", "config"] = "store"
    models: tuple[str, ...] | None = None

    def with_tier(self, tier: int) -> KeyRecord:
        return replace(self, tier=tier)

    def may_use(self, model: str) -> bool:
        """Whether this key may call `model` (keys without a list may call all)."""
        return self.models is None or model in self.models


def new_key(name: str, tier: int) -> tuple[KeyRecord, str]:
    """A fresh key for a store to keep: its record (hash and prefix only) and the secret."""
    secret = generate_key()
    record = KeyRecord(
        id=f"key_{secrets.token_hex(8)}",
        name=name,
        tier=tier,
        prefix=visible_prefix(secret),
        key_hash=hash_key(secret),
        created=datetime.now(UTC),
    )
    return record, secret


@runtime_checkable
class KeyStore(Protocol):
    """Where keys live. Lookups are by hash; the secret itself is never stored."""

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The record for this hash, revoked ones included, or None."""
        ...

    async def get(self, key_id: str) -> KeyRecord | None:
        """The record with this id, or None."""
        ...

    async def create(self, name: str, tier: int = 1) -> tuple[KeyRecord, str]:
        """Make a key; returns its record and the secret, shown once."""
        ...

    async def list(self) -> Sequence[KeyRecord]:
        """Every key, oldest first."""
        ...

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if there is no such key."""
        ...

    async def set_tier(self, key_id: str, tier: int) -> bool:
        """Set a key's tier; False if there is no such key."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
