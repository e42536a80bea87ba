"""KeyStore implementations, and the factory that picks one by URI scheme from the registry."""

from __future__ import annotations

from axione_asgi.config import StaticKey
from axione_asgi.keys import KeyStore
from axione_asgi.stores.memory import MemoryKeyStore
from axione_asgi.stores.registry import known_schemes, open_keys, register_store
from axione_asgi.stores.sqlite import SQLiteKeyStore
from axione_asgi.stores.static import LayeredKeyStore

__all__ = [
    "LayeredKeyStore",
    "MemoryKeyStore",
    "SQLiteKeyStore",
    "known_schemes",
    "open_key_store",
    "register_store",
]


def open_key_store(uri: str, static_keys: list[StaticKey] | None = None) -> KeyStore:
    """The store a `storage.keys` URI names, with config-declared keys in front."""
    store = open_keys(uri)
    if static_keys:
        return LayeredKeyStore(static_keys, store)
    return store
