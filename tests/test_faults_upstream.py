"""Upstream faults, one per test, against fake upstreams on real sockets: what the client gets.

Each test asserts the client's status and SPEC error JSON, how often the
upstream was called, and what the ledger and `/usage` charged.
"""

from __future__ import annotations

import time

import pytest

from tests.faults import (
    Upstreams,
    Witness,
    fault_config,
    provider_table,
    rig,
    served_upstreams,
    sse_events,
    upstreams,
    witness,
)
from tests.helpers import assert_spec_error

pytestmark = pytest.mark.anyio

__all__ = ["served_upstreams", "upstreams", "witness"]  # fixtures used here


def primary(up: Upstreams, **extra: object) -> dict[str, dict[str, object]]:
    return {"primary": provider_table(up.primary_url, {"gpt-4o": "gpt-4o"}, **extra)}


async def test_upstream_500_is_retried_then_answered_502_and_counted(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_status = 500
    async with rig(fault_config(primary(upstreams), max_retries=2), witness) as r:
        response = await r.chat()
        assert_spec_error(response, 502, "upstream_error")
        assert len(upstreams.primary.calls) == 3
        (record,) = await r.ledger()
        assert (record.status, record.prompt_tokens, record.completion_tokens) == (502, 0, 0)
        assert (await r.usage())["used"] == {"requests": 1, "tokens": 0}


async def test_upstream_500_once_is_retried_and_the_client_sees_success(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_times = 1
    async with rig(fault_config(primary(upstreams)), witness) as r:
        response = await r.chat()
        assert response.status_code == 200, response.text
        assert len(upstreams.primary.calls) == 2
        usage = response.json()["usage"]
        (record,) = await r.ledger()
        assert record.status == 200 and not record.estimated
        assert record.prompt_tokens == usage["prompt_tokens"]
        assert record.completion_tokens == usage["completion_tokens"]
        assert (await r.usage())["used"]["tokens"] == usage["total_tokens"]


async def test_upstream_429_is_retried_after_its_retry_after_delay(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_times, upstreams.primary.fail_with = 1, 429
    upstreams.primary.retry_after = "0.3"
    async with rig(fault_config(primary(upstreams)), witness) as r:
        response = await r.chat()
        assert response.status_code == 200, response.text
        first, second = upstreams.primary.calls
        assert second - first >= 0.3
        assert second - first < 1.0  # the upstream's delay, not a long backoff


async def test_upstream_429_whose_retry_after_passes_the_deadline_answers_429_at_once(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_status, upstreams.primary.retry_after = 429, "30"
    async with rig(fault_config(primary(upstreams), deadline_s=2), witness) as r:
        began = time.monotonic()
        response = await r.chat()
        assert time.monotonic() - began < 1.0
        assert_spec_error(response, 429, "upstream_rate_limited")
        assert response.headers["retry-after"] == "30"
        assert len(upstreams.primary.calls) == 1


async def test_upstream_hanging_past_its_timeout_is_504(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.delay_s = 2.0
    config = fault_config(primary(upstreams, timeout_s=0.2), max_retries=0)
    async with rig(config, witness) as r:
        began = time.monotonic()
        response = await r.chat()
        assert time.monotonic() - began < 1.5
        assert_spec_error(response, 504, "upstream_timeout")
        (record,) = await r.ledger()
        assert record.status == 504


async def test_hangs_retried_past_the_request_deadline_are_504(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.delay_s = 2.0
    config = fault_config(primary(upstreams, timeout_s=5), max_retries=5, deadline_s=0.4)
    async with rig(config, witness) as r:
        began = time.monotonic()
        response = await r.chat()
        assert time.monotonic() - began < 1.5
        assert_spec_error(response, 504, "upstream_timeout")


async def test_connection_refused_is_503_provider_unavailable(
    upstreams: Upstreams, witness: Witness
) -> None:
    providers = {"primary": provider_table(upstreams.refused_url, {"gpt-4o": "gpt-4o"})}
    async with rig(fault_config(providers, max_retries=1), witness) as r:
        response = await r.chat()
        error = assert_spec_error(response, 503, "provider_unavailable")
        assert "127.0.0.1" not in error["message"]  # no upstream address either
        (record,) = await r.ledger()
        assert record.status == 503


async def test_malformed_json_answer_is_502(upstreams: Upstreams, witness: Witness) -> None:
    upstreams.primary.malformed = True
    async with rig(fault_config(primary(upstreams), max_retries=0), witness) as r:
        response = await r.chat()
        assert_spec_error(response, 502, "upstream_error")
        (record,) = await r.ledger()
        assert (record.status, record.prompt_tokens + record.completion_tokens) == (502, 0)


async def test_stream_cut_midway_ends_with_an_error_event_and_charges_what_was_produced(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.cut_stream_after = 3
    async with rig(fault_config(primary(upstreams)), witness) as r:
        response = await r.chat(stream=True)
        assert response.status_code == 200
        events = sse_events(response.text)
        assert "[DONE]" not in events
        *chunks, last = events
        assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert last["error"]["type"] == "upstream_error"
        assert len(upstreams.primary.calls) == 1  # never retried after the first byte
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        (record,) = await r.ledger()
        assert record.estimated and record.completion_tokens == -(-len(text) // 4)


async def test_upstream_error_event_midstream_is_passed_on_as_the_final_event(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.stream_error_after = 2
    upstreams.primary.echo_key_in_errors = True
    async with rig(fault_config(primary(upstreams)), witness) as r:
        response = await r.chat(stream=True)
        last = sse_events(response.text)[-1]
        assert set(last["error"]) == {"type", "message", "code", "param"}
        assert last["error"]["code"] == "upstream_error"
        assert "[redacted]" in last["error"]["message"]


async def test_stream_failing_before_its_first_byte_is_a_plain_http_error(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_status = 500
    async with rig(fault_config(primary(upstreams), max_retries=1), witness) as r:
        response = await r.chat(stream=True)
        assert_spec_error(response, 502, "upstream_error")
        assert len(upstreams.primary.calls) == 2


async def test_stream_silent_past_its_first_byte_timeout_is_504(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.delay_s = 2.0
    config = fault_config(primary(upstreams, first_byte_timeout_s=0.2), max_retries=0)
    async with rig(config, witness) as r:
        began = time.monotonic()
        response = await r.chat(stream=True)
        assert time.monotonic() - began < 1.5
        assert_spec_error(response, 504, "upstream_timeout")


async def test_upstream_rejecting_the_gateway_key_is_502_and_not_retried(
    upstreams: Upstreams, witness: Witness
) -> None:
    upstreams.primary.fail_status = 401
    async with rig(fault_config(primary(upstreams)), witness) as r:
        assert_spec_error(await r.chat(), 502, "upstream_auth_failed")
        assert len(upstreams.primary.calls) == 1
