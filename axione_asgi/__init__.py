"""Axione: an embeddable, OpenAI-compatible AI gateway for ASGI apps."""

from axione_asgi.admin.service import AdminService
from axione_asgi.app import AxioneApp, create_app
from axione_asgi.config import AxioneConfig, ConfigError, ProviderConfig
from axione_asgi.errors import (
    AuthenticationFailed,
    AxioneError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    ProviderUnavailable,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from axione_asgi.keys import KeyRecord, KeyStore
from axione_asgi.middleware.auth import KeyAuthMiddleware
from axione_asgi.middleware.errors import ErrorFormatMiddleware
from axione_asgi.middleware.quota import TierQuotaMiddleware
from axione_asgi.observability.context import upstream_call
from axione_asgi.providers.base import HTTPProvider, Provider

__all__ = [
    "AdminService",
    "AuthenticationFailed",
    "AxioneApp",
    "AxioneConfig",
    "AxioneError",
    "ConfigError",
    "ErrorFormatMiddleware",
    "HTTPProvider",
    "InvalidRequest",
    "KeyAuthMiddleware",
    "KeyRecord",
    "KeyStore",
    "ModelNotAllowed",
    "ModelNotFound",
    "NotFound",
    "PermissionDenied",
    "Provider",
    "ProviderConfig",
    "ProviderUnavailable",
    "RateLimited",
    "RequestTooLarge",
    "TierQuotaMiddleware",
    "UpstreamError",
    "UpstreamTimeout",
    "create_app",
    "upstream_call",
]

__version__ = "0.1.0"
