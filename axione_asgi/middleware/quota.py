"""TierQuotaMiddleware: admission, x-ratelimit-* headers and settlement per request."""

from __future__ import annotations

import logging
import time
from datetime import datetime

import anyio
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axione_asgi.errors import AxioneError, QuotaUnavailable
from axione_asgi.keys import KeyRecord
from axione_asgi.middleware.errors import envelope_of, send_error
from axione_asgi.quota.days import format_duration
from axione_asgi.quota.service import Admission, QuotaExceeded, QuotaService, Snapshot
from axione_asgi.scope import QUOTA, key_of, request_id_of, state_of

__all__ = ["TierQuotaMiddleware", "format_reset", "ratelimit_headers"]

logger = logging.getLogger("axione")

format_reset = format_duration

# How long settlement waits for a cut stream's own usage report: the stream's
# generator may be closed a moment after the response ends (when Starlette
# drops it), and its report is the count of what was produced.
_LATE_REPORT_WAIT_S = 0.25
# Status recorded for a response that never completed: the client went away.
_CLIENT_GONE = 499


def _session_id(scope: Scope) -> str | None:
    """The client's session id, kept in the ledger so an operator can sum a session.

    Claude Code's `X-Claude-Code-Session-Id` first, else Codex's `session-id`.
    """
    codex: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"x-claude-code-session-id":
            return value.decode("latin-1")[:128] or None
        if name == b"session-id":
            codex = value
    if codex is None:
        return None
    return codex.decode("latin-1")[:128] or None


def ratelimit_headers(snapshot: Snapshot, now: datetime) -> list[tuple[bytes, bytes]]:
    """SPEC section 1's `x-ratelimit-*` headers for a key's day."""
    reset = format_duration((snapshot.resets_at - now).total_seconds()).encode()
    limits = snapshot.limits
    return [
        (b"x-ratelimit-limit-requests", str(limits.requests_per_day).encode()),
        (b"x-ratelimit-remaining-requests", str(snapshot.remaining_requests).encode()),
        (b"x-ratelimit-reset-requests", reset),
        (b"x-ratelimit-limit-tokens", str(limits.tokens_per_day).encode()),
        (b"x-ratelimit-remaining-tokens", str(snapshot.remaining_tokens).encode()),
        (b"x-ratelimit-reset-tokens", reset),
    ]


class _Handle:
    """The `QuotaHandle` of one request (see `axione_asgi.scope.QuotaHandle`)."""

    __slots__ = (
        "_reported_event",
        "admission",
        "attempts",
        "cache_hit",
        "completion_tokens",
        "estimated",
        "exempted",
        "implicit",
        "key",
        "model",
        "now",
        "prompt_tokens",
        "provider",
        "reported",
        "service",
        "snapshot",
        "tier",
    )

    def __init__(self, service: QuotaService, key: KeyRecord, tier: int, now: datetime) -> None:
        self.service = service
        self.key = key
        self.tier = tier
        self.now = now
        self.admission: Admission | None = None
        self.attempts = 0
        self.snapshot: Snapshot | None = None
        self.model: str | None = None
        self.provider: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.estimated = False
        self.cache_hit = False
        self.reported = False
        self.exempted = False
        self.implicit = False
        self._reported_event: anyio.Event | None = None

    async def admit(
        self,
        *,
        reserve_tokens: int = 0,
        minimum_tokens: int = 0,
        model: str | None = None,
        provider: str | None = None,
    ) -> int:
        if self.exempted:
            return reserve_tokens
        if self.admission is not None:
            return self.admission.reserved
        self.model = model
        self.provider = provider
        try:
            self.admission = await self.service.admit(
                self.key,
                reserve_tokens,
                minimum_tokens=minimum_tokens,
                tier=self.tier,
                now=self.now,
            )
        except QuotaExceeded as exc:
            self.snapshot = exc.snapshot
            raise
        self.snapshot = self.admission.snapshot
        return self.admission.reserved

    def report(
        self,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        estimated: bool = False,
        cache_hit: bool = False,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.estimated = estimated
        self.cache_hit = cache_hit
        self.reported = True
        if self._reported_event is not None:
            self._reported_event.set()

    def answered_by(self, *, model: str, provider: str) -> None:
        self.model, self.provider = model, provider

    def attempted(self, count: int) -> None:
        self.attempts = count

    def exempt(self) -> None:
        if self.admission is None:
            self.exempted = True

    async def wait_reported(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for a report that has not come yet."""
        self._reported_event = anyio.Event()
        if not self.reported:
            with anyio.move_on_after(timeout):
                await self._reported_event.wait()


class TierQuotaMiddleware:
    """Meters authenticated requests against their key's tier (SPEC section 3).

    Lends the inner app a quota handle in the scope. The app admits the request
    through it once it knows what the request may cost (or, if it never does,
    the request is admitted at its first response message for one request and
    no tokens), and reports the real usage. The middleware adds the
    `x-ratelimit-*` headers to every response start, answers 429 with
    `Retry-After` when the day is spent, and settles the tokens and writes the
    ledger record when the response ends, also when the client goes away.
    Requests with no key in the scope pass straight through.
    """

    def __init__(self, app: ASGIApp, service: QuotaService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = key_of(scope) if scope["type"] == "http" else None
        if key is None:
            await self.app(scope, receive, send)
            return
        service = self.service
        began = time.monotonic()
        now = service.clock()
        handle = _Handle(service, key, await service.tier_of(key, now), now)
        state_of(scope)[QUOTA] = handle
        status = 0
        started = False
        completed = False
        refused = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started, completed, refused
            if refused:
                return  # the inner app's answer, replaced by a 429
            if message["type"] == "http.response.start":
                status = message["status"]
                if handle.snapshot is None and not handle.exempted and status < 400:
                    handle.implicit = True
                    try:
                        await handle.admit()
                    except QuotaExceeded as exc:
                        refused = started = completed = True
                        status = exc.status
                        headers = ratelimit_headers(exc.snapshot, now)
                        await send_error(send, exc, headers, scope=scope)
                        return
                    except QuotaUnavailable as exc:
                        refused = started = completed = True
                        status = exc.status
                        await send_error(send, exc, scope=scope)
                        return
                snapshot = handle.snapshot
                if snapshot is None:
                    try:
                        snapshot = await service.snapshot(key, tier=handle.tier, now=now)
                    except QuotaUnavailable:
                        snapshot = None  # the counters store is down: no x-ratelimit-* headers
                headers = list(message.get("headers", ()))
                if snapshot is not None:
                    headers += ratelimit_headers(snapshot, now)
                message = {**message, "headers": headers}
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except AxioneError as exc:
            if started:
                raise
            # Raised before any answer (the route's 429 among them): sent from
            # here so that it carries the x-ratelimit-* headers too.
            await send_error(send_wrapper, exc, scope=scope)
        except ClientDisconnect:
            raise  # the client left mid-body: no answer, no log (ErrorFormatMiddleware's 499)
        except Exception:
            if started:
                raise
            request_id = request_id_of(scope)
            logger.exception("unhandled error in request %s", request_id)
            failure = AxioneError(f"The gateway failed unexpectedly; request id {request_id}")
            await send_error(send_wrapper, failure, scope=scope)
        finally:
            admission = handle.admission
            if admission is not None:
                if not completed and not handle.implicit and not handle.reported:
                    # Shielded, as the settlement itself is: a client that
                    # goes away cancels this task, and its usage still counts.
                    with anyio.CancelScope(shield=True):
                        await handle.wait_reported(_LATE_REPORT_WAIT_S)
                try:
                    await service.settle(
                        admission,
                        prompt_tokens=handle.prompt_tokens,
                        completion_tokens=handle.completion_tokens,
                        estimated=handle.estimated,
                        model=handle.model,
                        provider=handle.provider,
                        status=status if completed else _CLIENT_GONE,
                        latency_ms=(time.monotonic() - began) * 1000,
                        request_id=request_id_of(scope),
                        cache_hit=handle.cache_hit,
                        dialect=envelope_of(scope).dialect,
                        session_id=_session_id(scope),
                        attempts=handle.attempts,
                    )
                except Exception:
                    # The answer is already out: a failing counter store must
                    # not become a second error, only a log line.
                    logger.exception("settling usage of key %s failed", key.id)
