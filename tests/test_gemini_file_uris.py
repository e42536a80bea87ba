"""Gemini `gs://` and Files-API image URLs are read with the operator's identity: refused.

Gemini fetches public `http(s)://` URLs itself as anyone would; a `gs://`
object or a file uploaded to the Files API is read with the gateway's own
Google credentials, so a client could read the operator's files. Those URLs
are a 400 unless the provider table says `allow_file_uris = true`.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axione_asgi import AxioneConfig, create_app
from axione_asgi.config import ProviderConfig
from axione_asgi.errors import InvalidRequest
from axione_asgi.openai_types import ChatCompletionRequest
from axione_asgi.providers.gemini import GeminiProvider
from axione_asgi.stores import MemoryKeyStore
from tests.fakes.gemini_fake import FAKE_KEY
from tests.helpers import assert_spec_error

pytestmark = pytest.mark.anyio

MODEL = "gemini-2.5-flash-lite"
OPERATOR_FILES = [
    "gs://operator-bucket/private/scan.png",
    "GS://operator-bucket/x.jpg",
    "https://generativelanguage.googleapis.com/v1beta/files/abc123",
    "https://generativelanguage.googleapis.com/v1beta/files/abc123?alt=media",
    "https://GenerativeLanguage.googleapis.com./v1beta/files/abc-9",
    "http://generativelanguage.googleapis.com/v1/files/xyz",
    "https://generativelanguage.googleapis.com:443/upload/v1beta/files/q",
]


def request_with(url: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": f"google/{MODEL}",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ],
        }
    )


def provider(**table: Any) -> GeminiProvider:
    config = ProviderConfig(
        kind="gemini", base_url="http://gemini.test", models={MODEL: MODEL}, **table
    )
    return GeminiProvider("google", config, api_key=FAKE_KEY)


@pytest.mark.parametrize("url", OPERATOR_FILES)
def test_operator_file_uris_are_refused_by_default(url: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        provider().payload(request_with(url), MODEL)
    assert raised.value.status == 400
    assert raised.value.param == "messages[0].content[0].image_url.url"


@pytest.mark.parametrize("url", OPERATOR_FILES)
def test_operator_file_uris_pass_when_the_provider_allows_them(url: str) -> None:
    body = provider(allow_file_uris=True).payload(request_with(url), MODEL)
    assert body["contents"][0]["parts"][0]["fileData"]["fileUri"] == url


@given(
    host=st.sampled_from(["example.com", "cdn.example.org", "googleapis.com.evil.test"]),
    path=st.sampled_from(["/cat.png", "/v1beta/files/abc", "/files/x.jpg", "/photo"]),
)
@settings(max_examples=40, deadline=None)
def test_public_urls_elsewhere_still_pass(host: str, path: str) -> None:
    url = f"https://{host}{path}"
    body = provider().payload(request_with(url), MODEL)
    assert body["contents"][0]["parts"][0]["fileData"]["fileUri"] == url


async def test_a_gs_url_through_the_gateway_is_a_400_naming_the_setting() -> None:
    # The upstream is unreachable: a URL that got through would be a 502, not a 400.
    config = AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", "counters": "memory://"},
            "providers": {
                "google": {
                    "kind": "gemini",
                    "base_url": "http://127.0.0.1:9",
                    "api_key": FAKE_KEY,
                    "models": {MODEL: MODEL},
                }
            },
            "retry": {"max_retries": 0},
        }
    )
    store = MemoryKeyStore()
    app = create_app(config, key_store=store)
    _, secret = await store.create("client")
    body = request_with("gs://operator-bucket/private/scan.png").model_dump(exclude_none=True)
    transport = httpx.ASGITransport(app=app)
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.post(
            "/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}
        )
    error = assert_spec_error(response, 400, "invalid_value")
    assert "allow_file_uris" in error["message"]
