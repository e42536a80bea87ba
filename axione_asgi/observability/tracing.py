"""OpenTelemetry spans, when `opentelemetry-api` is installed; nothing is imported otherwise."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

from axione_asgi.providers.base import ModelRoute

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["SpanHandle", "Tracing", "load_tracing"]

_RECHECK_S = 5.0

SpanHandle = tuple[AbstractContextManager[Any], "Span"]
"""An entered span: its context manager (to exit it) and the span (to annotate it)."""


def load_tracing(enabled: bool) -> Tracing | None:
    """A `Tracing` on the global tracer provider, or None when off or not installed."""
    if not enabled:
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    from axione_asgi import __version__

    return Tracing(trace.get_tracer("axione_asgi", __version__))


class Tracing:
    """Opens the request and upstream spans.

    Request spans continue an incoming W3C `traceparent`; upstream spans are
    current while the provider is called, so an instrumented `httpx` nests
    its own spans under them. Without an OpenTelemetry SDK configured, the
    API hands out no-op spans.
    """

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import propagate, trace

        self.tracer = tracer
        self._active = False
        self._active_until = 0.0
        self._propagate = propagate
        self._trace = trace

    def active(self) -> bool:
        """Whether an OpenTelemetry SDK is set up to record spans.

        The API alone (often installed as another package's dependency) only
        hands out no-op spans, whose context switching still costs on every
        request: without an SDK provider, no span is opened at all.
        """
        # Asked on every request, answered from a cache: the API's lookup reads
        # os.environ each time while no SDK is set. A provider set up later
        # (after the app was built) is seen within `_RECHECK_S`.
        now = time.monotonic()
        if now < self._active_until:
            return self._active
        provider = self._trace.get_tracer_provider()
        self._active = not isinstance(
            provider, self._trace.ProxyTracerProvider | self._trace.NoOpTracerProvider
        )
        self._active_until = now + _RECHECK_S
        return self._active

    def request_span(self, scope: Scope, path: str) -> AbstractContextManager[Span]:
        """The server span of one HTTP request (a context manager)."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope.get("method", "GET")
        return self.tracer.start_as_current_span(
            method,
            context=self._propagate.extract(carrier),
            kind=self._trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )

    def annotate_request(self, span: Span, attributes: dict[str, Any], status: int) -> None:
        """Add what the request turned out to be (model, tokens, status)."""
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))

    def open_upstream_span(self, route: ModelRoute) -> SpanHandle:
        """Enter the client span of one provider call."""
        operation = "embeddings" if route.kind == "embedding" else "chat"
        manager = self.tracer.start_as_current_span(
            f"{operation} {route.public_id}",
            kind=self._trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.system": route.provider_name,
                "gen_ai.request.model": route.model,
                "axione.model": route.public_id,
                "axione.provider": route.provider_name,
            },
        )
        span = manager.__enter__()
        return manager, span

    def close_span(
        self,
        handle: SpanHandle,
        code: str | None,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Mark a failed call with its error code, then end the span."""
        manager, span = handle
        if code is not None:
            span.set_attribute("error.type", code)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, code))
        manager.__exit__(exc_type, exc, tb)
