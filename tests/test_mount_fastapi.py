"""The gateway mounted in host apps: FastAPI with the gateway's lifespan, Starlette without."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ResponseMessage,
    Usage,
)

CHAT = {"model": "rec/m", "messages": [{"role": "user", "content": "hi"}]}


class RecordingProvider:
    """A custom provider that records when its client is opened and closed."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    def models(self) -> Sequence[str]:
        return ["m"]

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        assert self.opened > self.closed, "chat called on a closed provider"
        return ChatCompletion(
            choices=[Choice(message=ResponseMessage(content="recorded"))],
            usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
        )

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def open(self) -> None:
        self.opened += 1

    async def aclose(self) -> None:
        self.closed += 1


KEY = "sk-ax-host-app-key-0123456789"


def build() -> tuple[AxioneApp, RecordingProvider, str]:
    provider = RecordingProvider()
    config = AxioneConfig(
        storage={"keys": "memory://", "ledger": "memory://"},
        keys=[{"name": "host", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
    )
    api = create_app(config, providers={"rec": provider})
    return api, provider, KEY


def fastapi_host(api: AxioneApp) -> FastAPI:
    host = FastAPI(lifespan=api.lifespan)

    @host.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    host.mount("/ai/v1", api)
    return host


def test_host_route_works_beside_the_gateway() -> None:
    api, _, _ = build()
    with TestClient(fastapi_host(api)) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_gateway_answers_under_the_mount_path() -> None:
    api, _, key = build()
    with TestClient(fastapi_host(api)) as client:
        response = client.post(
            "/ai/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 200
    assert response.json()["model"] == "rec/m"
    assert response.json()["choices"][0]["message"]["content"] == "recorded"


def test_gateway_models_are_listed_under_the_mount_path() -> None:
    api, _, key = build()
    with TestClient(fastapi_host(api)) as client:
        response = client.get("/ai/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert "rec/m" in [m["id"] for m in response.json()["data"]]


def test_gateway_errors_under_the_mount_are_spec_json() -> None:
    api, _, key = build()
    with TestClient(fastapi_host(api)) as client:
        response = client.get("/ai/v1/nowhere", headers={"Authorization": f"Bearer {key}"})
        unauthenticated = client.get("/ai/v1/models")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert unauthenticated.json()["error"]["code"] == "missing_api_key"


def test_host_routes_need_no_gateway_key() -> None:
    api, _, _ = build()
    with TestClient(fastapi_host(api)) as client:
        assert client.get("/health").status_code == 200


def test_host_lifespan_opens_the_provider_at_startup() -> None:
    api, provider, _ = build()
    with TestClient(fastapi_host(api)):
        assert (provider.opened, provider.closed) == (1, 0)


def test_host_lifespan_closes_the_provider_at_shutdown() -> None:
    api, provider, key = build()
    with TestClient(fastapi_host(api)) as client:
        client.post(
            "/ai/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
        )
    assert (provider.opened, provider.closed) == (1, 1)


def test_nothing_opens_before_the_host_starts() -> None:
    api, provider, _ = build()
    fastapi_host(api)
    assert (provider.opened, provider.closed) == (0, 0)


@pytest.mark.anyio
async def test_starlette_host_without_lifespan_starts_the_gateway_on_first_request() -> None:
    api, provider, key = build()
    host = Starlette(routes=[Mount("/ai/v1", app=api)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=host),
        base_url="http://host",
        headers={"Authorization": f"Bearer {key}"},
    ) as client:
        assert provider.opened == 0
        first = await client.post("/ai/v1/chat/completions", json=CHAT)
        second = await client.post("/ai/v1/chat/completions", json=CHAT)
    assert (first.status_code, second.status_code) == (200, 200)
    assert provider.opened == 1
