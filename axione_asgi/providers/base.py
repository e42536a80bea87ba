"""The Provider protocol, the shared HTTP plumbing of built-ins, and the registry."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast, runtime_checkable

from axione_asgi.aliases import Aliases, match_glob
from axione_asgi.config import ProviderConfig
from axione_asgi.errors import (
    AxioneError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    ProviderUnavailable,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    scrub_secrets,
)
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
)
from axione_asgi.sse import EventTooLarge, SSEDecoder, SSEEvent
from axione_asgi.transports import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamStream,
    UpstreamTimeoutError,
    UpstreamTLSError,
    UpstreamTooLargeError,
    UpstreamTransportError,
    json_bytes,
    open_upstream,
)

if TYPE_CHECKING:  # httpx loads only when a provider uses it (start-up time)
    import httpx

T = TypeVar("T")

__all__ = [
    "BatchStreamingProvider",
    "EmbeddingProvider",
    "HTTPProvider",
    "ModelRoute",
    "NativeProvider",
    "Provider",
    "ProviderRegistry",
    "TokenCountingProvider",
    "answer_too_large",
    "event_limit",
    "flatten",
    "native_dialects_of",
    "too_large",
]


@runtime_checkable
class Provider(Protocol):
    """A chat backend. Built-ins and a user's own providers implement exactly this.

    `model` is the provider-local public name (`gpt-4o` of `openai/gpt-4o`);
    the provider maps it to its upstream's id. Errors are raised as
    `axione_asgi.errors.AxioneError` subclasses.
    """

    def models(self) -> Sequence[str]:
        """The public model names this provider serves."""
        ...

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        """One whole completion."""
        ...

    def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Chunks as the upstream produces them, ending with a usage-only chunk."""
        ...

    async def open(self) -> None:
        """Acquire resources (connection pools); called once at start-up."""
        ...

    async def aclose(self) -> None:
        """Release them; called once at shutdown."""
        ...


@runtime_checkable
class BatchStreamingProvider(Protocol):
    """A provider that can also stream chunks in batches: an optional second face.

    One batch holds the chunks that arrived together (one network read of
    the upstream's answer); the router sends each batch to the client in
    one write. Nothing waits to fill a batch: under load several chunks are
    often already there, and passing them on together saves a write and a
    trip through every layer per chunk.
    """

    def stream_batches(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[list[ChatCompletionChunk]]:
        """Non-empty lists of chunks, in order; the same chunks as `stream()`."""
        ...


@runtime_checkable
class EmbeddingProvider(Protocol):
    """A provider that also serves `/embeddings`; an optional second face of a Provider."""

    def embedding_models(self) -> Sequence[str]:
        """The public embedding model names this provider serves."""
        ...

    async def embed(self, request: EmbeddingRequest, model: str) -> EmbeddingResponse:
        """Float vectors for the request's inputs (the router encodes base64)."""
        ...


@runtime_checkable
class NativeProvider(Protocol):
    """A provider whose upstream speaks a client dialect itself: the pass-through face.

    For `dialect` (say "anthropic-messages") and one of its operations
    ("messages", "count_tokens"), the client's parsed body goes upstream as
    sent but for its `model`, with the client's dialect headers (`headers`);
    the answer comes back as the upstream wrote it. An error answer raises
    the mapped `AxioneError` (so retries and fallbacks judge it) with the
    upstream's own answer in its `native`.
    """

    def native_dialects(self) -> frozenset[str]:
        """The client dialects this provider's upstream speaks."""
        ...

    async def forward(
        self,
        dialect: str,
        operation: str,
        body: dict[str, Any],
        model: str,
        headers: Mapping[str, str],
    ) -> UpstreamResponse:
        """One whole answer."""
        ...

    def forward_stream(
        self,
        dialect: str,
        operation: str,
        body: dict[str, Any],
        model: str,
        headers: Mapping[str, str],
    ) -> AbstractAsyncContextManager[UpstreamStream]:
        """The answer, read as it arrives, once its status is known good."""
        ...


def native_dialects_of(provider: Provider) -> frozenset[str]:
    """The client dialects a provider passes through (none unless it is a `NativeProvider`)."""
    if isinstance(provider, NativeProvider):
        return provider.native_dialects()
    return frozenset()


@runtime_checkable
class TokenCountingProvider(Protocol):
    """A provider whose upstream counts a prompt's tokens (Gemini's countTokens)."""

    async def count_tokens(self, request: ChatCompletionRequest, model: str) -> int:
        """The prompt tokens of `request` as the upstream counts them."""
        ...


class HTTPProvider:
    """Shared plumbing for built-ins that call an HTTP upstream with one pooled client.

    Subclasses translate; this class owns the client, the model mapping and the
    mapping of transport failures and upstream statuses to SPEC errors.
    """

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.api_key = api_key
        self._transport = transport
        self._client: UpstreamClient | None = None

    # -- lifecycle -----------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate to the upstream; subclasses override."""
        return {}

    async def open(self) -> None:
        if self._client is not None:
            return
        cfg = self.config
        self._client = open_upstream(
            cfg.transport,
            base_url=cfg.resolved_base_url(),
            headers={**self.auth_headers(), **cfg.headers},
            timeout_s=cfg.timeout_s,
            connect_timeout_s=cfg.connect_timeout_s,
            max_connections=cfg.max_connections,
            transport=self._transport,
            ca_file=cfg.ca_file,
            max_response_bytes=cfg.max_response_bytes,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    #: Whether calls need an upstream key (local OpenAI-compatible servers do not).
    requires_key = True

    @property
    def client(self) -> UpstreamClient:
        if self.requires_key and not self.api_key:
            env = f": set {self.config.api_key_env}" if self.config.api_key_env else ""
            raise ProviderUnavailable(f"Provider '{self.name}' has no API key configured{env}")
        if self._client is None:
            raise ProviderUnavailable(f"Provider '{self.name}' is not started")
        return self._client

    # -- models --------------------------------------------------------------
    def models(self) -> Sequence[str]:
        return list(self.config.models)

    def embedding_models(self) -> Sequence[str]:
        return list(self.config.embedding_models)

    def upstream_embedding_model(self, model: str) -> str:
        """The upstream's own id for a public embedding model name."""
        try:
            return self.config.embedding_models[model]
        except KeyError:
            raise ModelNotFound(f"{self.name}/{model}") from None

    def upstream_model(self, model: str) -> str:
        """The upstream's own id for a public model name (or one a `*` pattern matches)."""
        models = self.config.models
        found = models.get(model)
        if found is not None:
            return found
        for pattern, target in models.items():
            matched = match_glob(pattern, model)
            if matched is not None:
                return target.replace("*", matched)
        raise ModelNotFound(f"{self.name}/{model}")

    # -- errors --------------------------------------------------------------
    def scrub(self, text: str) -> str:
        return scrub_secrets(text, self.api_key or "")

    def upstream_message(self, body: bytes) -> str:
        """The human message inside an upstream error body; subclasses refine."""
        try:
            data = json.loads(body)
        except ValueError:
            return body[:300].decode("utf-8", "replace").strip()
        if isinstance(data, list) and data:
            data = data[0]
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict):
                msg = err.get("message") or err.get("detail")
                if isinstance(msg, str):
                    return msg
            if isinstance(err, str):
                return err
            detail = data.get("detail") or data.get("message")
            if isinstance(detail, str):
                return detail
        return ""

    def error_for_status(self, status: int, body: bytes, headers: Mapping[str, str]) -> AxioneError:
        """Map an upstream error answer to the SPEC error the client sees."""
        detail = self.scrub(self.upstream_message(body))
        said = f": {detail}" if detail else ""
        who = f"Provider '{self.name}'"
        # The upstream's wait hints: the retry honours them, and a client that
        # gets the error sees them too.
        wait = {k: v for k in ("retry-after", "retry-after-ms") if (v := headers.get(k))}
        if status in (401, 403):
            return UpstreamError(
                f"{who} rejected the gateway's credentials (upstream status {status})",
                code="upstream_auth_failed",
            )
        if status == 429:
            return RateLimited(
                f"{who} is rate limiting requests{said}",
                code="upstream_rate_limited",
                headers=wait or None,
            )
        if status == 404:
            return NotFound(f"{who} answered 404{said}", code="model_not_found")
        if status in (400, 413, 422):
            return InvalidRequest(
                f"{who} rejected the request{said}", code="upstream_invalid_request"
            )
        if status == 504 or status == 408:
            return UpstreamTimeout(f"{who} timed out (upstream status {status}){said}")
        if status in (503, 529):
            return UpstreamError(
                f"{who} is overloaded (upstream status {status}){said}",
                code="upstream_overloaded",
                status=503,
                headers=wait or None,
            )
        return UpstreamError(f"{who} failed with status {status}{said}")

    @contextmanager
    def transport_errors(self) -> Iterator[None]:
        """Turn transport failures into SPEC errors, naming no secret."""
        try:
            yield
        except UpstreamTimeoutError:
            raise UpstreamTimeout(f"Provider '{self.name}' did not answer in time") from None
        except UpstreamTLSError as exc:  # logged (once) by the client
            raise UpstreamError(
                f"Provider '{self.name}': {exc}", code="upstream_tls_error"
            ) from None
        except UpstreamConnectError:
            raise ProviderUnavailable(f"Provider '{self.name}' could not be reached") from None
        except UpstreamTooLargeError as exc:
            raise answer_too_large(self.name, exc) from None
        except UpstreamTransportError as exc:
            raise UpstreamError(f"Provider '{self.name}' connection failed: {exc}") from None

    # -- calls ---------------------------------------------------------------
    async def post_bytes(
        self, path: str, payload: Any, params: Mapping[str, str] | None = None
    ) -> bytes:
        """POST JSON, return the answer's body or raise the mapped error."""
        with self.transport_errors():
            response = await self.client.post(path, json_bytes(payload), params)
        if response.status >= 300:  # a redirect is not followed: it is a failure
            raise self.error_for_status(response.status, response.body, response.headers)
        return response.body

    async def post_json(
        self, path: str, payload: Any, params: Mapping[str, str] | None = None
    ) -> Any:
        """POST JSON, return the decoded JSON answer or raise the mapped error."""
        body = await self.post_bytes(path, payload, params)
        try:
            return json.loads(body)
        except ValueError:
            raise UpstreamError(f"Provider '{self.name}' answered with invalid JSON") from None

    async def forward_bytes(
        self, path: str, body: bytes, headers: Mapping[str, str], native: str
    ) -> UpstreamResponse:
        """POST a client's body as it is; an error answer raises, keeping it in `native`."""
        with self.transport_errors():
            response = await self.client.post(path, body, None, headers)
        if response.status >= 300:  # a redirect is not followed: it is a failure
            raise self.native_error(native, response.status, response.body, response.headers)
        return response

    @asynccontextmanager
    async def forward_stream_bytes(
        self, path: str, body: bytes, headers: Mapping[str, str], native: str
    ) -> AsyncIterator[UpstreamStream]:
        """As `forward_bytes`, the answer read as it arrives."""
        with self.transport_errors():
            async with self.client.stream(path, body, None, headers) as response:
                if response.status >= 300:  # a redirect is not followed: it is a failure
                    error_body = await response.read()
                    raise self.native_error(native, response.status, error_body, response.headers)
                yield response

    def native_error(
        self, dialect: str, status: int, body: bytes, headers: Mapping[str, str]
    ) -> AxioneError:
        """The mapped error of an upstream's answer, carrying that answer for its dialect.

        The upstream's rejection of the gateway's own credentials is not
        passed on: the client's key is fine, and its client must not think
        otherwise (nor see the upstream's words about our key).
        """
        error = self.error_for_status(status, body, headers)
        if status not in (401, 403) and body.lstrip().startswith(b"{"):
            # A JSON error is the upstream's answer in the dialect; anything else
            # (a proxy's HTML page) is better said in the gateway's words.
            error.native = (dialect, status, self.scrub(body.decode("utf-8", "replace")).encode())
        return error

    @asynccontextmanager
    async def post_events(
        self, path: str, payload: Any, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        """POST JSON and yield the answer's server-sent events once the status is known good.

        Errors before the first byte raise here, so the router can still answer
        with a proper status; transport failures mid-stream raise from the events.
        """
        async with self.post_event_batches(path, payload, params) as batches:
            yield flatten(batches)

    @asynccontextmanager
    async def post_event_batches(
        self, path: str, payload: Any, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[AsyncIterator[list[SSEEvent]]]:
        """As `post_events`, the events in non-empty lists: those of one network read each."""
        async with self._post_streaming(path, payload, params) as response:
            yield self._event_batches(response.chunks())

    @asynccontextmanager
    async def post_stream(
        self, path: str, payload: Any, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[AsyncIterator[str]]:
        """POST JSON and yield the answer's lines (decoded, without line endings).

        For upstreams that stream something else than server-sent events
        (JSON lines, say); errors are raised as by `post_events`.
        """
        async with self._post_streaming(path, payload, params) as response:
            yield self._lines(response.chunks())

    @asynccontextmanager
    async def _post_streaming(
        self, path: str, payload: Any, params: Mapping[str, str] | None
    ) -> AsyncIterator[UpstreamStream]:
        with self.transport_errors():
            async with self.client.stream(path, json_bytes(payload), params) as response:
                if response.status >= 300:  # a redirect is not followed: it is a failure
                    body = await response.read()
                    raise self.error_for_status(response.status, body, response.headers)
                yield response

    async def _event_batches(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[list[SSEEvent]]:
        # One async step per network read, not per line: see SSEDecoder.
        decoder = SSEDecoder(self.config.max_event_bytes)
        with self.transport_errors(), self.too_large():
            async for chunk in chunks:
                events = decoder.feed(chunk)
                if events:
                    yield events
            events = decoder.close()
            if events:
                yield events

    @contextmanager
    def too_large(self) -> Iterator[None]:
        """One event past `max_event_bytes`: the answer is refused, as too large."""
        try:
            yield
        except EventTooLarge as exc:
            raise answer_too_large(self.name, exc) from None

    async def _lines(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
        # An unfinished line is kept in pieces, joined once it ends: linear in its size.
        pending: list[bytes] = []
        with self.transport_errors():
            async for chunk in chunks:
                if b"\n" not in chunk:
                    pending.append(chunk)
                    continue
                first, *complete, rest = chunk.split(b"\n")
                pending.append(first)
                for line in (b"".join(pending), *complete):
                    yield line.rstrip(b"\r").decode("utf-8", "replace")
                pending = [rest]
        tail = b"".join(pending)
        if tail:
            yield tail.rstrip(b"\r").decode("utf-8", "replace")


def event_limit(route: ModelRoute) -> int:
    """The largest one event a route's upstream may send (0: no bound)."""
    config = getattr(route.provider, "config", None)
    limit = getattr(config, "max_event_bytes", 0)
    return limit if isinstance(limit, int) else 0


def answer_too_large(provider_name: str, exc: Exception) -> UpstreamError:
    """The 502 for an upstream answer past its bound (not retried: it would be as large)."""
    return UpstreamError(
        f"Provider '{provider_name}' sent an answer too large: {exc}",
        code="upstream_answer_too_large",
    )


def too_large(route: ModelRoute, exc: Exception) -> UpstreamError:
    """`answer_too_large` for a route's provider."""
    return answer_too_large(route.provider_name, exc)


async def flatten(batches: AsyncIterator[list[T]]) -> AsyncIterator[T]:
    """The items of each batch, one by one (a batch-streaming method's one-by-one face)."""
    async for batch in batches:
        for item in batch:
            yield item


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """Where a public `provider/model` id goes."""

    public_id: str
    provider_name: str
    model: str
    provider: Provider
    kind: Literal["chat", "embedding"] = "chat"
    # The client dialects its provider passes through: decided once, at start-up
    # (`isinstance` against a runtime-checkable Protocol costs microseconds).
    native: frozenset[str] = frozenset()

    def native_face(self, dialect: str) -> NativeProvider | None:
        """The provider's pass-through face for `dialect`, or None."""
        if dialect in self.native:
            return cast(NativeProvider, self.provider)
        return None

    @property
    def embedder(self) -> EmbeddingProvider:
        """The provider's embedding face (only on embedding routes)."""
        assert isinstance(self.provider, EmbeddingProvider)
        return self.provider


class ProviderRegistry:
    """Resolves `provider/model` ids and aliases to providers; built once at start-up.

    A provider's model name holding a `*` (`"claude-*" = "claude-*"` in its
    `models`) is a pattern: any name it matches is served, and none is
    listed in `/models`.

    `unavailable` names providers the gateway knows but does not serve here
    (no key set), each with what enables it: their models are a 503
    `provider_unavailable` saying so, not a 404 that reads as if they did not exist.
    """

    def __init__(
        self,
        providers: Mapping[str, Provider],
        aliases: Aliases | None = None,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        self.providers = dict(providers)
        self.aliases = aliases or Aliases()
        self.unavailable = {k: v for k, v in (unavailable or {}).items() if k not in providers}
        self._routes: dict[str, ModelRoute] = {}
        self._embedding_routes: dict[str, ModelRoute] = {}
        self._patterns: dict[str, list[str]] = {}
        self._native = {name: native_dialects_of(p) for name, p in self.providers.items()}
        for pname, provider in self.providers.items():
            for model in provider.models():
                if "*" in model:
                    self._patterns.setdefault(pname, []).append(model)
                    continue
                public = f"{pname}/{model}"
                self._routes[public] = ModelRoute(
                    public, pname, model, provider, native=self._native[pname]
                )
            if isinstance(provider, EmbeddingProvider):
                for model in provider.embedding_models():
                    public = f"{pname}/{model}"
                    route = ModelRoute(public, pname, model, provider, "embedding")
                    self._embedding_routes[public] = route

    def resolve(self, public_id: str) -> ModelRoute:
        """The chat route for a public id or an alias, or `ModelNotFound`."""
        route = self._routes.get(public_id)
        if route is None:
            target = self.aliases.target(public_id)
            route = self._routes.get(target) if target else None
            if route is None:
                route = self._matched(target or public_id)
        if route is None:
            if public_id in self._embedding_routes:
                raise InvalidRequest(
                    f"Model '{public_id}' is an embedding model: use /embeddings",
                    code="model_not_supported",
                    param="model",
                )
            self._check_available(public_id, target or public_id)
            raise ModelNotFound(public_id)
        return route

    def _check_available(self, public_id: str, target: str) -> None:
        """`ProviderUnavailable` when `target` names a known provider that is not served."""
        reason = self.unavailable.get(target.partition("/")[0]) if "/" in target else None
        if reason is not None:
            raise ProviderUnavailable(
                f"Model '{public_id}' is not available. {reason}", param="model"
            )

    def _matched(self, public_id: str) -> ModelRoute | None:
        # Made anew each time: names come from clients, and a cache of them would grow.
        pname, _, model = public_id.partition("/")
        for pattern in self._patterns.get(pname, ()):
            if match_glob(pattern, model) is not None:
                return ModelRoute(
                    public_id, pname, model, self.providers[pname], native=self._native[pname]
                )
        return None

    def resolve_embedding(self, public_id: str) -> ModelRoute:
        """The embedding route for a public id, or a clear error."""
        route = self._embedding_routes.get(public_id)
        if route is None:
            if public_id in self._routes:
                raise InvalidRequest(
                    f"Model '{public_id}' is a chat model and does not make embeddings",
                    code="model_not_supported",
                    param="model",
                )
            self._check_available(public_id, public_id)
            raise ModelNotFound(public_id)
        return route

    def routes(self) -> list[ModelRoute]:
        """Every model, chat first then embedding, in registration order."""
        return [*self._routes.values(), *self._embedding_routes.values()]

    async def open_all(self) -> None:
        for provider in self.providers.values():
            await provider.open()

    async def close_all(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
