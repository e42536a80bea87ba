"""Provider backends: each translates the OpenAI types to its upstream at its edge."""

from axione_asgi.providers.base import Provider

__all__ = ["Provider"]
