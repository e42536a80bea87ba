"""Observability: access logs, Prometheus metrics, OpenTelemetry spans (heavy parts load on use)."""

from axione_asgi.observability.access_log import ACCESS_LOGGER, AccessLog, install_access_handler
from axione_asgi.observability.context import Observation, observation_of, upstream_call
from axione_asgi.observability.middleware import (
    Observability,
    ObservedQuotaMiddleware,
    RequestObserverMiddleware,
    build_observability,
)

__all__ = [
    "ACCESS_LOGGER",
    "AccessLog",
    "Observability",
    "Observation",
    "ObservedQuotaMiddleware",
    "RequestObserverMiddleware",
    "build_observability",
    "install_access_handler",
    "observation_of",
    "upstream_call",
]
