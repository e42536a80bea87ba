"""KeyStore implementations and the factory that picks one from a storage URI."""

from __future__ import annotations

from axione_asgi.config import StaticKey
from axione_asgi.keys import KeyStore
from axione_asgi.stores.memory import MemoryKeyStore
from axione_asgi.stores.sqlite import SQLiteKeyStore, sqlite_path
from axione_asgi.stores.static import LayeredKeyStore

__all__ = ["LayeredKeyStore", "MemoryKeyStore", "SQLiteKeyStore", "open_key_store"]


def open_key_store(uri: str, static_keys: list[StaticKey] | None = None) -> KeyStore:
    """The store a `storage.keys` URI names, with config-declared keys in front."""
    store: KeyStore = MemoryKeyStore() if uri == "memory://" else SQLiteKeyStore(sqlite_path(uri))
    if static_keys:
        return LayeredKeyStore(static_keys, store)
    return store
