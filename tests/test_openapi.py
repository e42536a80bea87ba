"""/openapi.json: a valid OpenAPI 3.1 document, served without a key, of the routes as built."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.routing import Route

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp
from tests.quota_app import asgi_client

pytestmark = pytest.mark.anyio

# SPEC section 1, /embeddings, and the Messages dialect (SPEC section 9).
SPEC_OPERATIONS = {
    ("post", "/chat/completions"),
    ("get", "/models"),
    ("get", "/models/{provider}/{model}"),
    ("get", "/usage"),
    ("post", "/embeddings"),
    ("post", "/messages"),
    ("post", "/messages/count_tokens"),
}


@pytest.fixture
async def app() -> AsyncIterator[AxioneApp]:
    config = AxioneConfig.from_mapping({"storage": {"keys": "memory://", "ledger": "memory://"}})
    api = create_app(config)
    async with api.lifespan():
        yield api


@pytest.fixture
async def document(app: AxioneApp) -> dict[str, Any]:
    async with asgi_client(app) as client:
        response = await client.get("/openapi.json")  # no key
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc: dict[str, Any] = response.json()
    return doc


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item}


async def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    assert document["openapi"].startswith("3.1")
    validator.validate(document)


async def test_every_ref_resolves_to_a_component(document: dict[str, Any]) -> None:
    text = str(document)
    schemas = document["components"]["schemas"]
    for name in re.findall(r"#/components/schemas/([\w.-]+)", text):
        assert name in schemas, name


async def test_document_describes_every_spec_route(document: dict[str, Any]) -> None:
    assert operations(document) >= SPEC_OPERATIONS


async def test_every_documented_route_exists(document: dict[str, Any], app: AxioneApp) -> None:
    built = {
        (method.lower(), re.sub(r"\{(\w+)(:\w+)?\}", "{}", r.path))
        for r in app.routes
        if isinstance(r, Route)
        for method in r.methods or ()
    }
    for method, path in operations(document):
        # `{model_id:path}` serves `{provider}/{model}`: both are path parameters.
        shape = re.sub(r"\{\w+\}(/\{\w+\})*", "{}", path)
        assert (method, shape) in built, (method, path)


async def test_every_operation_has_a_unique_id_and_documents_its_errors(
    document: dict[str, Any],
) -> None:
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for item in document["paths"].values():
        for op in item.values():
            # A public operation (`security: []`, the usage page) has no key to refuse.
            needed = {"200"} if op.get("security") == [] else {"200", "401", "429"}
            assert needed <= set(op["responses"])


async def test_usage_page_is_public_and_history_needs_a_key(document: dict[str, Any]) -> None:
    page = document["paths"]["/dashboard"]["get"]
    assert page["security"] == []
    assert "text/html" in page["responses"]["200"]["content"]
    history = document["paths"]["/usage/history"]["get"]
    assert "security" not in history  # the document's bearer requirement applies
    [days] = history["parameters"]
    assert (days["name"], days["schema"]["minimum"], days["schema"]["maximum"]) == ("days", 1, 90)


async def test_document_declares_bearer_or_x_api_key_auth(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer"
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert document["security"] == [{"bearer": []}, {"apiKey": []}]  # either one


async def test_messages_operations_answer_in_anthropics_envelope(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["MessagesRequest"]["required"] == ["model", "messages", "max_tokens"]
    assert schemas["CountTokensRequest"]["required"] == ["model", "messages"]
    create = document["paths"]["/messages"]["post"]
    ok = create["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["$ref"].endswith("/Message")
    assert "text/event-stream" in ok
    for path in ("/messages", "/messages/count_tokens"):
        responses = document["paths"][path]["post"]["responses"]
        errors = [r for status, r in responses.items() if status != "200"]
        assert errors and all(
            r["content"]["application/json"]["schema"]["$ref"].endswith("/AnthropicError")
            for r in errors
        )
    envelope = schemas["AnthropicError"]
    assert envelope["properties"]["type"] == {"const": "error"}
    assert "overloaded_error" in envelope["properties"]["error"]["properties"]["type"]["enum"]
