"""Retries with backoff and fallbacks across models, bounded by one deadline."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from axione_asgi.errors import (
    AxioneError,
    InvalidRequest,
    ProviderUnavailable,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from axione_asgi.providers.base import ModelRoute

__all__ = ["RetryPolicy", "first_success", "is_retryable", "retry_after_seconds"]

T = TypeVar("T")


def is_retryable(exc: AxioneError) -> bool:
    """Failures that may pass if the same upstream is asked again a little later."""
    if isinstance(exc, UpstreamTimeout | ProviderUnavailable):
        return True
    if isinstance(exc, RateLimited):
        return exc.code == "upstream_rate_limited"
    if isinstance(exc, UpstreamError):
        # Credentials and certificates do not mend by asking again.
        return exc.code not in (
            "upstream_auth_failed",
            "upstream_tls_error",
            "upstream_answer_too_large",  # read again, it would be as large
        )
    return False


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """How long an upstream asked us to wait, or None when it did not say (or said nonsense).

    Reads OpenAI's `retry-after-ms` first, then `Retry-After` as seconds or as
    an HTTP date (RFC 9110 allows both).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    candidates: list[tuple[str, float]] = [("retry-after-ms", 1000.0), ("retry-after", 1.0)]
    for name, per_second in candidates:
        raw = lowered.get(name, "").strip()
        if not raw:
            continue
        try:
            seconds = float(raw) / per_second
        except ValueError:
            if per_second != 1.0:
                continue
            try:
                when = parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - (now or datetime.now(UTC))).total_seconds()
        if math.isnan(seconds):
            continue
        return max(0.0, seconds)
    return None


def _falls_back(exc: AxioneError) -> bool:
    # A request the upstream found invalid is the client's to fix; anything
    # else (down, overloaded, rate limited, misconfigured) may pass elsewhere.
    return not isinstance(exc, InvalidRequest)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one request retries.

    Delays grow exponentially from `backoff_s` to `backoff_max_s` with full
    jitter, or follow the upstream's `Retry-After` when it gives one; nothing
    waits past `deadline_s` from the start of the request.
    """

    max_retries: int = 2
    backoff_s: float = 0.25
    backoff_max_s: float = 8.0
    deadline_s: float = 120.0
    # Calls across every candidate, retries included: a budget per request.
    max_attempts: int = 64

    def delay(self, attempt: int, exc: AxioneError) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        asked = retry_after_seconds(exc.headers)
        if asked is not None:
            return asked
        cap = min(self.backoff_max_s, self.backoff_s * (2**attempt))
        return random.uniform(cap / 2, cap)


async def first_success(
    candidates: Sequence[ModelRoute],
    call: Callable[[ModelRoute], Awaitable[T]],
    policy: RetryPolicy,
) -> tuple[ModelRoute, T]:
    """The first candidate whose `call` succeeds, retrying each on retryable failures.

    Raises the last failure when every candidate failed, an `InvalidRequest`
    at once, and `UpstreamTimeout` when the deadline passes.
    """
    # asyncio's own clock and timeout: this runs on every request, and anyio's
    # cancel scopes cost several times more for the same job here.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.deadline_s
    last: AxioneError | None = None
    budget = policy.max_attempts
    for route in candidates:
        for attempt in range(policy.max_retries + 1):
            if budget <= 0:
                break
            budget -= 1
            if deadline - loop.time() <= 0:
                raise UpstreamTimeout("No upstream answered within the request deadline")
            try:
                async with asyncio.timeout_at(deadline):
                    return route, await call(route)
            except TimeoutError:
                raise UpstreamTimeout("No upstream answered within the request deadline") from None
            except AxioneError as exc:
                last = exc
                if not _falls_back(exc):
                    raise
                if not is_retryable(exc) or attempt == policy.max_retries:
                    break
                pause = policy.delay(attempt, exc)
                if loop.time() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
    assert last is not None, "first_success needs at least one candidate"
    raise last
