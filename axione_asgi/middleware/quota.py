"""TierQuotaMiddleware: admission, x-ratelimit-* headers and settlement per request."""

from __future__ import annotations

from datetime import datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axione_asgi.errors import AxioneError
from axione_asgi.keys import KeyRecord
from axione_asgi.middleware.errors import send_error
from axione_asgi.quota.service import Admission, QuotaService
from axione_asgi.scope import QUOTA, key_of, state_of

__all__ = ["TierQuotaMiddleware", "format_reset"]


def format_reset(seconds: float) -> str:
    """OpenAI's duration format: `6h3m2s`."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    return out + f"{secs}s"


class _Handle:
    def __init__(self, service: QuotaService, key: KeyRecord) -> None:
        self.service = service
        self.key = key
        self.admission: Admission | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.estimated = False

    async def admit(
        self, *, reserve_tokens: int = 0, model: str | None = None, provider: str | None = None
    ) -> None:
        if self.admission is None:
            self.admission = await self.service.admit(self.key, reserve_tokens)

    def report(self, *, prompt_tokens: int, completion_tokens: int, estimated: bool = False) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.estimated = estimated

    def headers(self, now: datetime) -> list[tuple[bytes, bytes]]:
        adm = self.admission
        if adm is None:
            return []
        reset = format_reset((adm.resets_at - now).total_seconds()).encode()
        lim = adm.limits
        remaining_tokens = max(0, lim.tokens_per_day - adm.tokens_used - adm.reserved_tokens)
        return [
            (b"x-ratelimit-limit-requests", str(lim.requests_per_day).encode()),
            (b"x-ratelimit-remaining-requests", str(max(0, lim.requests_per_day - adm.requests_used)).encode()),
            (b"x-ratelimit-reset-requests", reset),
            (b"x-ratelimit-limit-tokens", str(lim.tokens_per_day).encode()),
            (b"x-ratelimit-remaining-tokens", str(remaining_tokens).encode()),
            (b"x-ratelimit-reset-tokens", reset),
        ]


class TierQuotaMiddleware:
    """Lends the inner app a quota handle; adds headers; settles at the end."""

    def __init__(self, app: ASGIApp, service: QuotaService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = key_of(scope) if scope["type"] == "http" else None
        if key is None:
            await self.app(scope, receive, send)
            return
        handle = _Handle(self.service, key)
        state_of(scope)[QUOTA] = handle

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                if handle.admission is None and message["status"] < 400:
                    await handle.admit()
                message.setdefault("headers", []).extend(handle.headers(self.service.clock()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except AxioneError as exc:
            # Headers on errors raised before any response (a 429 from admit).
            await send_error(send_wrapper, exc)
        finally:
            if handle.admission is not None:
                await self.service.settle(
                    key, handle.admission, handle.prompt_tokens + handle.completion_tokens
                )
