"""The httpx upstream client: the default, and the one that takes any httpx transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import httpx

from axione_asgi.transports import (
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamTimeoutError,
    UpstreamTransportError,
)

__all__ = ["HttpxUpstream"]


@contextmanager
def _mapped_errors() -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamTimeoutError(type(exc).__name__) from None
    except httpx.ConnectError as exc:
        raise UpstreamConnectError(type(exc).__name__) from None
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
    ) -> None:
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
        )

    async def post(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        with _mapped_errors():
            response = await self._client.post(path, content=body, params=params, headers=headers)
        return UpstreamResponse(response.status_code, response.headers, response.content)

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[_Stream]:
        with _mapped_errors():
            async with self._client.stream(
                "POST", path, content=body, params=params, headers=headers
            ) as response:
                yield _Stream(response)

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def is_closed(self) -> bool:
        return self._client.is_closed
