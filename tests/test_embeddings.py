"""`POST /embeddings` via the official openai SDK, for every kind that embeds, over strict fakes.

Kinds: `openai` and `openai-compatible` (`OpenAIProvider` over `FakeOpenAI`),
`mistral` (`MistralProvider` over `FakeMistral`, which refuses OpenAI's field
names), `gemini` (`GeminiProvider` over `GeminiFake`'s `batchEmbedContents`,
itself checked with Google's `google-genai` SDK here) and `demo`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp
from axione_asgi.config import ProviderConfig
from axione_asgi.providers.gemini import GeminiProvider
from axione_asgi.providers.openai import MistralProvider, OpenAIProvider
from axione_asgi.stores import MemoryKeyStore
from tests.fakes.gemini_fake import FAKE_KEY as GEMINI_KEY
from tests.fakes.gemini_fake import GeminiFake, embedding_vector
from tests.fakes.mistral_fake import FAKE_MISTRAL_KEY, FakeMistral
from tests.fakes.openai_fake import FAKE_OPENAI_KEY, FakeOpenAI, count_tokens, unit_vector

pytestmark = pytest.mark.anyio

TEXTS = ["The quick brown fox", "jumps over the lazy dog."]


@dataclass
class Fakes:
    openai: FakeOpenAI
    local: FakeOpenAI
    mistral: FakeMistral
    gemini: GeminiFake


@dataclass
class Gateway:
    app: AxioneApp
    fakes: Fakes
    client: openai.AsyncOpenAI
    raw: httpx.AsyncClient

    async def used_tokens(self) -> int:
        response = await self.raw.get("/usage")
        assert response.status_code == 200, response.text
        used: int = response.json()["used"]["tokens"]
        return used


def _providers(fakes: Fakes) -> dict[str, Any]:
    def transport(app: Any) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=app)

    return {
        "openai": OpenAIProvider(
            "openai",
            ProviderConfig(
                kind="openai",
                base_url="http://openai.test/v1",
                models={"gpt-4o": "gpt-4o"},
                embedding_models={
                    "text-embedding-3-small": "text-embedding-3-small",
                    "ada-002": "text-embedding-ada-002",
                },
            ),
            api_key=FAKE_OPENAI_KEY,
            transport=transport(fakes.openai),
        ),
        "local": OpenAIProvider(
            "local",
            ProviderConfig(
                kind="openai-compatible",
                base_url="http://local.test/v1",
                models={"llama": "llama-3.1-8b"},
                embedding_models={"bge": "text-embedding-3-small"},
            ),
            api_key=FAKE_OPENAI_KEY,
            transport=transport(fakes.local),
        ),
        "mistral": MistralProvider(
            "mistral",
            ProviderConfig(
                kind="mistral",
                base_url="http://mistral.test/v1",
                models={"mistral-large": "mistral-large-latest"},
                embedding_models={
                    "mistral-embed": "mistral-embed",
                    "codestral-embed": "codestral-embed",
                },
            ),
            api_key=FAKE_MISTRAL_KEY,
            transport=transport(fakes.mistral),
        ),
        "google": GeminiProvider(
            "google",
            ProviderConfig(
                kind="gemini",
                base_url="http://gemini.test",
                models={"gemini-2.5-flash-lite": "gemini-2.5-flash-lite"},
                embedding_models={"gemini-embedding-001": "gemini-embedding-001"},
            ),
            api_key=GEMINI_KEY,
            transport=transport(fakes.gemini),
        ),
    }


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    fakes = Fakes(FakeOpenAI(), FakeOpenAI(), FakeMistral(), GeminiFake())
    store = MemoryKeyStore()
    _, key = await store.create("embeddings")
    config = AxioneConfig.model_validate(
        {"storage": {"keys": "memory://", "ledger": "memory://"}, "retry": {"max_retries": 0}}
    )
    app = create_app(config, providers=_providers(fakes), key_store=store)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.lifespan())
        client = openai.AsyncOpenAI(
            api_key=key,
            base_url="http://gateway/",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
        )
        stack.push_async_callback(client.close)
        raw = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {key}"},
        )
        stack.push_async_callback(raw.aclose)
        yield Gateway(app, fakes, client, raw)


# -- what each kind's upstream computes, to compare the gateway's answer with ------
@dataclass(frozen=True)
class Kind:
    model: str
    size: int  # the full vector size
    # The vector the upstream makes for one text at one size.
    vector: Callable[[str, int], list[float]]
    # The tokens the gateway should count for these texts.
    tokens: Callable[[list[str]], int]
    # The dimensions field as the upstream received it, or None.
    sent_dimensions: Callable[[Fakes], Any]


def _estimate(texts: list[str]) -> int:
    # The router's own estimate, used when an upstream reports no tokens.
    return math.ceil(sum(len(t) for t in texts) / 4)


def _fake_tokens(texts: list[str]) -> int:
    return sum(count_tokens(t) for t in texts)


def _openai_vector(text: str, size: int) -> list[float]:
    return unit_vector(json.dumps(text), size)


def _demo_vector(text: str, size: int) -> list[float]:
    return []  # the demo model has no fake; its vectors are checked by property


KINDS = {
    "openai": Kind(
        "openai/text-embedding-3-small",
        1536,
        _openai_vector,
        _fake_tokens,
        lambda f: f.openai.last_body.get("dimensions") if f.openai.last_body else None,
    ),
    "openai-compatible": Kind(
        "local/bge",
        1536,
        _openai_vector,
        _fake_tokens,
        lambda f: f.local.last_body.get("dimensions") if f.local.last_body else None,
    ),
    "mistral": Kind(
        "mistral/codestral-embed",
        1536,
        unit_vector,
        _fake_tokens,
        lambda f: f.mistral.last_body.get("output_dimension"),
    ),
    "gemini": Kind(
        "google/gemini-embedding-001",
        3072,
        embedding_vector,
        _estimate,
        lambda f: f.gemini.last_body["requests"][0].get("outputDimensionality"),
    ),
    "demo": Kind("demo/embed", 256, _demo_vector, _fake_tokens, lambda f: None),
}
ALL_KINDS = pytest.mark.parametrize("kind", list(KINDS))
UPSTREAM_KINDS = pytest.mark.parametrize("kind", [k for k in KINDS if k != "demo"])


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


# -- vectors -------------------------------------------------------------------------
@UPSTREAM_KINDS
async def test_float_vectors_are_the_upstreams_in_input_order(gw: Gateway, kind: str) -> None:
    k = KINDS[kind]
    answer = await gw.client.embeddings.create(model=k.model, input=TEXTS, encoding_format="float")
    assert [d.index for d in answer.data] == [0, 1]
    for item, text in zip(answer.data, TEXTS, strict=True):
        assert item.embedding == pytest.approx(k.vector(text, k.size), abs=1e-9)


async def test_demo_float_vectors_are_deterministic_unit_vectors(gw: Gateway) -> None:
    first = await gw.client.embeddings.create(
        model="demo/embed", input=TEXTS, encoding_format="float"
    )
    again = await gw.client.embeddings.create(
        model="demo/embed", input=TEXTS[1], encoding_format="float"
    )
    assert [len(d.embedding) for d in first.data] == [256, 256]
    assert _norm(first.data[0].embedding) == pytest.approx(1.0)
    assert first.data[0].embedding != first.data[1].embedding
    assert again.data[0].embedding == first.data[1].embedding


@ALL_KINDS
async def test_sdk_default_base64_decodes_to_the_float_vectors(gw: Gateway, kind: str) -> None:
    model = KINDS[kind].model
    floats = await gw.client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    decoded = await gw.client.embeddings.create(model=model, input=TEXTS)  # SDK asks base64
    for a, b in zip(decoded.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, rel=1e-6, abs=1e-7)


@ALL_KINDS
async def test_base64_on_the_wire_is_little_endian_float32(gw: Gateway, kind: str) -> None:
    model = KINDS[kind].model
    response = await gw.raw.post(
        "/embeddings", json={"model": model, "input": "hello", "encoding_format": "base64"}
    )
    assert response.status_code == 200, response.text
    encoded = response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    assert len(raw) == 4 * KINDS[kind].size
    floats = await gw.client.embeddings.create(model=model, input="hello", encoding_format="float")
    unpacked = struct.unpack(f"<{KINDS[kind].size}f", raw)
    assert list(unpacked) == pytest.approx(floats.data[0].embedding, rel=1e-6, abs=1e-7)


@ALL_KINDS
async def test_string_input_gives_one_vector(gw: Gateway, kind: str) -> None:
    answer = await gw.client.embeddings.create(
        model=KINDS[kind].model, input="just one", encoding_format="float"
    )
    assert len(answer.data) == 1
    assert answer.data[0].index == 0
    assert len(answer.data[0].embedding) == KINDS[kind].size


@ALL_KINDS
async def test_response_model_is_the_public_id(gw: Gateway, kind: str) -> None:
    answer = await gw.client.embeddings.create(model=KINDS[kind].model, input="x y z")
    assert answer.model == KINDS[kind].model
    assert answer.object == "list"


@ALL_KINDS
async def test_dimensions_shorten_the_vectors(gw: Gateway, kind: str) -> None:
    k = KINDS[kind]
    answer = await gw.client.embeddings.create(
        model=k.model, input=TEXTS, dimensions=64, encoding_format="float"
    )
    assert [len(d.embedding) for d in answer.data] == [64, 64]
    if kind != "demo":
        assert k.sent_dimensions(gw.fakes) == 64
        assert answer.data[1].embedding == pytest.approx(k.vector(TEXTS[1], 64), abs=1e-9)


# -- usage ---------------------------------------------------------------------------
@ALL_KINDS
async def test_embedding_tokens_count_against_the_key(gw: Gateway, kind: str) -> None:
    k = KINDS[kind]
    before = await gw.used_tokens()
    answer = await gw.client.embeddings.create(model=k.model, input=TEXTS)
    after = await gw.used_tokens()
    assert after - before == k.tokens(TEXTS)
    if kind != "gemini":  # Gemini reports no tokens: see the next tests
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == k.tokens(TEXTS)


async def test_remaining_tokens_header_falls_by_the_counted_tokens(gw: Gateway) -> None:
    first = await gw.client.embeddings.with_raw_response.create(model="demo/embed", input=TEXTS)
    second = await gw.client.embeddings.with_raw_response.create(model="demo/embed", input=TEXTS)
    counted = first.parse().usage.total_tokens
    remaining = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in (first, second)]
    # Each header is taken at admission, after the previous request settled.
    assert remaining[0] - remaining[1] == counted


async def test_gemini_usage_metadata_is_used_when_reported(gw: Gateway) -> None:
    gw.fakes.gemini.embedding_usage = True
    before = await gw.used_tokens()
    answer = await gw.client.embeddings.create(model=KINDS["gemini"].model, input=TEXTS)
    words = sum(len(t.split()) for t in TEXTS)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == words
    assert await gw.used_tokens() - before == words


async def test_gemini_response_usage_shows_the_counted_estimate(gw: Gateway) -> None:
    answer = await gw.client.embeddings.create(model=KINDS["gemini"].model, input=TEXTS)
    assert answer.usage.prompt_tokens == _estimate(TEXTS)


# -- provider specifics ---------------------------------------------------------------
async def test_gemini_sends_batch_embed_contents_with_text_parts(gw: Gateway) -> None:
    await gw.client.embeddings.create(model=KINDS["gemini"].model, input=TEXTS, dimensions=8)
    sent = gw.fakes.gemini.last
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY
    assert sent.body == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": text}]},
                "outputDimensionality": 8,
            }
            for text in TEXTS
        ]
    }


async def test_gemini_splits_more_than_100_texts_into_batches(gw: Gateway) -> None:
    texts = [f"text number {i}" for i in range(150)]
    answer = await gw.client.embeddings.create(
        model=KINDS["gemini"].model, input=texts, dimensions=4, encoding_format="float"
    )
    calls = [r for r in gw.fakes.gemini.requests if r.action == "batchEmbedContents"]
    assert [len(r.body["requests"]) for r in calls] == [100, 50]
    assert [d.index for d in answer.data] == list(range(150))
    assert answer.data[149].embedding == pytest.approx(embedding_vector(texts[149], 4))


@pytest.mark.parametrize("kind", ["gemini", "mistral"])
async def test_token_arrays_are_a_400_where_the_upstream_embeds_text_only(
    gw: Gateway, kind: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client.embeddings.create(model=KINDS[kind].model, input=[[1, 2, 3]])
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "input"
    assert gw.fakes.gemini.requests == [] and gw.fakes.mistral.requests == []


async def test_gemini_empty_string_is_a_400_before_the_upstream(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client.embeddings.create(model=KINDS["gemini"].model, input=["ok", ""])
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "input[1]"
    assert gw.fakes.gemini.requests == []


async def test_openai_token_arrays_pass_through(gw: Gateway) -> None:
    answer = await gw.client.embeddings.create(
        model="openai/text-embedding-3-small", input=[[1, 2, 3], [4, 5]], encoding_format="float"
    )
    assert gw.fakes.openai.last_body is not None
    assert gw.fakes.openai.last_body["input"] == [[1, 2, 3], [4, 5]]
    assert len(answer.data) == 2
    assert answer.usage.prompt_tokens == 5


async def test_openai_compatible_sends_the_upstream_model_id(gw: Gateway) -> None:
    await gw.client.embeddings.create(model="local/bge", input="hi")
    assert gw.fakes.local.last_path == "/v1/embeddings"
    assert gw.fakes.local.last_body is not None
    assert gw.fakes.local.last_body["model"] == "text-embedding-3-small"
    assert gw.fakes.local.last_body["encoding_format"] == "float"


async def test_mistral_gets_output_dimension_and_no_openai_fields(gw: Gateway) -> None:
    await gw.client.embeddings.create(
        model="mistral/codestral-embed", input=TEXTS, dimensions=32, user="u-1"
    )
    assert gw.fakes.mistral.last_body == {
        "model": "codestral-embed",
        "input": TEXTS,
        "output_dimension": 32,
    }


async def test_upstream_refusal_of_dimensions_is_a_400(gw: Gateway) -> None:
    # mistral-embed has one size; Mistral refuses output_dimension for it.
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client.embeddings.create(model="mistral/mistral-embed", input="x", dimensions=8)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_invalid_request"
    assert "output_dimension" in caught.value.body["message"]


@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [
        ("gemini", 429, openai.RateLimitError),
        ("gemini", 503, openai.InternalServerError),
        ("openai", 429, openai.RateLimitError),
        ("openai", 500, openai.InternalServerError),
    ],
)
async def test_upstream_failure_maps_to_the_sdk_exception(
    gw: Gateway, kind: str, status: int, error: type[openai.APIStatusError]
) -> None:
    fake = gw.fakes.gemini if kind == "gemini" else gw.fakes.openai
    fake.fail_status = status
    with pytest.raises(error) as caught:
        await gw.client.embeddings.create(model=KINDS[kind].model, input="x")
    expected = {429: 429, 500: 502, 503: 503}[status]
    assert caught.value.status_code == expected


# -- routing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-4o",
        "local/llama",
        "mistral/mistral-large",
        "google/gemini-2.5-flash-lite",
        "demo/echo",
    ],
)
async def test_chat_model_asked_for_embeddings_is_400_model_not_supported(
    gw: Gateway, model: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client.embeddings.create(model=model, input="x")
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_supported"
    assert caught.value.body["param"] == "model"


@ALL_KINDS
async def test_embedding_model_asked_for_chat_is_400(gw: Gateway, kind: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client.chat.completions.create(
            model=KINDS[kind].model, messages=[{"role": "user", "content": "hi"}]
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_supported"


@pytest.mark.parametrize(
    "model", ["google/nope-embed", "nobody/embed", "openai/text-embedding-3-large"]
)
async def test_unknown_embedding_model_is_404_model_not_found(gw: Gateway, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await gw.client.embeddings.create(model=model, input="x")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_found"


async def test_models_lists_the_embedding_models(gw: Gateway) -> None:
    ids = {m.id for m in (await gw.client.models.list()).data}
    assert {k.model for k in KINDS.values()} | {"openai/ada-002", "mistral/mistral-embed"} <= ids
    assert "openai/gpt-4o" in ids
    one = await gw.client.models.retrieve("google/gemini-embedding-001")
    assert one.owned_by == "google"


# -- the Gemini fake's batchEmbedContents, against Google's SDK and the real rules --------
def _genai(fake: GeminiFake) -> genai.Client:
    return genai.Client(
        api_key=GEMINI_KEY,
        http_options=genai_types.HttpOptions(
            base_url="http://fake",
            api_version="v1beta",
            async_client_args={"transport": httpx2.ASGITransport(app=fake)},
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )


async def test_genai_sdk_embed_content_uses_the_fakes_batch_endpoint() -> None:
    fake = GeminiFake()
    contents: list[Any] = list(TEXTS)
    answer = await _genai(fake).aio.models.embed_content(
        model="gemini-embedding-001",
        contents=contents,
        config=genai_types.EmbedContentConfig(
            output_dimensionality=16, task_type="RETRIEVAL_DOCUMENT", title="doc"
        ),
    )
    assert fake.last.action == "batchEmbedContents"
    assert answer.embeddings is not None
    assert [e.values for e in answer.embeddings] == [embedding_vector(t, 16) for t in TEXTS]


async def test_genai_sdk_default_size_is_the_models_full_size() -> None:
    fake = GeminiFake()
    answer = await _genai(fake).aio.models.embed_content(
        model="text-embedding-004", contents="hello"
    )
    assert answer.embeddings is not None
    assert answer.embeddings[0].values is not None
    assert len(answer.embeddings[0].values) == 768


async def test_genai_sdk_gets_404_for_a_chat_model_on_the_batch_endpoint() -> None:
    with pytest.raises(genai.errors.ClientError) as caught:
        await _genai(GeminiFake()).aio.models.embed_content(
            model="gemini-2.5-flash", contents="hello"
        )
    assert caught.value.code == 404


async def _post_batch(fake: GeminiFake, body: Any) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url="http://fake"
    ) as client:
        return await client.post(
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            json=body,
            headers={"x-goog-api-key": GEMINI_KEY},
        )


def _item(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "hi"}]},
    }
    return {**item, **overrides}


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"requests": [_item(dimensions=8)]}, 'Unknown name "dimensions"'),
        ({"requests": [_item()], "input": "x"}, 'Unknown name "input"'),
        ({"requests": []}, "requests must not be empty"),
        ({"requests": [_item()] * 101}, "at most 100"),
        ({"requests": [_item(model="models/text-embedding-004")]}, "should match"),
        ({"requests": [{"content": {"parts": [{"text": "hi"}]}}]}, "model: Field is required"),
        ({"requests": [_item(content={"parts": []})]}, "must not be empty"),
        ({"requests": [_item(content={"parts": [{"text": ""}]})]}, "text must not be empty"),
        ({"requests": [_item(taskType="SEARCH")]}, "task_type"),
        ({"requests": [_item(outputDimensionality=4000)]}, "between 1 and 3072"),
    ],
)
async def test_fake_batch_embed_refuses_what_gemini_refuses(body: Any, said: str) -> None:
    response = await _post_batch(GeminiFake(), body)
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert said in response.json()["error"]["message"]


async def test_fake_batch_embed_reports_no_tokens_by_default() -> None:
    response = await _post_batch(GeminiFake(), {"requests": [_item(outputDimensionality=3)]})
    assert response.status_code == 200
    assert response.json() == {"embeddings": [{"values": embedding_vector("hi", 3)}]}
