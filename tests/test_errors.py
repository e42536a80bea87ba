"""Every error the gateway answers is SPEC section 2's JSON, with the right status."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import pytest

from axione_asgi import AxioneConfig, Provider, create_app
from axione_asgi.openai_types import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from axione_asgi.stores import MemoryKeyStore
from tests.helpers import assert_spec_error

pytestmark = pytest.mark.anyio

CHAT = {"model": "demo/echo", "messages": [{"role": "user", "content": "hi"}]}


class ExplodingProvider:
    """A custom provider with a bug: every call raises an unexpected exception."""

    def models(self) -> Sequence[str]:
        return ["bomb"]

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        raise RuntimeError("secret internal state: /etc/axione/boom.py line 42")

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        raise RuntimeError("secret internal state: /etc/axione/boom.py line 42")
        yield  # pragma: no cover

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


@contextlib.asynccontextmanager
async def gateway(
    providers: Mapping[str, Provider] | None = None, **config: Any
) -> AsyncIterator[httpx.AsyncClient]:
    store = MemoryKeyStore()
    _, key = await store.create("errors")
    app = create_app(
        AxioneConfig(storage={"keys": "memory://", "ledger": "memory://"}, **config),
        providers=providers,
        key_store=store,
    )
    async with (
        app.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {key}"},
        ) as client,
    ):
        yield client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with gateway() as c:
        yield c


async def test_unknown_path_is_404_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/path")
    assert_spec_error(response, 404, "not_found")


async def test_wrong_method_is_405_in_spec_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/chat/completions")
    error = assert_spec_error(response, 405, "method_not_allowed")
    assert error["type"] == "invalid_request_error"


async def test_body_over_max_body_bytes_is_413() -> None:
    async with gateway(max_body_bytes=200) as client:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 500}]}
        response = await client.post("/chat/completions", json=big)
    assert_spec_error(response, 413, "request_too_large")


async def test_chunked_body_over_max_body_bytes_is_413() -> None:
    async def body() -> AsyncIterator[bytes]:
        payload = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 500}]})
        for i in range(0, len(payload), 50):
            yield payload[i : i + 50].encode()

    async with gateway(max_body_bytes=200) as client:
        response = await client.post("/chat/completions", content=body())
    assert_spec_error(response, 413, "request_too_large")


async def test_invalid_json_is_400_invalid_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", content=b'{"model": "demo/echo",')
    assert_spec_error(response, 400, "invalid_json")


async def test_empty_body_is_400_invalid_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", content=b"")
    assert_spec_error(response, 400, "invalid_json")


@pytest.mark.parametrize("body", [b"[1, 2]", b"42", b'"text"', b"null", b"true"])
async def test_non_object_json_is_400_invalid_json(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/chat/completions", content=body)
    assert_spec_error(response, 400, "invalid_json")


async def test_missing_messages_is_missing_field_with_param(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json={"model": "demo/echo"})
    error = assert_spec_error(response, 400, "missing_field")
    assert error["param"] == "messages"


async def test_missing_model_is_missing_field_with_param(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json={"messages": CHAT["messages"]})
    error = assert_spec_error(response, 400, "missing_field")
    assert error["param"] == "model"


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("max_tokens", "ten", "max_tokens"),
        ("temperature", "hot", "temperature"),
        ("temperature", 5, "temperature"),
        ("stream", "yes please", "stream"),
        ("messages", "hello", "messages"),
        ("model", 42, "model"),
        ("n", 0, "n"),
    ],
)
async def test_wrong_type_is_400_invalid_value(
    client: httpx.AsyncClient, field: str, value: Any, param: str
) -> None:
    response = await client.post("/chat/completions", json={**CHAT, field: value})
    error = assert_spec_error(response, 400, "invalid_value")
    assert error["param"] == param


async def test_invalid_role_names_the_message_in_param(client: httpx.AsyncClient) -> None:
    body = {**CHAT, "messages": [{"role": "robot", "content": "hi"}]}
    response = await client.post("/chat/completions", json=body)
    error = assert_spec_error(response, 400, "invalid_value")
    assert error["param"] == "messages[0].role"


async def test_unknown_model_is_404_model_not_found(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json={**CHAT, "model": "invalid/model"})
    error = assert_spec_error(response, 404, "model_not_found")
    assert error["message"] == "Model 'invalid/model' not found"


async def test_unknown_model_object_is_404_model_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/models/demo/nothing")
    assert_spec_error(response, 404, "model_not_found")


async def test_missing_key_is_401_missing_api_key(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=CHAT, headers={"Authorization": ""})
    assert_spec_error(response, 401, "missing_api_key")


async def test_unexpected_provider_exception_is_500_api_error_with_request_id() -> None:
    async with gateway({"acme": ExplodingProvider()}) as client:
        response = await client.post("/chat/completions", json={**CHAT, "model": "acme/bomb"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert set(response.json()) == {"error"}
    assert set(error) == {"type", "message", "code", "param"}
    assert error["type"] == "api_error"
    assert response.headers["x-request-id"] in error["message"]


async def test_unexpected_provider_exception_leaks_no_traceback() -> None:
    async with gateway({"acme": ExplodingProvider()}) as client:
        response = await client.post("/chat/completions", json={**CHAT, "model": "acme/bomb"})
    assert "Traceback" not in response.text
    assert "secret internal state" not in response.text
    assert "boom.py" not in response.text


async def test_unexpected_exception_before_a_stream_is_500_api_error() -> None:
    async with gateway({"acme": ExplodingProvider()}) as client:
        body = {**CHAT, "model": "acme/bomb", "stream": True}
        response = await client.post("/chat/completions", json=body)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"
    assert "secret internal state" not in response.text


async def test_error_responses_carry_a_request_id(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", content=b"{")
    assert response.headers["x-request-id"].startswith("req_")
