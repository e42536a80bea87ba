"""RetryPolicy and first_success: backoff, jitter, Retry-After, the deadline, what is retried."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from axione_asgi.errors import (
    AxioneError,
    InvalidRequest,
    ProviderUnavailable,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from axione_asgi.providers.base import ModelRoute
from axione_asgi.resilience import RetryPolicy, first_success, is_retryable, retry_after_seconds

pytestmark = pytest.mark.anyio

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def routes(*names: str) -> list[ModelRoute]:
    return [ModelRoute(f"p/{n}", "p", n, provider=None) for n in names]  # type: ignore[arg-type]


class Script:
    """A call that fails as told, per model, then answers the model's name."""

    def __init__(self, failures: dict[str, Sequence[AxioneError]]) -> None:
        self.failures = {k: list(v) for k, v in failures.items()}
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, route: ModelRoute) -> str:
        self.calls.append((route.model, time.monotonic()))
        pending = self.failures.get(route.model)
        if pending:
            raise pending.pop(0)
        return route.model


def test_backoff_grows_exponentially_with_jitter_below_each_cap() -> None:
    policy = RetryPolicy(backoff_s=0.1, backoff_max_s=10)
    error = UpstreamError("boom")
    for attempt in range(5):
        cap = 0.1 * 2**attempt
        delays = [policy.delay(attempt, error) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 100  # jittered, not a fixed step


def test_backoff_never_passes_its_maximum() -> None:
    policy = RetryPolicy(backoff_s=1, backoff_max_s=3)
    assert all(policy.delay(20, UpstreamError("boom")) <= 3 for _ in range(100))


def test_retry_after_seconds_replaces_the_backoff() -> None:
    error = RateLimited("slow down", headers={"retry-after": "1.5"})
    assert RetryPolicy(backoff_s=30).delay(0, error) == 1.5


def test_retry_after_ms_is_read_in_milliseconds() -> None:
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25


def test_retry_after_http_date_is_the_time_until_that_date() -> None:
    when = format_datetime(NOW + timedelta(seconds=7), usegmt=True)
    assert retry_after_seconds({"Retry-After": when}, now=NOW) == 7


@pytest.mark.parametrize("value", ["soon", "", "nan", "Wed, 99 Foo 2030"])
def test_retry_after_nonsense_is_ignored(value: str) -> None:
    assert retry_after_seconds({"retry-after": value}) is None


def test_retry_after_in_the_past_means_no_wait() -> None:
    assert retry_after_seconds({"retry-after": "-5"}) == 0


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (UpstreamError("5xx"), True),
        (UpstreamTimeout("slow"), True),
        (ProviderUnavailable("refused"), True),
        (RateLimited("upstream 429", code="upstream_rate_limited"), True),
        (RateLimited("our own day limit", code="daily_request_limit_exceeded"), False),
        (UpstreamError("bad key", code="upstream_auth_failed"), False),
        (InvalidRequest("bad field"), False),
    ],
)
def test_what_is_retryable(error: AxioneError, retried: bool) -> None:
    assert is_retryable(error) is retried


async def test_retryable_failures_are_retried_up_to_max_retries() -> None:
    call = Script({"a": [UpstreamError("x")] * 5})
    with pytest.raises(UpstreamError):
        await first_success(routes("a"), call, RetryPolicy(max_retries=2, backoff_s=0.001))
    assert [m for m, _ in call.calls] == ["a", "a", "a"]


async def test_the_next_candidate_answers_after_the_first_fails() -> None:
    call = Script({"a": [UpstreamError("x")] * 5})
    route, answer = await first_success(
        routes("a", "b"), call, RetryPolicy(max_retries=1, backoff_s=0.001)
    )
    assert (route.model, answer) == ("b", "b")
    assert [m for m, _ in call.calls] == ["a", "a", "b"]


async def test_invalid_request_is_neither_retried_nor_fallen_back() -> None:
    call = Script({"a": [InvalidRequest("bad")]})
    with pytest.raises(InvalidRequest):
        await first_success(routes("a", "b"), call, RetryPolicy(max_retries=3))
    assert [m for m, _ in call.calls] == ["a"]


async def test_auth_failure_is_not_retried_but_falls_back() -> None:
    call = Script({"a": [UpstreamError("key", code="upstream_auth_failed")]})
    route, _ = await first_success(routes("a", "b"), call, RetryPolicy(max_retries=3))
    assert route.model == "b"
    assert [m for m, _ in call.calls] == ["a", "b"]


async def test_a_retry_after_is_honoured_between_attempts() -> None:
    call = Script(
        {"a": [RateLimited("x", code="upstream_rate_limited", headers={"retry-after": "0.2"})]}
    )
    await first_success(routes("a"), call, RetryPolicy(max_retries=1, backoff_s=0))
    (_, first), (_, second) = call.calls
    assert second - first >= 0.2


async def test_a_wait_past_the_deadline_moves_on_to_the_next_candidate() -> None:
    slow = RateLimited("x", code="upstream_rate_limited", headers={"retry-after": "60"})
    call = Script({"a": [slow]})
    began = time.monotonic()
    route, _ = await first_success(routes("a", "b"), call, RetryPolicy(deadline_s=5))
    assert route.model == "b" and time.monotonic() - began < 1


async def test_a_call_running_past_the_deadline_is_cancelled_as_upstream_timeout() -> None:
    import anyio

    cancelled: list[bool] = []

    async def hang(route: ModelRoute) -> Any:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise

    began = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await first_success(routes("a"), hang, RetryPolicy(deadline_s=0.2))
    assert time.monotonic() - began < 1 and cancelled == [True]
