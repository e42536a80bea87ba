"""An OpenAI-format stream that ends without `[DONE]` or a finish reason is an error, not a 200."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from axione_asgi import AxioneConfig, create_app
from axione_asgi.config import ProviderConfig
from axione_asgi.providers.openai import OpenAIProvider
from axione_asgi.stores import MemoryKeyStore

pytestmark = pytest.mark.anyio

CHUNK = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"partial"}}]}\n\n'
)


def upstream(body: str) -> Starlette:
    async def chat(request: Request) -> Response:
        if body == "not-sse":
            return JSONResponse({"unexpected": "a JSON answer to a stream request"})

        async def events() -> AsyncIterator[bytes]:
            if body == "cut":
                yield CHUNK  # then the connection ends: no finish reason, no [DONE]

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def stream_through(body: str) -> httpx.Response:
    store = MemoryKeyStore()
    _, key = await store.create("s")
    provider = OpenAIProvider(
        "up",
        ProviderConfig(kind="openai", base_url="http://up.test/v1", models={"m": "m"}),
        api_key="sk-upstream-0123456789",
        transport=httpx.ASGITransport(app=upstream(body)),
    )
    config = AxioneConfig.model_validate(
        {"storage": {"keys": "memory://", "ledger": "memory://"}, "retry": {"max_retries": 0}}
    )
    app = create_app(config, providers={"up": provider}, key_store=store)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        return await client.post(
            "/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "up/m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        )


async def test_a_stream_cut_after_some_text_ends_with_an_error_event() -> None:
    answer = await stream_through("cut")
    assert answer.status_code == 200
    assert "partial" in answer.text
    assert not answer.text.endswith("data: [DONE]\n\n")
    assert '"upstream_error"' in answer.text.splitlines()[-2]


@pytest.mark.parametrize("body", ["empty", "not-sse"])
async def test_a_stream_with_nothing_in_it_is_a_502_before_any_event(body: str) -> None:
    answer = await stream_through(body)
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_error"
