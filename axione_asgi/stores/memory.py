"""An in-process KeyStore, for tests and throwaway servers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from axione_asgi.keys import KeyRecord, new_key

__all__ = ["MemoryKeyStore"]


class MemoryKeyStore:
    """Keys in a dict, indexed by hash and by id."""

    def __init__(self) -> None:
        self._by_id: dict[str, KeyRecord] = {}
        self._id_by_hash: dict[str, str] = {}

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        key_id = self._id_by_hash.get(key_hash)
        return None if key_id is None else self._by_id[key_id]

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    async def create(self, name: str, tier: int = 1) -> tuple[KeyRecord, str]:
        record, secret = new_key(name, tier)
        self._by_id[record.id] = record
        self._id_by_hash[record.key_hash] = record.id
        return record, secret

    async def list(self) -> Sequence[KeyRecord]:
        return list(self._by_id.values())

    async def revoke(self, key_id: str) -> bool:
        record = self._by_id.get(key_id)
        if record is None:
            return False
        self._by_id[key_id] = replace(record, revoked=True)
        return True

    async def set_tier(self, key_id: str, tier: int) -> bool:
        record = self._by_id.get(key_id)
        if record is None:
            return False
        self._by_id[key_id] = record.with_tier(tier)
        return True

    async def close(self) -> None:
        return None
