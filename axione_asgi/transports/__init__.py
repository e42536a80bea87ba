"""Upstream HTTP clients behind one small interface: aiohttp (default), httpx, httptools.

Providers speak to their upstream through `UpstreamClient`: POST a JSON body,
get the answer whole or as lines. aiohttp (a core dependency) is the default:
a well-kept client that costs several times less CPU per request than httpx,
which is most of a gateway's own cost. httpx's client is used when a proxy is
set in the environment (only it honours one) and takes any
`httpx.AsyncBaseTransport` (tests mount fakes with `httpx.ASGITransport`).
The httptools client, a lean HTTP/1.1 pool of our own, is there for whoever
asks for it (`transport = "httptools"`): the last bit of CPU, no proxies.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import ssl
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
    "UpstreamTLSError",
    "UpstreamTimeoutError",
    "UpstreamTooLargeError",
    "UpstreamTransportError",
    "aiohttp_available",
    "auto_transport",
    "json_bytes",
    "open_upstream",
    "tls_context",
    "tls_error",
]

logger = logging.getLogger("axione")

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


class UpstreamTooLargeError(UpstreamTransportError):
    """A whole answer grew past the client's `max_response_bytes`: it was not read further."""


class UpstreamTLSError(UpstreamConnectError):
    """The TLS handshake failed: the upstream's certificate did not verify, or worse."""


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The context every client verifies an https upstream's certificate with.

    With a provider's `ca_file` (a PEM bundle, or a folder of hashed
    certificates as `openssl rehash` makes), only what it holds is trusted:
    a private upstream's own CA. Otherwise the system's store, as aiohttp
    and `ssl.create_default_context()` use it, in which `SSL_CERT_FILE` and
    `SSL_CERT_DIR`, when set, name the bundle and the folder instead of the
    system's; when neither is set, certifi's bundle (httpx's) is trusted as
    well, for systems whose own store is empty. A file named here that
    cannot be read is an `UpstreamTLSError` naming it, not an empty store.
    """
    if ca_file is not None:
        return _load(None, ca_file, "ca_file")
    cert_file = os.environ.get("SSL_CERT_FILE") or None
    cert_dir = os.environ.get("SSL_CERT_DIR") or None
    context = ssl.create_default_context()  # OpenSSL reads both variables here...
    if cert_file is not None:  # ... and skips what they name when it is missing
        _load(context, cert_file, "SSL_CERT_FILE")
    if cert_dir is not None:
        _load(context, cert_dir, "SSL_CERT_DIR")
    if cert_file is None and cert_dir is None:
        try:
            import certifi
        except ImportError:  # pragma: no cover - httpx depends on certifi
            pass
        else:
            context.load_verify_locations(cafile=certifi.where())
    return context


def _load(context: ssl.SSLContext | None, path: str, source: str) -> ssl.SSLContext:
    """`context` (or a new default one) trusting the certificates at `path` too."""
    folder = os.path.isdir(path)
    try:
        if context is None:  # only these: no system store
            if folder:
                return ssl.create_default_context(capath=path)
            return ssl.create_default_context(cafile=path)
        if folder:
            context.load_verify_locations(capath=path)
        else:
            context.load_verify_locations(cafile=path)
        return context
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UpstreamTLSError(
            f"{source} {path!r} holds no usable CA certificate ({reason})"
        ) from None


def tls_error(exc: BaseException, origin: str, logged: set[str]) -> UpstreamTLSError | None:
    """The `UpstreamTLSError` that a failed connection attempt means, if TLS failed.

    `exc` is the client's own exception (whose causes are searched for the
    `ssl` one). A certificate failure says why it failed ("self-signed
    certificate", "certificate has expired", a host-name mismatch); the
    first failure of each kind is logged once per client (`logged` holds
    what it has said), naming only the upstream's host and port.
    """
    seen = _ssl_cause(exc)
    if isinstance(exc, UpstreamTLSError):  # the trusted certificates could not be loaded
        message = str(exc)
    elif seen is None:
        return None
    elif isinstance(seen, ssl.SSLCertVerificationError):
        why = getattr(seen, "verify_message", None) or seen.reason or "unknown reason"
        message = f"TLS certificate verification failed: {why}"
    else:
        message = f"TLS handshake failed: {seen.reason or type(seen).__name__}"
    if message not in logged:
        logged.add(message)
        logger.warning("upstream %s: %s", origin, message)
    return exc if isinstance(exc, UpstreamTLSError) else UpstreamTLSError(message)


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(8):  # the ssl error sits a cause or two deep in httpx's and aiohttp's
        if seen is None:
            return None
        wrapped = getattr(seen, "os_error", None)  # aiohttp's, itself an SSLError subclass
        if isinstance(wrapped, BaseException) and wrapped is not seen:
            seen = wrapped
        elif isinstance(seen, ssl.SSLError):
            return seen
        else:
            seen = seen.__cause__ or seen.__context__
    return None


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
    """Whether aiohttp can be imported here (a dependency, unless installed without it)."""
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

    aiohttp: well kept, and several times less CPU per request than httpx.
    Only httpx honours a proxy set in the environment, so a proxy means
    httpx; so does an install without aiohttp (`pip install --no-deps`).
    httptools is never chosen here: it is the opt-in for the last bit of
    CPU, with no proxies, redirects or compression.
    """
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in _PROXY_VARIABLES):
        return "httpx"
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
    ca_file: str | None = None,
    max_response_bytes: int = 0,
) -> UpstreamClient:
    """The client a provider's `transport` setting names.

    An explicit httpx `transport` (a fake in tests, a proxy) always means httpx.
    `ca_file` replaces the trusted CAs for an https upstream (`tls_context`);
    one that does not exist is refused here, at start-up.
    """
    if ca_file is not None and not os.path.exists(ca_file):
        raise ValueError(f"ca_file {ca_file!r} does not exist")
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
        "ca_file": ca_file,
        "max_response_bytes": max_response_bytes,
    }
    if kind == "httptools":
        from axione_asgi.transports.httptools_client import HttptoolsUpstream

        return HttptoolsUpstream(**options)
    if kind == "aiohttp":
        from axione_asgi.transports.aiohttp_client import AiohttpUpstream

        return AiohttpUpstream(**options)
    from axione_asgi.transports.httpx_client import HttpxUpstream

    return HttpxUpstream(**options, transport=transport)
