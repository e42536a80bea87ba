"""One registry of stores by URI scheme, as `limits` registers its storages.

A store is chosen by the scheme of its `[storage]` URI: `keys`, `ledger` and
`responses` each map a scheme to a factory that takes the whole URI. The
built-ins are `memory://`, `sqlite:///PATH` and `postgresql://...` (alias
`postgres://`, with the `postgres` extra). A store of one's own plugs in by
scheme::

    from axione_asgi.stores.registry import register_store

    register_store("mydb", "keys", lambda uri: MyKeyStore(uri))

before the config is read, or from a package's `axione.stores` entry point
(a callable taking no arguments that calls `register_store`), which the
`axione` command loads when it meets a scheme it does not know.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from axione_asgi.keys import KeyStore
    from axione_asgi.quota.ledger import Ledger
    from axione_asgi.stores.responses import ResponseStore

__all__ = [
    "ENTRY_POINT_GROUP",
    "StoreKind",
    "check_uri",
    "known_schemes",
    "open_store",
    "register_store",
    "scheme_of",
]

StoreKind = Literal["keys", "ledger", "responses"]
KINDS: tuple[str, ...] = get_args(StoreKind)
ENTRY_POINT_GROUP = "axione.stores"

# (scheme, kind) -> factory(uri) -> store
_FACTORIES: dict[tuple[str, str], Callable[[str], Any]] = {}
# scheme -> (importable module it needs, the extra that installs it)
_NEEDS: dict[str, tuple[str, str]] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def scheme_of(uri: str) -> str:
    """The scheme of a storage URI (`postgresql` of `postgresql://h/db`), lower case."""
    scheme, sep, _ = uri.partition("://")
    return scheme.lower() if sep else ""


def register_store(
    scheme: str,
    kind: StoreKind,
    factory: Callable[[str], Any],
    *,
    requires: tuple[str, str] | None = None,
) -> None:
    """Make `factory(uri)` the store of `kind` for URIs of `scheme` (replacing any).

    `requires` is (a module to import, the extra that installs it): the config
    check then names the extra when the module is missing.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown store kind {kind!r}: one of {', '.join(KINDS)}")
    scheme = scheme.lower().removesuffix("://")
    with _lock:
        _FACTORIES[(scheme, kind)] = factory
        if requires is not None:
            _NEEDS[scheme] = requires


def known_schemes(kind: str) -> list[str]:
    """The schemes a store of `kind` can be opened from, sorted."""
    with _lock:
        return sorted(s for s, k in _FACTORIES if k == kind)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()()


def _factory(kind: str, uri: str) -> Callable[[str], Any] | None:
    scheme = scheme_of(uri)
    with _lock:
        found = _FACTORIES.get((scheme, kind))
    if found is None:
        _load_entry_points()
        with _lock:
            found = _FACTORIES.get((scheme, kind))
    return found


def check_uri(kind: str, uri: str) -> str:
    """`uri` when a store of `kind` can be opened from it; a ValueError naming the choices."""
    scheme = scheme_of(uri)
    if _factory(kind, uri) is None:
        choices = ", ".join(f"'{s}://'" for s in known_schemes(kind))
        named = f"'{scheme}://'" if scheme else repr(uri)
        raise ValueError(
            f"no {kind} store for {named}: known schemes are {choices} "
            "(postgresql:// needs the 'postgres' extra: pip install 'axione-asgi[postgres]'; "
            "a store of your own is added by axione_asgi.stores.registry.register_store)"
        )
    if scheme == "memory" and uri != "memory://":
        raise ValueError("a memory store takes no path: use 'memory://'")
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise ValueError("a SQLite store is 'sqlite:///PATH' (three slashes)")
    with _lock:
        needs = _NEEDS.get(scheme)
    if needs is not None and importlib.util.find_spec(needs[0]) is None:
        raise ValueError(
            f"{scheme}:// stores need the '{needs[1]}' extra: pip install 'axione-asgi[{needs[1]}]'"
        )
    return uri


def open_store(kind: StoreKind, uri: str) -> Any:
    """The store of `kind` that `uri` names, made by its scheme's factory."""
    factory = _factory(kind, check_uri(kind, uri))
    assert factory is not None
    return factory(uri)


def open_keys(uri: str) -> KeyStore:
    """The key store `uri` names (without config keys: see `open_key_store`)."""
    store: KeyStore = open_store("keys", uri)
    return store


def open_ledger_store(uri: str) -> Ledger:
    """The ledger `uri` names."""
    ledger: Ledger = open_store("ledger", uri)
    return ledger


def open_responses(uri: str) -> ResponseStore:
    """The response store `uri` names."""
    store: ResponseStore = open_store("responses", uri)
    return store


# -- the built-ins: imported when first opened, so no driver loads unless used -------
def _memory_keys(uri: str) -> Any:
    from axione_asgi.stores.memory import MemoryKeyStore

    return MemoryKeyStore()


def _sqlite_keys(uri: str) -> Any:
    from axione_asgi.stores.sqlite import SQLiteKeyStore, sqlite_path

    return SQLiteKeyStore(sqlite_path(uri))


def _memory_ledger(uri: str) -> Any:
    from axione_asgi.quota.ledger import MemoryLedger

    return MemoryLedger()


def _sqlite_ledger(uri: str) -> Any:
    from axione_asgi.quota.ledger import SQLiteLedger
    from axione_asgi.stores.sqlite import sqlite_path

    return SQLiteLedger(sqlite_path(uri))


def _memory_responses(uri: str) -> Any:
    from axione_asgi.stores.responses import MemoryResponseStore

    return MemoryResponseStore()


def _sqlite_responses(uri: str) -> Any:
    from axione_asgi.stores.responses import SQLiteResponseStore
    from axione_asgi.stores.sqlite import sqlite_path

    return SQLiteResponseStore(sqlite_path(uri))


def _postgres_keys(uri: str) -> Any:
    from axione_asgi.stores.postgres import PostgresKeyStore

    return PostgresKeyStore(uri)


def _postgres_ledger(uri: str) -> Any:
    from axione_asgi.stores.postgres import PostgresLedger

    return PostgresLedger(uri)


def _postgres_responses(uri: str) -> Any:
    from axione_asgi.stores.postgres import PostgresResponseStore

    return PostgresResponseStore(uri)


register_store("memory", "keys", _memory_keys)
register_store("memory", "ledger", _memory_ledger)
register_store("memory", "responses", _memory_responses)
register_store("sqlite", "keys", _sqlite_keys)
register_store("sqlite", "ledger", _sqlite_ledger)
register_store("sqlite", "responses", _sqlite_responses)
for _scheme in ("postgresql", "postgres"):
    register_store(_scheme, "keys", _postgres_keys, requires=("psycopg_pool", "postgres"))
    register_store(_scheme, "ledger", _postgres_ledger, requires=("psycopg_pool", "postgres"))
    register_store(_scheme, "responses", _postgres_responses, requires=("psycopg_pool", "postgres"))
