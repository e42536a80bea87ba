"""Keys declared in the config file, layered in front of a writable store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from axione_asgi.config import StaticKey
from axione_asgi.keys import KeyRecord, KeyStore

__all__ = ["LayeredKeyStore"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LayeredKeyStore:
    """Config keys first (read-only: the file is their source of truth), then the store."""

    def __init__(self, static_keys: Sequence[StaticKey], store: KeyStore) -> None:
        self.store = store
        self._static: dict[str, KeyRecord] = {}
        for spec in static_keys:
            digest = spec.key_sha256.lower()
            self._static[digest] = KeyRecord(
                id=f"cfg_{digest[:12]}",
                name=spec.name,
                tier=spec.tier,
                prefix="(config)",
                key_hash=digest,
                created=_EPOCH,
                source="config",
                models=tuple(spec.models) if spec.models is not None else None,
            )
        self._static_by_id = {r.id: r for r in self._static.values()}

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        return self._static.get(key_hash) or await self.store.get_by_hash(key_hash)

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._static_by_id.get(key_id) or await self.store.get(key_id)

    async def create(self, name: str, tier: int = 1) -> tuple[KeyRecord, str]:
        return await self.store.create(name, tier)

    async def list(self) -> Sequence[KeyRecord]:
        return [*self._static.values(), *await self.store.list()]

    async def revoke(self, key_id: str) -> bool:
        if key_id in self._static_by_id:
            raise ValueError("keys declared in the config file are revoked by removing them there")
        return await self.store.revoke(key_id)

    async def set_tier(self, key_id: str, tier: int) -> bool:
        if key_id in self._static_by_id:
            raise ValueError("keys declared in the config file take their tier from the file")
        return await self.store.set_tier(key_id, tier)

    async def close(self) -> None:
        await self.store.close()
