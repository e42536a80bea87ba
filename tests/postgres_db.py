"""A throwaway PostgreSQL schema per test: the local server (127.0.0.1:5432, database `test`).

Each schema gets a random name and is dropped with everything in it at the
end, so tests running at once never see each other's tables. Set
`AXIONE_TEST_POSTGRES` to use another server.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg

BASE_URI = os.environ.get("AXIONE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def in_schema(schema: str, base: str = BASE_URI) -> str:
    """A store URI whose tables live in `schema`."""
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """The URI of a new empty schema, dropped on exit."""
    schema = f"axione_t_{secrets.token_hex(6)}"
    with psycopg.connect(BASE_URI, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield in_schema(schema)
    finally:
        with psycopg.connect(BASE_URI, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def query(uri: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of one statement run on `uri` (the tests' look into the database)."""
    with psycopg.connect(uri, autocommit=True) as conn:
        return conn.execute(sql).fetchall()
