"""The provider suites' fakes, reached through every upstream client that ships.

A provider suite takes the `upstream` fixture, parametrized over `CLIENTS`,
and builds its provider from `upstream.link(fake, base_url)`:

- `asgi`: httpx straight into the fake in-process (`httpx.ASGITransport`),
  as the suites always did: the fastest, and the one a test that looks at
  httpx itself keeps;
- `httpx`, `aiohttp`, `httptools`: that client, chosen by the provider's
  `transport` setting, over a real socket to the fake served by uvicorn on
  127.0.0.1, so framing, chunked streams, cut connections and error answers
  all go through the client's own parser.

One uvicorn server per test module (in a thread, on a free port, started by
the module's first test over a socket) serves a `Switchboard`: each linked
fake gets a path prefix of its own (`/fake-7`), which the switchboard strips
before the fake sees the request, so the fake sees the same path (and body,
and query) as in-process, and several fakes may be linked at once. Only the
`Host` header differs (`127.0.0.1:PORT`); no fake reads it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.helpers import serve_in_thread

__all__ = ["CLIENTS", "Link", "Switchboard", "Upstream", "served_fakes", "upstream"]

CLIENTS = ("asgi", "httpx", "aiohttp", "httptools")
Transport = Literal["httpx", "aiohttp", "httptools"]  # a `transport` setting the suites use


class Switchboard:
    """An ASGI app that hands `/<slot>/rest` to the fake installed in `slot`, as `/rest`."""

    def __init__(self) -> None:
        self._fakes: dict[str, ASGIApp] = {}
        self._slots = itertools.count(1)

    def install(self, fake: ASGIApp) -> str:
        """A new slot for `fake`: the path prefix that reaches it."""
        slot = f"fake-{next(self._slots)}"
        self._fakes[slot] = fake
        return slot

    def remove(self, slot: str) -> None:
        self._fakes.pop(slot, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # served with lifespan off: nothing else arrives
            return
        path: str = scope["path"]
        slot = path[1:].split("/", 1)[0]
        fake = self._fakes.get(slot)
        if fake is None:
            # A test that reached a fake it no longer holds: a loud answer no
            # provider mistakes for its upstream's.
            await PlainTextResponse(f"no fake in slot {slot!r}", status_code=599)(
                scope, receive, send
            )
            return
        prefix = len(slot) + 1
        raw: bytes = scope.get("raw_path") or path.encode()
        inner = {**scope, "path": path[prefix:] or "/", "raw_path": raw[prefix:] or b"/"}
        await fake(inner, receive, send)


@dataclass(frozen=True)
class Served:
    """A switchboard and the URL uvicorn serves it at."""

    board: Switchboard
    url: str


@dataclass(frozen=True)
class Link:
    """What a provider needs to reach one fake through one client."""

    base_url: str  # ProviderConfig.base_url
    transport: Transport  # ProviderConfig.transport
    asgi: httpx.AsyncBaseTransport | None  # the provider's `transport=` argument


class Upstream:
    """One client's way to the fakes; what the `upstream` fixture gives a test."""

    def __init__(self, client: str, served: Served | None) -> None:
        self.client = client
        self._served = served
        self._slots: list[str] = []

    def link(self, fake: ASGIApp, base_url: str) -> Link:
        """How to reach `fake` at what the test calls `base_url` (its path is kept)."""
        if self._served is None:
            return Link(base_url, "httpx", httpx.ASGITransport(app=fake))
        slot = self._served.board.install(fake)
        self._slots.append(slot)
        path = urlsplit(base_url).path.rstrip("/")
        return Link(f"{self._served.url}/{slot}{path}", cast(Transport, self.client), None)

    def close(self) -> None:
        if self._served is not None:
            for slot in self._slots:
                self._served.board.remove(slot)
        self._slots.clear()


# Module scope: each test module imports the fixture, and pytest keeps an
# imported fixture per module; a session scope would only keep every
# module's server running to the end.
@pytest.fixture(scope="module")
def served_fakes() -> Iterator[Served]:
    board = Switchboard()
    with serve_in_thread(board) as url:
        yield Served(board, url)


@pytest.fixture(params=CLIENTS)
def upstream(request: pytest.FixtureRequest) -> Iterator[Upstream]:
    client: str = request.param
    # The in-process client needs no server: asgi-only runs never start one.
    served = None if client == "asgi" else request.getfixturevalue("served_fakes")
    linked = Upstream(client, served)
    yield linked
    linked.close()
