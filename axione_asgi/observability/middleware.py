"""The observing middleware: one outer layer per request, one tap on the quota handle."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axione_asgi.config import AxioneConfig
from axione_asgi.observability.access_log import AccessLog
from axione_asgi.observability.context import OBSERVATION, Observation, observation_of
from axione_asgi.observability.tracing import Tracing, load_tracing
from axione_asgi.scope import QUOTA, key_of, request_id_of, route_path, state_of

if TYPE_CHECKING:
    from axione_asgi.observability.metrics import PrometheusMetrics
    from axione_asgi.scope import QuotaHandle

__all__ = [
    "Observability",
    "ObservedQuotaMiddleware",
    "RequestObserverMiddleware",
    "build_observability",
]

# Status recorded for a response that never completed: the client went away.
_CLIENT_GONE = 499
_NO_SPAN = nullcontext()


class Observability:
    """What observes one app's requests: any of an access log, metrics and tracing."""

    def __init__(
        self,
        *,
        access_log: AccessLog | None = None,
        metrics: PrometheusMetrics | None = None,
        tracing: Tracing | None = None,
        quiet_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.access_log = access_log
        self.metrics = metrics
        self.tracing = tracing
        # Paths not observed at all (the metrics scrape itself).
        self.quiet_paths = quiet_paths

    def finish(
        self, obs: Observation, scope: Scope, path: str, status: int, seconds: float
    ) -> None:
        """Log and count one finished request."""
        if self.metrics is not None:
            self.metrics.observe_request(
                obs.provider, obs.model, status, seconds, obs.prompt_tokens, obs.completion_tokens
            )
        if self.access_log is not None and self.access_log.enabled():
            self.access_log.emit(fields(obs, scope, path, status, seconds))


def fields(
    obs: Observation, scope: Scope, path: str, status: int, seconds: float
) -> dict[str, Any]:
    """The access-log fields of one request."""
    key = key_of(scope)
    return {
        "request_id": request_id_of(scope),
        "key_id": key.id if key is not None else None,
        "method": scope.get("method"),
        "path": path,
        "status": status,
        "model": obs.model,
        "provider": obs.provider,
        "prompt_tokens": obs.prompt_tokens,
        "completion_tokens": obs.completion_tokens,
        "latency_ms": round(seconds * 1000, 1),
        "upstream_ms": round(obs.upstream_s * 1000, 1) if obs.upstream_calls else None,
        "upstream_calls": obs.upstream_calls or None,
        "upstream_error": obs.upstream_error,
        "cache_hit": True if obs.cache_hit else None,
    }


def build_observability(config: AxioneConfig) -> Observability | None:
    """The app's observers from its config, or None when all are off (then nothing is wrapped)."""
    access_log = AccessLog(config.access_log.format) if config.access_log.enabled else None
    metrics: PrometheusMetrics | None = None
    if config.metrics.enabled:
        try:
            from axione_asgi.observability.metrics import PrometheusMetrics
        except ImportError:
            from axione_asgi.config import ConfigError

            raise ConfigError(
                "metrics.enabled: needs prometheus-client: pip install 'axione-asgi[metrics]'"
            ) from None
        metrics = PrometheusMetrics()
    tracing = load_tracing(config.tracing.enabled)
    if access_log is None and metrics is None and tracing is None:
        return None
    quiet = frozenset({config.metrics.path}) if metrics is not None else frozenset()
    return Observability(access_log=access_log, metrics=metrics, tracing=tracing, quiet_paths=quiet)


class RequestObserverMiddleware:
    """The outermost layer: times each request and sees its final status.

    Puts an `Observation` in the scope for the layers and routes below, and
    when the response ends (or the client goes away) logs one access line,
    counts the metrics and closes the request's span. The response passes
    through untouched and unbuffered.
    """

    def __init__(self, app: ASGIApp, hub: Observability) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hub = self.hub
        path_in_app = route_path(scope)
        if path_in_app in hub.quiet_paths or observation_of(scope) is not None:
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        obs = Observation(hub)
        state_of(scope)[OBSERVATION] = obs
        status = 0
        ended = 0.0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = time.perf_counter()
            await send(message)

        path = scope.get("path", "")
        tracing = hub.tracing if hub.tracing is not None and hub.tracing.active() else None
        failed = False
        with tracing.request_span(scope, path) if tracing is not None else _NO_SPAN as span:
            try:
                await self.app(scope, receive, send_wrapper)
            except Exception:
                failed = True
                raise
            finally:
                # No complete answer: a crash below (500) or a client that left.
                final = status if ended else 500 if failed or not status else _CLIENT_GONE
                seconds = (ended or time.perf_counter()) - began
                hub.finish(obs, scope, path, final, seconds)
                if span is not None and tracing is not None:
                    tracing.annotate_request(span, _span_attributes(obs, scope), final)


def _span_attributes(obs: Observation, scope: Scope) -> dict[str, Any]:
    key = key_of(scope)
    return {
        "axione.request_id": request_id_of(scope),
        "axione.key_id": key.id if key is not None else None,
        "axione.model": obs.model,
        "axione.provider": obs.provider,
        "gen_ai.usage.input_tokens": obs.prompt_tokens,
        "gen_ai.usage.output_tokens": obs.completion_tokens,
    }


class ObservedQuotaMiddleware:
    """Sits right inside `TierQuotaMiddleware`: lets the observation see the quota handle's use.

    The route tells the handle its model on admission and its tokens when it
    reports; this layer wraps the handle so the same calls reach the
    observation too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            obs = observation_of(scope)
            state = state_of(scope)
            handle = state.get(QUOTA)
            if obs is not None and handle is not None:
                state[QUOTA] = _TappedHandle(handle, obs)
        await self.app(scope, receive, send)


class _TappedHandle:
    """A `QuotaHandle` that tells the observation what passes through it."""

    __slots__ = ("_inner", "_obs")

    def __init__(self, inner: QuotaHandle, obs: Observation) -> None:
        self._inner = inner
        self._obs = obs

    async def admit(
        self,
        *,
        reserve_tokens: int = 0,
        model: str | None = None,
        provider: str | None = None,
        **extra: Any,
    ) -> int:
        obs = self._obs
        if model is not None and obs.model is None:
            obs.model, obs.provider = model, provider
        return await self._inner.admit(
            reserve_tokens=reserve_tokens, model=model, provider=provider, **extra
        )

    def report(self, *, prompt_tokens: int, completion_tokens: int, **extra: Any) -> None:
        obs = self._obs
        obs.prompt_tokens = prompt_tokens
        obs.completion_tokens = completion_tokens
        obs.cache_hit = bool(extra.get("cache_hit"))
        self._inner.report(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, **extra
        )

    def answered_by(self, *, model: str, provider: str) -> None:
        self._obs.model, self._obs.provider = model, provider
        self._inner.answered_by(model=model, provider=provider)

    def attempted(self, count: int) -> None:
        # Written out: `__getattr__` below is the slow path, and this runs per request.
        self._inner.attempted(count)

    def exempt(self) -> None:
        self._inner.exempt()

    def __getattr__(self, name: str) -> Any:
        # Whatever else the handle offers (now or later) passes straight through.
        return getattr(self._inner, name)
