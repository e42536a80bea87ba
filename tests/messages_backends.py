"""The backends a Messages or Responses client reaches through Axione, over strict fakes.

`anthropic` is passed through (the fake speaks Messages itself); `openai`,
`gemini` and `demo` are translated through the hub. `gateway()` builds the
app in-process with one key; `sdk()` is the official anthropic SDK on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import httpx2

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp
from axione_asgi.config import ProviderConfig
from axione_asgi.providers.anthropic import AnthropicProvider
from axione_asgi.providers.base import Provider
from axione_asgi.providers.demo import DemoProvider
from axione_asgi.providers.gemini import GeminiProvider
from axione_asgi.providers.openai import OpenAIProvider
from axione_asgi.standalone import PrefixedGateway
from axione_asgi.stores import MemoryKeyStore
from tests.fakes.anthropic_fake import FAKE_API_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.gemini_fake import FAKE_KEY as GEMINI_KEY
from tests.fakes.gemini_fake import GeminiFake
from tests.fakes.openai_fake import FAKE_OPENAI_KEY, FakeOpenAI
from tests.fakes.openai_responses_fake import FAKE_RESPONSES_KEY, FakeOpenAIResponses

__all__ = ["BACKENDS", "Backend", "Gateway", "gateway", "new_backend"]

BACKENDS = ["anthropic", "openai", "gemini", "demo"]
TRANSLATED = ["openai", "gemini", "demo"]


@dataclass
class Backend:
    """One provider kind behind the gateway, and its fake."""

    kind: str
    fake: Any = None

    @property
    def provider_name(self) -> str:
        return self.kind

    @property
    def model(self) -> str:
        return {
            "anthropic": "anthropic/claude-sonnet-4-5",
            "openai": "openai/gpt-4o",
            "openai-native": "openai-native/gpt-5",
            "gemini": "gemini/gemini-flash",
            "demo": "demo/echo",
        }[self.kind]

    def provider(self) -> Provider:
        if self.kind == "demo":
            return DemoProvider("demo")
        transport = httpx.ASGITransport(app=self.fake)
        if self.kind == "anthropic":
            config = ProviderConfig(
                kind="anthropic",
                base_url="http://anthropic.test",
                models={"claude-sonnet-4-5": "claude-sonnet-4-5-20250929", "claude-*": "claude-*"},
            )
            return AnthropicProvider(
                "anthropic", config, api_key=ANTHROPIC_KEY, transport=transport
            )
        if self.kind == "openai-native":
            # OpenAI's own /responses: Responses requests pass through.
            config = ProviderConfig(
                kind="openai",
                base_url="http://openai.test/v1",
                models={"gpt-5": "gpt-5-2025-08-07"},
            )
            return OpenAIProvider(
                "openai-native", config, api_key=FAKE_RESPONSES_KEY, transport=transport
            )
        if self.kind == "openai":
            # The chat-only fake: Responses requests are translated to chat completions.
            config = ProviderConfig(
                kind="openai",
                base_url="http://openai.test/v1",
                models={"gpt-4o": "gpt-4o"},
                responses="translate",
            )
            return OpenAIProvider("openai", config, api_key=FAKE_OPENAI_KEY, transport=transport)
        config = ProviderConfig(
            kind="gemini",
            base_url="http://gemini.test",
            models={"gemini-flash": "gemini-2.5-flash"},
        )
        return GeminiProvider("gemini", config, api_key=GEMINI_KEY, transport=transport)


def new_backend(kind: str) -> Backend:
    fakes = {
        "anthropic": FakeAnthropic,
        "openai": FakeOpenAI,
        "openai-native": FakeOpenAIResponses,
        "gemini": GeminiFake,
    }
    return Backend(kind, fakes[kind]() if kind in fakes else None)


@dataclass
class Gateway:
    app: Any  # the gateway at `/v1`, as `axione serve` puts it at its prefix
    inner: AxioneApp
    key: str
    backend: Backend
    store: MemoryKeyStore
    extra: dict[str, Any] = field(default_factory=dict)

    def sdk(self, **options: Any) -> anthropic.AsyncAnthropic:
        """The official SDK, `base_url` the gateway's root (its `/v1` is the SDK's own)."""
        options.setdefault("api_key", self.key)
        return anthropic.AsyncAnthropic(
            base_url="http://axione.test",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.app)),
            **options,
        )

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://axione.test"
        )


def config(**overrides: Any) -> AxioneConfig:
    # No retries: each test sees exactly the fake's one answer.
    data: dict[str, Any] = {
        "storage": {"keys": "memory://", "ledger": "memory://"},
        "retry": {"max_retries": 0},
        **overrides,
    }
    return AxioneConfig.model_validate(data)


@contextlib.asynccontextmanager
async def gateway(
    backend: Backend, *, extra: dict[str, Provider] | None = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    """The app, mounted at its root as `/v1/...` so the SDK's paths land on it."""
    if backend.kind == "anthropic":
        # As a team fronting Claude Code would: bare Claude names go to Anthropic.
        overrides.setdefault("aliases", {"claude-*": "anthropic/claude-*"})
    store = MemoryKeyStore()
    _, key = await store.create("messages")
    inner: AxioneApp = create_app(
        config(**overrides),
        providers={backend.provider_name: backend.provider(), **(extra or {})},
        key_store=store,
    )
    app = PrefixedGateway(inner, "/v1")
    async with inner.lifespan():
        yield Gateway(app, inner, key, backend, store)
