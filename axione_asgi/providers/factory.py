"""Builds the built-in providers a configuration names."""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping

from axione_asgi.config import AxioneConfig, ProviderConfig
from axione_asgi.providers.base import Provider

__all__ = ["build_provider", "build_providers", "unavailable_providers"]

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


def unavailable_providers(config: AxioneConfig, served: Collection[str]) -> dict[str, str]:
    """Why each known provider the embedded default leaves out is unavailable, by name.

    With no configuration file, a known provider (SPEC 5) is served once its
    key is in the environment: its models are not unknown, only not enabled.
    """
    demo = next((n for n, c in config.providers.items() if c.kind == "demo" and n in served), None)
    offline = f" '{demo}/echo' works offline, without a key." if demo else ""
    return {
        name: f"Provider '{name}' is not configured: set {env} to enable it.{offline}"
        for name, env in config.keyless_providers.items()
        if name not in served
    }
