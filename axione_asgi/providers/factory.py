"""Builds the built-in providers a configuration names."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from axione_asgi.config import AxioneConfig, ProviderConfig
from axione_asgi.providers.base import Provider

__all__ = ["build_provider", "build_providers"]

# kind -> "module:Class"; imported on use so a kind's module loads only when configured.
_KINDS: dict[str, str] = {
    "openai": "axione_asgi.providers.openai:OpenAIProvider",
    "openai-compatible": "axione_asgi.providers.openai:OpenAIProvider",
    "mistral": "axione_asgi.providers.openai:MistralProvider",
    "anthropic": "axione_asgi.providers.anthropic:AnthropicProvider",
    "gemini": "axione_asgi.providers.gemini:GeminiProvider",
}


def build_provider(name: str, config: ProviderConfig, environ: Mapping[str, str]) -> Provider:
    """One built-in provider from its config table; reads its key from `environ`."""
    if config.kind == "demo":
        from axione_asgi.providers.demo import DemoProvider

        return DemoProvider(name)
    module_name, _, class_name = _KINDS[config.kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    provider: Provider = cls(name, config, api_key=config.resolved_api_key(environ))
    return provider


def build_providers(config: AxioneConfig, environ: Mapping[str, str]) -> dict[str, Provider]:
    """Every provider of the configuration, by name."""
    return {name: build_provider(name, cfg, environ) for name, cfg in config.providers.items()}
