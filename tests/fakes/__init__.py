"""Fakes of the upstreams: small ASGI apps that speak each provider's real wire format."""
