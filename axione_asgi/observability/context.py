"""What one request's observation holds, and how routes report their upstream calls into it."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

from axione_asgi.errors import AxioneError
from axione_asgi.providers.base import ModelRoute

if TYPE_CHECKING:
    from axione_asgi.observability.middleware import Observability

__all__ = ["OBSERVATION", "Observation", "observation_of", "upstream_call"]

OBSERVATION = "axione.observation"

# Returned when nothing observes the request: `async with` on it costs next to nothing.
_UNOBSERVED: AbstractAsyncContextManager[None] = nullcontext()


class Observation:
    """One request as the access log, the metrics and the spans see it.

    `RequestObserverMiddleware` puts it in `scope["state"]`; the quota tap
    fills in the model and the reported tokens; `upstream_call` adds the time
    spent waiting on upstreams (for a stream: until its first chunk).
    """

    __slots__ = (
        "cache_hit",
        "completion_tokens",
        "hub",
        "model",
        "prompt_tokens",
        "provider",
        "upstream_calls",
        "upstream_error",
        "upstream_s",
    )

    def __init__(self, hub: Observability) -> None:
        self.hub = hub
        self.model: str | None = None
        self.provider: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.upstream_s = 0.0
        self.upstream_calls = 0
        self.upstream_error: str | None = None
        self.cache_hit = False


def observation_of(scope: Scope) -> Observation | None:
    """The request's observation, when `RequestObserverMiddleware` is in the stack."""
    state: dict[str, Any] | None = scope.get("state")
    return None if state is None else state.get(OBSERVATION)


def upstream_call(scope: Scope, route: ModelRoute) -> AbstractAsyncContextManager[None]:
    """Wrap one call to a provider: `async with upstream_call(request.scope, route): ...`.

    Times it, counts its failure by code, and opens a span for it when tracing
    is on. Free (a shared no-op) when nothing observes the request.
    """
    obs = observation_of(scope)
    if obs is None:
        return _UNOBSERVED
    return _UpstreamCall(obs, route)


class _UpstreamCall:
    __slots__ = ("_began", "_obs", "_route", "_span")

    def __init__(self, obs: Observation, route: ModelRoute) -> None:
        self._obs = obs
        self._route = route
        self._span: Any = None
        self._began = 0.0

    async def __aenter__(self) -> None:
        tracing = self._obs.hub.tracing
        if tracing is not None and tracing.active():
            self._span = tracing.open_upstream_span(self._route)
        self._began = time.perf_counter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._began
        obs, route = self._obs, self._route
        obs.upstream_s += elapsed
        obs.upstream_calls += 1
        code: str | None = None
        if isinstance(exc, AxioneError):
            code = exc.code
        elif isinstance(exc, Exception):
            code = "internal_error"
        if code is not None:
            obs.upstream_error = code
        else:
            # The answering route (after retries or a fallback) names the request.
            obs.provider, obs.model = route.provider_name, route.public_id
        metrics = obs.hub.metrics
        if metrics is not None:
            metrics.observe_upstream(route.provider_name, route.public_id, elapsed, code)
        if self._span is not None:
            tracing = obs.hub.tracing
            assert tracing is not None
            tracing.close_span(self._span, code, exc_type, exc, tb)
