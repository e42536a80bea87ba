"""The x-ratelimit-* headers and Retry-After, on every authenticated response."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from axione_asgi.quota import format_duration
from tests.quota_app import CHAT, MovableClock, gateway, quota_config

pytestmark = pytest.mark.anyio

RATELIMIT = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)
FIVE_A_DAY = {1: {"requests_per_day": 5, "tokens_per_day": 100_000}}


def test_durations_use_openais_format() -> None:
    assert format_duration(6 * 3600 + 3 * 60 + 2) == "6h3m2s"
    assert format_duration(3600) == "1h"
    assert format_duration(61) == "1m1s"
    assert format_duration(0) == "0s"
    assert format_duration(0.2) == "1s"  # rounded up: never promises an early reset


async def test_remaining_requests_falls_by_one_per_request_counting_the_current_one() -> None:
    async with gateway(quota_config(tiers=FIVE_A_DAY)) as gw:
        remaining = [(await gw.chat()).headers["x-ratelimit-remaining-requests"] for _ in range(5)]
        assert remaining == ["4", "3", "2", "1", "0"]
        refused = await gw.chat()
        assert refused.status_code == 429
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-limit-requests"] == "5"


async def test_reset_and_retry_after_point_at_the_next_utc_midnight() -> None:
    clock = MovableClock(datetime(2030, 5, 17, 17, 56, 58, tzinfo=UTC))
    async with gateway(quota_config(tiers=FIVE_A_DAY), clock=clock) as gw:
        response = await gw.chat()
        assert response.headers["x-ratelimit-reset-requests"] == "6h3m2s"
        assert response.headers["x-ratelimit-reset-tokens"] == "6h3m2s"
        for _ in range(4):
            await gw.chat()
        clock.advance(hours=6, minutes=3)
        refused = await gw.chat()
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"
        assert refused.headers["x-ratelimit-reset-requests"] == "2s"
        usage = await gw.usage()
        assert usage["resets_at"] == "2030-05-18T00:00:00Z"


async def test_streaming_responses_carry_the_headers() -> None:
    async with gateway(quota_config(tiers=FIVE_A_DAY)) as gw:
        body = {**CHAT, "stream": True}
        async with gw.client.stream(
            "POST", "/chat/completions", json=body, headers=gw.auth
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-ratelimit-remaining-requests"] == "4"
            assert all(name in response.headers for name in RATELIMIT)


@pytest.mark.parametrize(
    ("body", "status"),
    [({"model": "demo/echo"}, 400), ({**CHAT, "model": "nope/x"}, 404)],
    ids=["invalid-body", "unknown-model"],
)
async def test_error_responses_carry_the_headers_without_counting(
    body: dict[str, object], status: int
) -> None:
    async with gateway(quota_config(tiers=FIVE_A_DAY)) as gw:
        await gw.chat()
        response = await gw.chat(body)
        assert response.status_code == status
        assert all(name in response.headers for name in RATELIMIT)
        assert response.headers["x-ratelimit-remaining-requests"] == "4"


async def test_usage_and_models_are_not_counted_but_carry_the_headers() -> None:
    async with gateway(quota_config(tiers=FIVE_A_DAY)) as gw:
        for path in ("/usage", "/models", "/models/demo/echo", "/usage"):
            response = await gw.client.get(path, headers=gw.auth)
            assert response.status_code == 200
            assert response.headers["x-ratelimit-remaining-requests"] == "5"
        usage = await gw.usage()
        assert usage["object"] == "usage"
        assert usage["used"] == {"requests": 0, "tokens": 0}
        assert usage["limits"] == {"requests_per_day": 5, "tokens_per_day": 100_000}
        assert usage["key_id"] == gw.key_id and usage["tier"] == 1


async def test_unauthenticated_responses_have_no_ratelimit_headers() -> None:
    async with gateway(quota_config(tiers=FIVE_A_DAY)) as gw:
        response = await gw.client.post("/chat/completions", json=CHAT)
        assert response.status_code == 401
        assert "x-ratelimit-limit-requests" not in response.headers
