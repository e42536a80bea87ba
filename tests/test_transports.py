"""Every upstream client that ships (httpx, aiohttp, httptools), the same through the gateway."""

from __future__ import annotations

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

TRANSPORTS = pytest.mark.parametrize("transport", ["httpx", "aiohttp", "httptools"])


def _providers(url: str, transport: str, **extra: object) -> dict[str, dict[str, object]]:
    table = provider_table(url, {"gpt-4o": "gpt-4o"}, transport=transport, **extra)
    return {"primary": table}


@TRANSPORTS
async def test_chat_answers_with_the_upstream_text_and_usage(
    upstreams: Upstreams, witness: Witness, transport: str
) -> None:
    async with rig(fault_config(_providers(upstreams.primary_url, transport)), witness) as r:
        response = await r.chat()
        assert response.status_code == 200
        body = response.json()
        assert body["choices"][0]["message"]["content"] == "Say hello to the fault tests"
        assert body["usage"]["total_tokens"] > 0


@TRANSPORTS
async def test_stream_reaches_done_and_the_next_request_still_works(
    upstreams: Upstreams, witness: Witness, transport: str
) -> None:
    async with rig(fault_config(_providers(upstreams.primary_url, transport)), witness) as r:
        for _ in range(3):
            response = await r.chat(stream=True)
            events = sse_events(response.text)
            assert events[-1] == "[DONE]"
            text = "".join(
                e["choices"][0]["delta"].get("content") or ""
                for e in events[:-1]
                if isinstance(e, dict) and e.get("choices")
            )
            assert text == "Say hello to the fault tests"


@TRANSPORTS
async def test_upstream_500_is_502(upstreams: Upstreams, witness: Witness, transport: str) -> None:
    upstreams.primary.fail_status = 500
    config = fault_config(_providers(upstreams.primary_url, transport), max_retries=0)
    async with rig(config, witness) as r:
        assert_spec_error(await r.chat(), 502, "upstream_error")


@TRANSPORTS
async def test_upstream_slower_than_its_timeout_is_504(
    upstreams: Upstreams, witness: Witness, transport: str
) -> None:
    upstreams.primary.delay_s = 2.0
    providers = _providers(upstreams.primary_url, transport, timeout_s=0.2)
    async with rig(fault_config(providers, max_retries=0), witness) as r:
        assert_spec_error(await r.chat(), 504, "upstream_timeout")


@TRANSPORTS
async def test_refused_connection_is_503(
    upstreams: Upstreams, witness: Witness, transport: str
) -> None:
    config = fault_config(_providers(upstreams.refused_url, transport), max_retries=0)
    async with rig(config, witness) as r:
        assert_spec_error(await r.chat(), 503, "provider_unavailable")
