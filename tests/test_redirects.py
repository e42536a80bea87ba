"""No upstream client follows a redirect for a provider call (issue 17).

An upstream (or whatever answers in its name) that redirects must not make
the gateway carry the provider's key (`Authorization`, Anthropic's
`x-api-key`, Gemini's `x-goog-api-key`) to another origin: every client
returns the 3xx as it is, and the provider makes it a 502.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from axione_asgi.transports import open_upstream
from tests.faults import UPSTREAM_KEY, Witness, fault_config, provider_table, rig, witness
from tests.helpers import assert_spec_error
from tests.test_transport_httptools import Request, Server, answer, keep_alive, serve

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

__all__ = ["witness"]  # a fixture used here

TRANSPORTS = pytest.mark.parametrize("transport", ["httptools", "aiohttp", "httpx"])
REASONS = {301: "Moved Permanently", 302: "Found", 303: "See Other", 307: "Temporary Redirect"}
REASONS[308] = "Permanent Redirect"


@asynccontextmanager
async def redirecting(status: int = 307) -> AsyncIterator[tuple[Server, Server]]:
    """An upstream that redirects every request to the same path on another origin."""
    async with serve(keep_alive()) as elsewhere:

        def reply(request: Request) -> bytes:
            location = f"Location: {elsewhere.url}{request.target}"
            return answer(status, b"", [location], REASONS[status])

        async with serve(keep_alive(reply)) as upstream:
            yield upstream, elsewhere


@TRANSPORTS
@pytest.mark.parametrize("status", sorted(REASONS))
async def test_no_client_follows_a_redirect(transport: str, status: int) -> None:
    async with redirecting(status) as (upstream, elsewhere):
        client = open_upstream(
            transport,
            base_url=upstream.url,
            headers={"x-api-key": UPSTREAM_KEY},
            timeout_s=2.0,
            connect_timeout_s=2.0,
            max_connections=2,
        )
        try:
            whole = await client.post("/v1/messages", b"{}")
            async with client.stream("/v1/messages", b"{}") as stream:
                streamed = stream.status
                await stream.read()
        finally:
            await client.aclose()
    assert (whole.status, streamed) == (status, status)
    assert whole.headers["location"] == f"{elsewhere.url}/v1/messages"
    # Before, through aiohttp: each call reached the other origin, key and all.
    assert elsewhere.requests == []
    assert len(upstream.requests) == 2


KINDS: dict[str, dict[str, Any]] = {
    "openai": {"path": "/v1", "model": "gpt-4o", "extra": {}},
    "anthropic": {"path": "", "model": "claude", "extra": {"kind": "anthropic"}},
    "gemini": {"path": "", "model": "gemini", "extra": {"kind": "gemini"}},
}


@TRANSPORTS
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_redirected_provider_call_is_a_502_and_the_key_stays_home(
    transport: str, kind: str, stream: bool, witness: Witness
) -> None:
    spec = KINDS[kind]
    async with redirecting(307) as (upstream, elsewhere):
        table = provider_table(
            upstream.url + spec["path"],
            {spec["model"]: "upstream-model"},
            transport=transport,
            **spec["extra"],
        )
        async with rig(fault_config({"primary": table}, max_retries=0), witness) as r:
            response = await r.chat(model=f"primary/{spec['model']}", stream=stream)
    error = assert_spec_error(response, 502, "upstream_error")
    # Before: a 3xx read as a success (an empty answer, or an empty stream).
    assert "status 307" in error["message"]
    assert elsewhere.requests == []
    [request] = upstream.requests
    assert UPSTREAM_KEY in str(request.headers)  # the key went where it belongs, only
