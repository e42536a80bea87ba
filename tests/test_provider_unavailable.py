"""A known provider whose key is not set is SPEC 2's 503 `provider_unavailable` (issue 16).

On the embedded default (no configuration file) a known provider is served
once its key is in the environment (SPEC 5). Before, its models are not
unknown: asking for one says which variable enables it, and that the demo
model works offline, instead of a 404 that reads as if the model did not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import openai
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.config import StorageConfig
from axione_asgi.stores import MemoryKeyStore
from tests.helpers import assert_spec_error

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "Hello!"}]
MEMORY = "memory://"


@asynccontextmanager
async def sdk(
    config: AxioneConfig, environ: Mapping[str, str] | None = None
) -> AsyncIterator[openai.AsyncOpenAI]:
    store = MemoryKeyStore()
    _, key = await store.create("first-request")
    # In memory, not the embedded default's SQLite file in the working folder.
    config = config.model_copy(update={"storage": StorageConfig(keys=MEMORY, ledger=MEMORY)})
    app = create_app(config, key_store=store, environ=environ or {})
    async with (
        app.lifespan(),
        openai.AsyncOpenAI(
            api_key=key,
            base_url="http://gateway/",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
        ) as client,
    ):
        yield client


def embedded(environ: Mapping[str, str] | None = None) -> AxioneConfig:
    return AxioneConfig.embedded_default(environ or {})


async def test_the_seeds_first_example_without_openai_key_is_503_naming_the_variable() -> None:
    async with sdk(embedded()) as client:
        with pytest.raises(openai.InternalServerError) as unavailable:
            await client.chat.completions.create(model="openai/gpt-4o", messages=USER)
    assert unavailable.value.status_code == 503
    error: Any = unavailable.value.body
    assert error["code"] == "provider_unavailable"
    assert error["type"] == "upstream_error"
    assert error["param"] == "model"
    assert "openai/gpt-4o" in error["message"]
    assert "OPENAI_API_KEY" in error["message"]
    assert "'demo/echo' works offline" in error["message"]


@pytest.mark.parametrize(
    ("model", "variable"),
    [
        ("anthropic/claude-3.5-sonnet", "ANTHROPIC_API_KEY"),
        ("google/gemini-2.5-flash", "GEMINI_API_KEY"),
        ("mistral/mistral-large", "MISTRAL_API_KEY"),
        ("openai/a-model-the-default-does-not-list", "OPENAI_API_KEY"),
    ],
)
async def test_every_known_provider_without_its_key_names_its_variable(
    model: str, variable: str
) -> None:
    async with sdk(embedded()) as client:
        with pytest.raises(openai.InternalServerError) as unavailable:
            await client.chat.completions.create(model=model, messages=USER)
    assert unavailable.value.status_code == 503
    assert variable in unavailable.value.message


async def test_it_is_not_counted_against_the_quota() -> None:
    async with sdk(embedded()) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="openai/gpt-4o", messages=USER)
        usage = await client.get("/usage", cast_to=object)
    assert usage["used"]["requests"] == 0  # type: ignore[index]


async def test_embeddings_of_a_keyless_provider_say_the_same() -> None:
    async with sdk(embedded()) as client:
        with pytest.raises(openai.InternalServerError) as unavailable:
            await client.embeddings.create(model="openai/text-embedding-3-small", input="x")
    assert "OPENAI_API_KEY" in unavailable.value.message


async def test_a_provider_whose_key_is_set_is_served_and_the_others_still_say_503() -> None:
    environ = {"MISTRAL_API_KEY": "m-key"}
    async with sdk(embedded(environ), environ) as client:
        listed = {m.id async for m in client.models.list()}
        assert "mistral/mistral-large" in listed and "openai/gpt-4o" not in listed
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="openai/gpt-4o", messages=USER)


async def test_unknown_models_are_still_404() -> None:
    async with sdk(embedded()) as client:
        for model in ("nobody/nothing", "demo/nothing"):
            with pytest.raises(openai.NotFoundError) as missing:
                await client.chat.completions.create(model=model, messages=USER)
            assert missing.value.code == "model_not_found"  # type: ignore[attr-defined]


async def test_a_configuration_file_names_its_own_providers_so_others_are_404() -> None:
    # The file is the operator's list: a provider it leaves out is no model of this gateway.
    config = AxioneConfig.from_mapping({"providers": {"demo": {"kind": "demo"}}})
    async with sdk(config) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="openai/gpt-4o", messages=USER)


async def test_the_messages_dialect_says_it_in_anthropics_envelope() -> None:
    store = MemoryKeyStore()
    _, key = await store.create("messages")
    config = embedded().model_copy(update={"storage": StorageConfig(keys=MEMORY, ledger=MEMORY)})
    app = create_app(config, key_store=store, environ={})
    async with (
        app.lifespan(),
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://gateway"
        ) as http,
    ):
        answer = await http.post(
            "/messages",
            headers={"x-api-key": key},
            json={"model": "anthropic/claude-3.5-sonnet", "max_tokens": 8, "messages": USER},
        )
        chat = await http.post(
            "/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "anthropic/claude-3.5-sonnet", "messages": USER},
        )
    assert answer.status_code == 503
    assert answer.json()["type"] == "error"
    assert "ANTHROPIC_API_KEY" in answer.json()["error"]["message"]
    assert_spec_error(chat, 503, "provider_unavailable")  # type: ignore[arg-type]
