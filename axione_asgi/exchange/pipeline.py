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
from contextlib import AbstractAsyncContextManager, AsyncExitStack
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
    ChunkChoice,
    Delta,
    Usage,
)
from axione_asgi.providers.base import ModelRoute, Provider, ProviderRegistry
from axione_asgi.resilience import RetryPolicy, first_success
from axione_asgi.scope import QuotaHandle, key_of, quota_of, request_id_of
from axione_asgi.streaming import ClientGone, StreamCut, unless_disconnected
from axione_asgi.transports import UpstreamStream

__all__ = ["Batch", "Exchange", "Pipeline", "StreamWriter"]

logger = logging.getLogger("axione")

# Usage an upstream reports is believed up to this many times what was
# reserved, plus some tokens; and never past a trillion or below zero.
_SLACK = 8
_SLACK_TOKENS = 10_000
_MAX_COUNT = 10**12
# A stream's (idle, whole) timeouts when its provider has no table of its own.
_STREAM_LIMITS = (120.0, 1800.0)
# Content events a stream may send past its cap before it is ended there.
_EVENT_SLACK = 8

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

    __slots__ = (
        "attempts",
        "candidates",
        "choices",
        "output_cap",
        "primary",
        "prompt_estimate",
        "quota",
        "receive",
        "reserved",
        "route",
        "scope",
    )

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
        # What the admission reserved, and the per-choice cap the upstream got.
        self.reserved = 0
        self.output_cap: int | None = None
        # Upstream calls made, retries and fallbacks included.
        self.attempts = 0
        self.choices = 1

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
        choices = self.choices = max(1, choices)
        wanted = output_cap or DEFAULT_OUTPUT_RESERVE
        prompt = self.prompt_estimate
        granted = await self.quota.admit(
            reserve_tokens=prompt + choices * wanted,
            minimum_tokens=prompt + choices * MINIMAL_ANSWER_TOKENS,
            model=self.primary.public_id,
            provider=self.primary.provider_name,
        )
        self.reserved = granted
        allowed = max(MINIMAL_ANSWER_TOKENS, (granted - prompt) // choices)
        self.output_cap = (
            min(allowed, wanted) if output_cap else (allowed if allowed < wanted else None)
        )
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
        """The request's real usage (replaces an earlier report).

        An upstream's counts are checked first: negative, absurd (past a
        trillion) or far past what was reserved, they are not believed; the
        estimate is counted instead, flagged as estimated.
        """
        if not estimated and not self._plausible(prompt_tokens, completion_tokens):
            logger.warning(
                "implausible usage from %s (%r prompt, %r completion tokens): estimated instead",
                self.route.provider_name,
                prompt_tokens,
                completion_tokens,
            )
            prompt_tokens = self.prompt_estimate
            completion_tokens = max(0, self.reserved - self.prompt_estimate)
            estimated = True
        if self.quota is not None:
            self.quota.report(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                estimated=estimated,
                cache_hit=cache_hit,
            )

    def _plausible(self, prompt: int, completion: int) -> bool:
        if not (0 <= prompt <= _MAX_COUNT and 0 <= completion <= _MAX_COUNT):
            return False
        # A prompt is what was sent (the estimate leans up) and an answer at
        # most its cap: an upstream may miss by some, never by orders.
        bound = _SLACK * (self.reserved or self.prompt_estimate + DEFAULT_OUTPUT_RESERVE)
        return prompt + completion <= bound + _SLACK_TOKENS

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
            max_attempts=config.retry.max_attempts,
        )
        self.stream_limits = {
            name: (cfg.stream_idle_timeout_s, cfg.stream_timeout_s)
            for name, cfg in config.providers.items()
        }
        self.first_byte_timeouts = {
            name: cfg.first_byte_timeout_s
            for name, cfg in config.providers.items()
            if cfg.first_byte_timeout_s
        }

    # -- where a request goes ------------------------------------------------
    def candidates(self, names: Iterable[str], key: KeyRecord | None) -> list[ModelRoute]:
        """The models to try, in order: the request's, then the config's fallbacks.

        A model the request names that the key may not use is a 403; a
        configured fallback the key may not use is skipped.
        """
        named = list(names)
        fallbacks = [m for name in named for m in self.config.fallbacks.get(name, ())]
        asked = set(named)
        routes: list[ModelRoute] = []
        for name in dict.fromkeys(named + fallbacks):
            route = self.registry.resolve(name)
            if key is not None and not key.may_use(route.public_id):
                if name not in asked:
                    continue
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

    def cache_key_of(
        self,
        exchange: Exchange,
        chat: Callable[[], ChatCompletionRequest],
        headers: Mapping[str, str],
        variant: str,
        cacheable: bool,
    ) -> str | None:
        """`cache_key` for another dialect's request, its hub form made only when needed."""
        if not cacheable or self.cache is None:
            return None
        return self.cache_key(exchange, chat(), headers, variant=variant)

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
            exchange.attempts += 1
            async with upstream_call(scope, route):
                return await call(route)

        try:
            route, answer = await first_success(exchange.candidates, observed, self.retry)
        finally:
            if exchange.quota is not None:
                exchange.quota.attempted(exchange.attempts)
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
        """The client's bytes for a hub stream; usage is reported even when it is cut.

        Bounded: a stream that sends nothing for the provider's idle timeout,
        or runs past its whole timeout, ends with an error event; one that
        goes on past the output cap it was sent (each content event carries
        a token at least) is ended there, as cut by its length.
        """
        usage: Usage | None = None
        chars_out = 0
        batch = first
        next_batch = batches.__anext__
        idle_s, total_s = self.stream_limits.get(exchange.route.provider_name, _STREAM_LIMITS)
        clock = _StreamClock(idle_s, total_s)
        cap = exchange.output_cap
        events_left = None if cap is None else cap * exchange.choices + _EVENT_SLACK
        try:
            while batch is not None:
                for chunk in batch:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        delta = choice.delta
                        if delta.content:
                            chars_out += len(delta.content)
                        if events_left is not None and (
                            delta.content or delta.reasoning_content or delta.tool_calls
                        ):
                            events_left -= 1
                out = writer.feed(batch)
                if out:
                    yield out
                if events_left is not None and events_left < 0:
                    # Past the cap it was sent: this upstream would not stop.
                    yield writer.feed([_cut_by_length()])
                    break
                # The clock's wait, written in place: a coroutine per batch showed.
                clock.begin()
                try:
                    batch = await next_batch()
                except StopAsyncIteration:
                    batch = None
                except asyncio.CancelledError:
                    whole = clock.expired_now()
                    if whole is None:
                        raise  # a shutdown or the client: not the clock
                    raise UpstreamTimeout(
                        f"Provider '{exchange.route.provider_name}' "
                        + (
                            f"streamed for more than {total_s:g} seconds"
                            if whole
                            else f"sent nothing for {idle_s:g} seconds"
                        )
                    ) from None
                finally:
                    clock.waiting = False
            yield writer.finish()
        except AxioneError as exc:
            yield writer.error(exc)
        except asyncio.CancelledError:
            yield writer.error(StreamCut())  # see StreamCut: the server is shutting down
            raise
        except Exception:
            request_id = request_id_of(exchange.scope)
            logger.exception("stream failed in request %s", request_id)
            yield writer.error(
                AxioneError(f"The stream failed unexpectedly; request id {request_id}")
            )
        finally:
            clock.stop()
            exchange.report_usage(usage, chars_out)
            await _close(batches)


class _StreamClock:
    """Bounds each wait for a stream's next batch, with one timer for the whole stream.

    An `asyncio.timeout` per batch cost a fifth of a streamed request's CPU;
    this timer wakes once per idle period, and cancels the stream's task only
    while it waits for the upstream (never while it writes to the client).
    """

    __slots__ = ("ends_at", "expired", "handle", "idle_s", "loop", "since", "task", "waiting")

    def __init__(self, idle_s: float, total_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.idle_s = idle_s
        self.ends_at = self.loop.time() + total_s
        self.since = 0.0
        self.waiting = False
        self.expired: bool | None = None  # True: the whole time; False: an idle gap
        self.handle: asyncio.TimerHandle | None = self.loop.call_at(
            min(self.loop.time() + idle_s, self.ends_at), self._check
        )

    def _check(self) -> None:
        now = self.loop.time()
        due = min((self.since if self.waiting else now) + self.idle_s, self.ends_at)
        if self.waiting and now >= due and self.task is not None:
            self.expired = now >= self.ends_at
            self.handle = None
            self.task.cancel()
            return
        self.handle = self.loop.call_at(max(due, now + 0.001), self._check)

    def begin(self) -> None:
        """A wait starts (the stream's whole time already spent cancels it at once)."""
        now = self.loop.time()
        self.since = now
        self.waiting = True
        if now >= self.ends_at and self.task is not None and self.expired is None:
            self.expired = True
            self.task.cancel()

    def expired_now(self) -> bool | None:
        """In an `except CancelledError`: True (whole time) or False (an idle gap) when this
        clock (only) cancelled the task, else None (a shutdown, the client)."""
        if self.expired is not None and self.task is not None and self.task.uncancel() == 0:
            return self.expired
        return None

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


def _cut_by_length() -> ChatCompletionChunk:
    """The chunk that ends a stream cut at its cap (a new one: writers stamp theirs)."""
    return ChatCompletionChunk(choices=[ChunkChoice(delta=Delta(), finish_reason="length")])


async def open_passed_through(
    opening: AbstractAsyncContextManager[UpstreamStream],
) -> tuple[AsyncExitStack, UpstreamStream]:
    """A pass-through stream, opened (its status known good), and the stack that closes it.

    The stream outlives the call that opens it (a retry or fallback decides on
    its status; the client reads it later), so its context stays open in the
    returned stack, which the event loop that relays it closes.
    """
    stack = AsyncExitStack()
    try:
        upstream = await stack.enter_async_context(opening)
    except BaseException:
        await stack.aclose()
        raise
    return stack, upstream


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
