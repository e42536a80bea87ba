"""Upstream transports behind httpx's `AsyncBaseTransport` interface."""

from __future__ import annotations

import importlib.util

import httpx

__all__ = ["aiohttp_available", "build_transport"]


def aiohttp_available() -> bool:
    """Whether the optional aiohttp transport can be used here."""
    return importlib.util.find_spec("aiohttp") is not None


def build_transport(kind: str, *, max_connections: int) -> httpx.AsyncBaseTransport | None:
    """The transport a provider's `transport` setting names; None means httpx's own."""
    if kind == "aiohttp" or (kind == "auto" and aiohttp_available()):
        from axione_asgi.transports.aiohttp import AiohttpTransport

        return AiohttpTransport(max_connections=max_connections)
    return None
