"""Upstream HTTP clients behind one small interface: httpx (default) and aiohttp.

Providers speak to their upstream through `UpstreamClient`: POST a JSON body,
get the answer whole or as lines. httpx's client is the default and takes any
`httpx.AsyncBaseTransport` (tests mount fakes with `httpx.ASGITransport`);
aiohttp, when installed (`axione-asgi[fast]`), does the same job for several
times less CPU per request, which is most of a gateway's own cost.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # httpx loads only when a provider uses it (start-up time)
    import httpx

__all__ = [
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamResponse",
    "UpstreamStream",
    "UpstreamTimeoutError",
    "UpstreamTransportError",
    "aiohttp_available",
    "auto_transport",
    "json_bytes",
    "open_upstream",
]

try:  # orjson (the `fast` extra) encodes request bodies several times faster.
    import orjson

    def json_bytes(value: Any) -> bytes:
        """JSON-encode a request body."""
        try:
            return orjson.dumps(value)
        except TypeError:  # what orjson refuses (integers past 64 bits) json still writes
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

except ImportError:  # pragma: no cover - exercised only without orjson

    def json_bytes(value: Any) -> bytes:
        """JSON-encode a request body."""
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class UpstreamTransportError(Exception):
    """The connection failed after it was made (reset, protocol error)."""


class UpstreamConnectError(UpstreamTransportError):
    """No connection could be made."""


class UpstreamTimeoutError(UpstreamTransportError):
    """The upstream took longer than its timeout to connect or to send."""


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A whole answer; header names are lower-case."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class UpstreamStream(Protocol):
    """An answer whose body is read as it arrives."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The rest of the body (for error answers)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes, in blocks as they arrive (any size, cut anywhere)."""
        ...


class UpstreamClient(Protocol):
    """One provider's pooled connection to its upstream."""

    async def post(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """POST a JSON body; the whole answer. `headers` add to (or replace) the pool's."""
        ...

    def stream(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[UpstreamStream]:
        """POST a JSON body; the answer, its body read as it arrives."""
        ...

    async def aclose(self) -> None:
        """Close the pool."""
        ...

    @property
    def is_closed(self) -> bool:
        """Whether `aclose` has run."""
        ...


def aiohttp_available() -> bool:
    """Whether the optional aiohttp client can be used here."""
    return importlib.util.find_spec("aiohttp") is not None


_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def auto_transport(environ: Mapping[str, str] | None = None) -> str:
    """What `transport = "auto"` means here.

    httptools (installed with `uvicorn[standard]`) costs the least per
    request; only httpx honours a proxy set in the environment, so a proxy
    means httpx.
    """
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in _PROXY_VARIABLES):
        return "httpx"
    if importlib.util.find_spec("httptools") is not None:
        return "httptools"
    return "aiohttp" if aiohttp_available() else "httpx"


def open_upstream(
    kind: str,
    *,
    base_url: str,
    headers: Mapping[str, str],
    timeout_s: float,
    connect_timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> UpstreamClient:
    """The client a provider's `transport` setting names.

    An explicit httpx `transport` (a fake in tests, a proxy) always means httpx.
    """
    if transport is not None:
        kind = "httpx"
    elif kind == "auto":
        kind = auto_transport()
    options: dict[str, Any] = {
        "base_url": base_url,
        "headers": headers,
        "timeout_s": timeout_s,
        "connect_timeout_s": connect_timeout_s,
        "max_connections": max_connections,
    }
    if kind == "httptools":
        from axione_asgi.transports.httptools_client import HttptoolsUpstream

        return HttptoolsUpstream(**options)
    if kind == "aiohttp":
        from axione_asgi.transports.aiohttp_client import AiohttpUpstream

        return AiohttpUpstream(**options)
    from axione_asgi.transports.httpx_client import HttpxUpstream

    return HttpxUpstream(**options, transport=transport)
