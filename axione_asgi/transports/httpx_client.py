"""The httpx upstream client: the one that honours a proxy, and takes any httpx transport.

`transport = "auto"` chooses it when a proxy is set in the environment
(`HTTPS_PROXY` and the like), or when aiohttp is not installed.

It never follows redirects (`follow_redirects=False`, httpx's default, said
here so that no change of default can make it): a redirect to another origin
would carry the provider's key there. A 3xx is the answer, which providers
treat as an error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

from axione_asgi.transports import (
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
    UpstreamTransportError,
    tls_context,
    tls_error,
)

__all__ = ["HttpxUpstream"]


@contextmanager
def _mapped_errors(origin: str = "", logged: set[str] | None = None) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamTimeoutError(type(exc).__name__) from None
    except httpx.ConnectError as exc:
        failed = tls_error(exc, origin, logged) if logged is not None else None
        raise (failed or UpstreamConnectError(type(exc).__name__)) from None
    except httpx.TransportError as exc:
        raise UpstreamTransportError(type(exc).__name__) from None


class _Stream:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        with _mapped_errors():
            return await self._response.aread()

    async def chunks(self) -> AsyncIterator[bytes]:
        with _mapped_errors():
            async for chunk in self._response.aiter_bytes():
                yield chunk


class HttpxUpstream:
    """An `httpx.AsyncClient` with a keep-alive pool (or the given transport)."""

    def __init__(
        self,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: str | None = None,
        max_response_bytes: int = 0,
    ) -> None:
        url = urlsplit(base_url)
        tls = url.scheme == "https"
        self._origin = f"{url.hostname}:{url.port or (443 if tls else 80)}"
        self._tls_logged: set[str] = set()
        self._max_body = max_response_bytes
        options: dict[str, Any] = {}
        if tls and transport is None:
            # The same trusted certificates as the other clients (transports.tls_context).
            options["verify"] = tls_context(ca_file)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"content-type": "application/json", **headers},
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30,
            ),
            transport=transport,
            follow_redirects=False,
            **options,
        )

    async def post(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        with _mapped_errors(self._origin, self._tls_logged):
            if not self._max_body:
                response = await self._client.post(
                    path, content=body, params=params, headers=headers
                )
                return UpstreamResponse(response.status_code, response.headers, response.content)
            async with self._client.stream(
                "POST", path, content=body, params=params, headers=headers
            ) as streamed:
                chunks: list[bytes] = []
                size = 0
                async for chunk in streamed.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_body:
                        raise UpstreamTooLargeError(f"the answer is over {self._max_body} bytes")
                    chunks.append(chunk)
                return UpstreamResponse(streamed.status_code, streamed.headers, b"".join(chunks))

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[_Stream]:
        with _mapped_errors(self._origin, self._tls_logged):
            async with self._client.stream(
                "POST", path, content=body, params=params, headers=headers
            ) as response:
                yield _Stream(response)

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def is_closed(self) -> bool:
        return self._client.is_closed
