"""The aiohttp upstream client: the default (`transport = "auto"` without a proxy).

httpcore's pool checks every idle connection on every request and runs each
read through anyio, and httpx builds several objects per call; measured here
on one core, a POST through httpx cost about 1.1 ms of CPU, through aiohttp
about 0.08 ms. Under a gateway that is most of the request.

Redirects are never followed (`allow_redirects=False`): aiohttp follows them
by default, and a redirect to another origin would carry the provider's key
(`x-api-key`, `x-goog-api-key`) there. A 3xx is the answer, which providers
treat as an error.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urlencode, urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from axione_asgi.transports import (
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
    UpstreamTransportError,
    tls_context,
    tls_error,
)

__all__ = ["AiohttpUpstream"]


def _mapped(
    exc: BaseException, origin: str = "", logged: set[str] | None = None
) -> UpstreamTransportError:
    if isinstance(exc, aiohttp.ClientConnectorError):
        if logged is not None:
            failed = tls_error(exc, origin, logged)
            if failed is not None:
                return failed
        return UpstreamConnectError(type(exc).__name__)
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeoutError(type(exc).__name__)
    return UpstreamTransportError(type(exc).__name__)


def _lower(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


class _Stream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = _lower(response.headers)

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _mapped(exc) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _mapped(exc) from None


class AiohttpUpstream:
    """One `aiohttp.ClientSession` with a keep-alive pool, created on first use.

    The session is made lazily because aiohttp binds it to the running loop.
    """

    def __init__(
        self,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int,
        ca_file: str | None = None,
        max_response_bytes: int = 0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        url = urlsplit(base_url)
        self._tls = url.scheme == "https"
        self._origin = f"{url.hostname}:{url.port or (443 if self._tls else 80)}"
        self._ca_file = ca_file
        self._max_body = max_response_bytes
        self._tls_logged: set[str] = set()
        self._headers = {"content-type": "application/json", **headers}
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=timeout_s
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        # The same trusted certificates as the other clients (transports.tls_context).
        context: ssl.SSLContext | bool = tls_context(self._ca_file) if self._tls else True
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=30, ssl=context
            ),
            headers=self._headers,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
        )
        return self._session

    def _url(self, path: str, params: Mapping[str, str] | None) -> str:
        url = self._base_url + path
        return f"{url}?{urlencode(params)}" if params else url

    async def post(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        session = self._session or self._open()
        try:
            async with session.post(
                self._url(path, params), data=body, headers=headers, allow_redirects=False
            ) as response:
                if not self._max_body:
                    content = await response.read()
                else:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.content.iter_any():
                        size += len(chunk)
                        if size > self._max_body:
                            raise UpstreamTooLargeError(
                                f"the answer is over {self._max_body} bytes"
                            )
                        chunks.append(chunk)
                    content = b"".join(chunks)
                return UpstreamResponse(response.status, _lower(response.headers), content)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _mapped(exc, self._origin, self._tls_logged) from None

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        body: bytes,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[_Stream]:
        session = self._session or self._open()
        try:
            response = await session.post(
                self._url(path, params), data=body, headers=headers, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _mapped(exc, self._origin, self._tls_logged) from None
        try:
            yield _Stream(response)
        finally:
            # A fully read answer gives its connection back to the pool; a
            # half-read one (a cancelled stream) closes it, so the upstream
            # stops generating at once.
            if response.content.at_eof():
                response.release()
            else:
                response.close()

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def is_closed(self) -> bool:
        return self._closed
