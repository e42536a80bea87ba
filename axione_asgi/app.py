"""create_app(): the router wrapped in the middleware stack, and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from axione_asgi.admin.routes import AdminGateMiddleware
from axione_asgi.admin.service import AdminService
from axione_asgi.aliases import Aliases
from axione_asgi.cache import ChatCache, open_chat_cache
from axione_asgi.config import AxioneConfig
from axione_asgi.dashboard.routes import DASHBOARD_PATH, DashboardRoutes
from axione_asgi.dispatch import ExactRoutes
from axione_asgi.errors import ErrorEnvelope
from axione_asgi.exchange.pipeline import Pipeline
from axione_asgi.health import HEALTH_PATHS, HealthRoutes
from axione_asgi.ingress.anthropic_messages import AnthropicMessagesIngress
from axione_asgi.ingress.base import Ingress
from axione_asgi.ingress.openai_chat import OpenAIChatIngress
from axione_asgi.ingress.openai_completions import OpenAICompletionsIngress
from axione_asgi.ingress.openai_responses import OpenAIResponsesIngress
from axione_asgi.key_events import KeyEvents, open_key_events
from axione_asgi.keys import KeyRecord, KeyStore
from axione_asgi.middleware.auth import KeyAuthMiddleware
from axione_asgi.middleware.errors import ErrorFormatMiddleware
from axione_asgi.middleware.quota import TierQuotaMiddleware
from axione_asgi.observability.middleware import (
    ObservedQuotaMiddleware,
    RequestObserverMiddleware,
    build_observability,
)
from axione_asgi.providers.base import Provider, ProviderRegistry
from axione_asgi.providers.factory import build_providers, unavailable_providers
from axione_asgi.quota import QuotaService
from axione_asgi.quota.days import utc_now
from axione_asgi.quota.service import Clock
from axione_asgi.stores import open_key_store
from axione_asgi.stores.responses import ResponseStore, open_response_store

__all__ = ["PUBLIC_PATHS", "AxioneApp", "Runtime", "create_app"]

logger = logging.getLogger("axione")

# What a browser client may read of an answer across origins.
RESPONSE_HEADERS = (
    "x-request-id",
    "x-axione-cache",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after",
)

# Served without a key: the API's own description, and the probes (SPEC section 10).
PUBLIC_PATHS = ("/openapi.json", *HEALTH_PATHS)


class Runtime:
    """What one gateway app owns: providers, key store, quota. Starts once, stops once."""

    def __init__(
        self,
        registry: ProviderRegistry,
        key_store: KeyStore,
        quota: QuotaService,
        cache: ChatCache | None = None,
        responses: ResponseStore | None = None,
        key_events: KeyEvents | None = None,
        key_changed: Callable[[str | None], None] | None = None,
    ) -> None:
        self.registry = registry
        self.key_store = key_store
        self.quota = quota
        self.cache = cache
        self.responses = responses
        # Key changes heard from other replicas drop this process's cached lookups.
        self.key_events = key_events
        self.key_changed = key_changed
        self._listener: asyncio.Task[None] | None = None
        self.started = False
        # Set when the server begins to shut down: `/readyz` answers 503 from then on.
        self.draining = False
        self._lock = anyio.Lock()

    async def start(self) -> None:
        """Open provider clients and stores; safe to call many times."""
        if self.started:
            return
        async with self._lock:
            if self.started:
                return
            await self.registry.open_all()
            await self._prepare_stores()
            await self.quota.start()
            if self.key_events is not None and self.key_changed is not None:
                self._listener = asyncio.get_running_loop().create_task(
                    self.key_events.listen(self.key_changed), name="axione-key-changes"
                )
            self.started = True

    async def _prepare_stores(self) -> None:
        # Schema migrations run at start-up (PostgreSQL: versioned, under an
        # advisory lock, so replicas starting at once apply each once). A
        # database down now is not fatal: `/readyz` says so, and each store
        # migrates on first use when it answers.
        seen: set[int] = set()
        for store in (self.key_store, self.quota.ledger, self.responses):
            prepare = getattr(store, "prepare", None)
            if store is None or prepare is None or id(store) in seen:
                continue
            seen.add(id(store))
            try:
                await anyio.to_thread.run_sync(prepare)
            except Exception as exc:
                logger.error(
                    "%s could not be prepared at start-up (%s: %s); it is tried again on first use",
                    type(store).__name__,
                    type(exc).__name__,
                    exc,
                )

    async def stop(self) -> None:
        """Flush and close everything; the app can start again afterwards."""
        async with self._lock:
            if not self.started:
                return
            self.started = False
            with anyio.CancelScope(shield=True):
                listener, self._listener = self._listener, None
                if listener is not None and self.key_events is not None:
                    self.key_events.stop_listening()
                    listener.cancel()
                    await asyncio.wait({listener}, timeout=3.0)
                await self.quota.stop()
                await self.registry.close_all()
                if self.cache is not None:
                    await self.cache.aclose()
                if self.responses is not None:
                    self.responses.close()
                if self.key_events is not None:
                    await self.key_events.aclose()


class _StartOnFirstRequest:
    """Starts the runtime on first use when no lifespan reached the app (mounted apps)."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.runtime.started and scope["type"] == "http":
            await self.runtime.start()
        await self.app(scope, receive, send)


class AxioneApp(Starlette):
    """The gateway: a Starlette app serving its routes at its own root.

    Mount it anywhere. Starlette does not pass lifespan events to mounted apps,
    so give the host `lifespan=api.lifespan` (or enter `api.lifespan(host)`
    inside the host's own) to open provider clients at start-up and flush the
    ledger at shutdown; without it the gateway starts on its first request.
    """

    runtime: Runtime
    key_auth: KeyAuthMiddleware | None = None

    def build_middleware_stack(self) -> ASGIApp:
        """The middleware around `ExactRoutes`, without Starlette's own two layers.

        `ErrorFormatMiddleware` turns every error into SPEC's JSON, so
        Starlette's server-error layer has nothing left to do; its exception
        layer stays in front of the router, for the requests that reach it.
        With exception handlers or debug set, Starlette's own stack is built.
        """
        if self.exception_handlers or self.debug:
            return super().build_middleware_stack()
        app: ASGIApp = ExactRoutes(self.router.routes, ExceptionMiddleware(self.router))
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app

    @contextlib.asynccontextmanager
    async def lifespan(self, host: Any = None) -> AsyncIterator[None]:
        """Runs the gateway for as long as the context is open."""
        await self.runtime.start()
        try:
            yield
        finally:
            await self.runtime.stop()


def create_app(
    config: AxioneConfig | None = None,
    *,
    providers: Mapping[str, Provider] | None = None,
    key_store: KeyStore | None = None,
    clock: Clock | None = None,
    environ: Mapping[str, str] | None = None,
) -> AxioneApp:
    """Build the gateway app for `config` (the pydantic defaults when None).

    `providers` adds or replaces backends by provider name; `key_store`
    replaces the store `storage.keys` names; `clock` returns an aware UTC
    datetime (tests move days with it); `environ` is where provider keys are
    read (the process environment by default).
    """
    config = config or AxioneConfig()
    built = build_providers(config, os.environ if environ is None else environ)
    built.update(providers or {})
    registry = ProviderRegistry(
        built, Aliases(config.aliases), unavailable_providers(config, built)
    )
    store = key_store or open_key_store(config.storage.keys, config.keys)
    quota = QuotaService(config, key_store=store, clock=clock)
    cache = open_chat_cache(config.cache, config.storage.counters, clock or utc_now)
    responses = open_response_store(config.storage.responses or config.storage.ledger)
    key_events = open_key_events(
        config.storage.counters,
        max_connections=config.storage.redis_max_connections,
        timeout_s=config.storage.redis_socket_timeout_s,
    )

    def key_changed(key_hash: str | None) -> None:
        # Heard from a replica (or None: some may have been missed while away).
        if app.key_auth is not None:
            app.key_auth.forget(key_hash)

    runtime = Runtime(registry, store, quota, cache, responses, key_events, key_changed)
    pipeline = Pipeline(registry, config, cache)
    # The client dialects: each one module over the same pipeline.
    ingresses: list[Ingress] = [
        OpenAIChatIngress(pipeline, registry, quota, config),
        OpenAICompletionsIngress(pipeline, config),
        AnthropicMessagesIngress(pipeline, config),
        OpenAIResponsesIngress(pipeline, config, responses),
    ]
    envelopes: dict[str, ErrorEnvelope] = {}
    for ingress in ingresses:
        envelopes.update(ingress.error_envelopes())

    # Observability, the usage page and the admin API: each absent when off.
    hub = build_observability(config)
    public = [*PUBLIC_PATHS]
    extra: list[BaseRoute] = DashboardRoutes(
        quota.ledger, quota.clock, page=config.dashboard.enabled
    ).routes()
    extra.extend(HealthRoutes(runtime).routes())
    if config.dashboard.enabled:
        public.append(DASHBOARD_PATH)
    if hub is not None and hub.metrics is not None:
        extra.append(Route(config.metrics.path, hub.metrics.endpoint, methods=["GET"]))
        public.append(config.metrics.path)
    observe_quota = [Middleware(ObservedQuotaMiddleware)] if hub is not None else []
    observe = [Middleware(RequestObserverMiddleware, hub=hub)] if hub is not None else []
    admin: list[Middleware] = []
    if config.admin.enabled and config.admin.operator_key_sha256:

        def forget(record: KeyRecord) -> None:
            # A revocation or new tier applies at once in this process; the others
            # hear of it through `key_events` (Redis), else within the cache TTL.
            if app.key_auth is not None:
                app.key_auth.forget(record.key_hash)

        service = AdminService(
            config,
            store,
            ledger=quota.ledger,
            counters=quota.counters,
            clock=quota.clock,
            on_change=forget,
            key_events=key_events,
        )
        admin.append(
            Middleware(
                AdminGateMiddleware,
                prefix=config.admin.prefix,
                operator_key_sha256=config.admin.operator_key_sha256,
                key_store=store,
                service=service,
            )
        )

    def key_auth(inner: ASGIApp) -> ASGIApp:
        # Built by Starlette on first use; kept so the admin API can drop cached lookups.
        app.key_auth = KeyAuthMiddleware(
            inner, store, cache_ttl=config.key_cache_ttl_s, public_paths=public
        )
        return app.key_auth

    # Before key auth, so a browser's preflight is answered without a key.
    cors = (
        [
            Middleware(
                CORSMiddleware,
                allow_origins=config.cors.allow_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=[
                    "authorization",
                    "x-api-key",
                    "content-type",
                    "x-axione-cache",
                    "anthropic-version",
                    "anthropic-beta",
                ],
                expose_headers=[*RESPONSE_HEADERS],
                max_age=config.cors.max_age_s,
            )
        ]
        if config.cors.allow_origins
        else []
    )

    app = AxioneApp(
        routes=[*(r for ingress in ingresses for r in ingress.routes()), *extra],
        middleware=[
            *observe,
            Middleware(ErrorFormatMiddleware, dialects=envelopes),
            *cors,
            Middleware(_StartOnFirstRequest, runtime=runtime),
            *admin,
            Middleware(key_auth),
            Middleware(TierQuotaMiddleware, service=quota),
            *observe_quota,
        ],
    )
    app.runtime = runtime
    app.router.lifespan_context = app.lifespan
    return app
