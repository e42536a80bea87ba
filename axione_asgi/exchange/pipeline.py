"""The request path every dialect shares: candidates, admission, cache, retries, streams.

An ingress module parses its dialect into the hub's types (or keeps the
client's body, on pass-through), opens an `Exchange` here, and renders what
comes back. Everything between — which models to try, what to reserve,
the cache, retries and fallbacks, the client going away, what to report to
the quota — is written once, here.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Protocol, TypeVar

import anyio
from starlette.types import Receive, Scope

from axione_asgi.cache import ChatCache
from axione_asgi.config import AxioneConfig
from axione_asgi.errors import AxioneError, ModelNotAllowed, UpstreamTimeout
from axione_asgi.exchange.estimate import DEFAULT_OUTPUT_RESERVE, MINIMAL_ANSWER_TOKENS
from axione_asgi.keys import KeyRecord
from axione_asgi.observability.context import upstream_call
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Usage,
)
from axione_asgi.providers.base import ModelRoute, Provider, ProviderRegistry
from axione_asgi.resilience import RetryPolicy, first_success
from axione_asgi.scope import QuotaHandle, key_of, quota_of, request_id_of
from axione_asgi.streaming import ClientGone, unless_disconnected

__all__ = ["Batch", "Exchange", "Pipeline", "StreamWriter"]

logger = logging.getLogger("axione")

T = TypeVar("T")
Batch = list[ChatCompletionChunk]


class StreamWriter(Protocol):
    """A dialect's stream framing, without I/O: hub chunks in, the client's bytes out."""

    def feed(self, batch: Batch) -> bytes:
        """The bytes for one batch of chunks (b"" when it shows the client nothing)."""
        ...

    def finish(self) -> bytes:
        """The bytes that close a stream that ended well."""
        ...

    def error(self, exc: AxioneError) -> bytes:
        """The bytes that close a stream cut by `exc`."""
        ...


class Exchange:
    """One request's trip: its candidates, its estimate, and what it used.

    The quota handle is read here once per request: admission, the model
    that answered, and the usage report all go through these methods.
    """

    __slots__ = ("candidates", "primary", "prompt_estimate", "quota", "receive", "route", "scope")

    def __init__(
        self, scope: Scope, receive: Receive, candidates: list[ModelRoute], prompt_estimate: int
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.candidates = candidates
        self.primary = candidates[0]
        self.route = candidates[0]
        self.prompt_estimate = prompt_estimate
        self.quota: QuotaHandle | None = quota_of(scope)

    async def admit(self, output_cap: int | None, choices: int = 1) -> int | None:
        """Count the request and reserve the estimate plus every choice's output cap.

        Returns a smaller output cap to send upstream, per choice, when the
        day has less left than the client's cap (or, without one, than the
        default reservation), so that no answer can pass the daily token
        limit (SPEC 3); None when the request may go as it is. A day that
        cannot hold the prompt and a short answer refuses the request (429).
        """
        if self.quota is None:
            return None
        choices = max(1, choices)
        wanted = output_cap or DEFAULT_OUTPUT_RESERVE
        prompt = self.prompt_estimate
        granted = await self.quota.admit(
            reserve_tokens=prompt + choices * wanted,
            minimum_tokens=prompt + choices * MINIMAL_ANSWER_TOKENS,
            model=self.primary.public_id,
            provider=self.primary.provider_name,
        )
        allowed = max(MINIMAL_ANSWER_TOKENS, (granted - prompt) // choices)
        return allowed if allowed < wanted else None

    def model_name(self, asked: str) -> str:
        """The `model` an answer names: what the client asked, or the fallback that answered."""
        return asked if self.route is self.primary else self.route.public_id

    def answered_by(self, route: ModelRoute) -> None:
        """Name the candidate that answered (a fallback, for the ledger)."""
        self.route = route
        if self.quota is not None and route is not self.primary:
            self.quota.answered_by(model=route.public_id, provider=route.provider_name)

    def report(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        estimated: bool = False,
        cache_hit: bool = False,
    ) -> None:
        """The request's real usage (replaces an earlier report)."""
        if self.quota is not None:
            self.quota.report(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                estimated=estimated,
                cache_hit=cache_hit,
            )

    def report_usage(self, usage: Usage | None, chars_out: int) -> None:
        """The upstream's counts, or the estimate when it gave none."""
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            self.report(usage.prompt_tokens, usage.completion_tokens)
        else:
            self.report(self.prompt_estimate, math.ceil(chars_out / 4), estimated=True)

    def report_gone(self) -> None:
        """The client left before an answer: the prompt counts, as estimated."""
        self.report(self.prompt_estimate, 0, estimated=True)


class Pipeline:
    """The shared request path over one provider registry."""

    def __init__(
        self, registry: ProviderRegistry, config: AxioneConfig, cache: ChatCache | None = None
    ) -> None:
        self.registry = registry
        self.config = config
        self.cache = cache
        self.retry = RetryPolicy(
            max_retries=config.retry.max_retries,
            backoff_s=config.retry.backoff_s,
            backoff_max_s=config.retry.backoff_max_s,
            deadline_s=config.retry.deadline_s,
        )
        self.first_byte_timeouts = {
            name: cfg.first_byte_timeout_s
            for name, cfg in config.providers.items()
            if cfg.first_byte_timeout_s
        }

    # -- where a request goes ------------------------------------------------
    def candidates(self, names: Iterable[str], key: KeyRecord | None) -> list[ModelRoute]:
        """The models to try, in order: the request's, then the config's fallbacks."""
        named = list(names)
        named += [m for name in list(named) for m in self.config.fallbacks.get(name, ())]
        routes: list[ModelRoute] = []
        for name in dict.fromkeys(named):
            route = self.registry.resolve(name)
            if key is not None and not key.may_use(route.public_id):
                raise ModelNotAllowed(route.public_id)
            routes.append(route)
        return routes

    def open(
        self,
        scope: Scope,
        receive: Receive,
        names: Iterable[str],
        prompt_estimate: int | Callable[[str], int],
    ) -> Exchange:
        """An exchange for a request naming `names` (its model first).

        `prompt_estimate` may depend on the kind of provider the request goes
        to first (images are priced differently): a function of that kind.
        """
        candidates = self.candidates(names, key_of(scope))
        if callable(prompt_estimate):
            prompt_estimate = prompt_estimate(provider_kind(candidates[0].provider))
        return Exchange(scope, receive, candidates, prompt_estimate)

    # -- the response cache --------------------------------------------------
    def cache_key(
        self,
        exchange: Exchange,
        request: ChatCompletionRequest,
        headers: Mapping[str, str],
        variant: str = "",
    ) -> str | None:
        """The cache entry of a request, or None when it must not be cached."""
        if self.cache is None:
            return None
        key = key_of(exchange.scope)
        return self.cache.key_for(request, headers, key.id if key else None, variant=variant)

    async def cached(self, exchange: Exchange, cache_key: str | None) -> bytes | None:
        """A cached answer body; a hit is admitted as one request and no tokens."""
        if cache_key is None or self.cache is None:
            return None
        body = await self.cache.get(cache_key)
        if body is not None and exchange.quota is not None:
            primary = exchange.primary
            await exchange.quota.admit(model=primary.public_id, provider=primary.provider_name)
            exchange.report(0, 0, cache_hit=True)
        return body

    async def keep(self, cache_key: str | None, body: bytes) -> None:
        """Keep an answer body in the cache."""
        if cache_key is not None and self.cache is not None:
            await self.cache.put(cache_key, body)

    # -- asking the upstreams ------------------------------------------------
    async def first_success(
        self, exchange: Exchange, call: Callable[[ModelRoute], Awaitable[T]]
    ) -> T:
        """`call` on each candidate until one succeeds (retries and fallbacks), observed."""
        scope = exchange.scope

        async def observed(route: ModelRoute) -> T:
            async with upstream_call(scope, route):
                return await call(route)

        route, answer = await first_success(exchange.candidates, observed, self.retry)
        exchange.answered_by(route)
        return answer

    async def complete(
        self,
        exchange: Exchange,
        call: Callable[[ModelRoute], Awaitable[T]],
    ) -> T | None:
        """A whole answer, or None when the client went away meanwhile (then reported)."""
        try:
            return await unless_disconnected(
                exchange.receive, lambda: self.first_success(exchange, call)
            )
        except ClientGone:
            exchange.report_gone()
            return None

    async def chat(self, exchange: Exchange, chat: ChatCompletionRequest) -> ChatCompletion | None:
        """A whole hub completion from the first candidate that answers; reported."""

        async def ask(route: ModelRoute) -> ChatCompletion:
            return await route.provider.chat(chat, route.model)

        completion = await self.complete(exchange, ask)
        if completion is not None:
            chars_out = sum(len(c.message.content or "") for c in completion.choices)
            exchange.report_usage(completion.usage, chars_out)
        return completion

    async def open_stream(
        self, exchange: Exchange, chat: ChatCompletionRequest
    ) -> tuple[Batch | None, AsyncIterator[Batch]]:
        """A hub stream from the first candidate whose first chunk arrives."""

        async def open_one(route: ModelRoute) -> tuple[Batch | None, AsyncIterator[Batch]]:
            return await self.first_batch(chat, route)

        return await self.first_success(exchange, open_one)

    async def first_batch(
        self, chat: ChatCompletionRequest, route: ModelRoute
    ) -> tuple[Batch | None, AsyncIterator[Batch]]:
        chunks = _batches(route.provider, chat, route.model)
        # The first chunk is awaited here, so an upstream that fails before its
        # first byte still gets a proper HTTP status, a retry or a fallback.
        timeout = self.first_byte_timeouts.get(route.provider_name)
        try:
            if timeout is None:
                return await anext(chunks, None), chunks
            async with asyncio.timeout(timeout):
                return await anext(chunks, None), chunks
        except BaseException as exc:
            await _close(chunks)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    f"Provider '{route.provider_name}' sent nothing within {timeout:g} seconds"
                ) from None
            raise

    async def write_stream(
        self,
        exchange: Exchange,
        first: Batch | None,
        batches: AsyncIterator[Batch],
        writer: StreamWriter,
    ) -> AsyncIterator[bytes]:
        """The client's bytes for a hub stream; usage is reported even when it is cut."""
        usage: Usage | None = None
        chars_out = 0
        batch = first
        next_batch = batches.__anext__
        try:
            while batch is not None:
                for chunk in batch:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.delta.content:
                            chars_out += len(choice.delta.content)
                out = writer.feed(batch)
                if out:
                    yield out
                try:
                    batch = await next_batch()
                except StopAsyncIteration:
                    batch = None
            yield writer.finish()
        except AxioneError as exc:
            yield writer.error(exc)
        except Exception:
            request_id = request_id_of(exchange.scope)
            logger.exception("stream failed in request %s", request_id)
            yield writer.error(
                AxioneError(f"The stream failed unexpectedly; request id {request_id}")
            )
        finally:
            exchange.report_usage(usage, chars_out)
            await _close(batches)


def provider_kind(provider: Provider) -> str:
    """The wire format a provider speaks (`openai`, `anthropic`, ...), `custom` if unknown."""
    config = getattr(provider, "config", None)
    kind = getattr(config, "kind", None)
    return kind if isinstance(kind, str) else "custom"


def _batches(provider: Provider, chat: ChatCompletionRequest, model: str) -> AsyncIterator[Batch]:
    """The provider's chunks in batches: its own (`BatchStreamingProvider`), or one chunk each."""
    stream_batches = getattr(provider, "stream_batches", None)
    if stream_batches is not None:
        batches: AsyncIterator[Batch] = aiter(stream_batches(chat, model))
        return batches
    return _one_by_one(provider.stream(chat, model))


async def _one_by_one(chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[Batch]:
    try:
        async for chunk in chunks:
            yield [chunk]
    finally:
        await _close(chunks)


async def _close(iterator: object) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is not None:
        with anyio.CancelScope(shield=True):
            await closer()
