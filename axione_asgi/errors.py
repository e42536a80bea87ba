"""The error types of the contract (SPEC section 2) and their JSON bodies."""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Protocol

__all__ = [
    "OPENAI_ENVELOPE",
    "AuthenticationFailed",
    "AxioneError",
    "ErrorEnvelope",
    "InvalidRequest",
    "ModelNotAllowed",
    "ModelNotFound",
    "NotFound",
    "PermissionDenied",
    "ProviderUnavailable",
    "QuotaUnavailable",
    "RateLimited",
    "RequestTooLarge",
    "UpstreamError",
    "UpstreamTimeout",
    "error_body",
    "scrub_secrets",
    "status_error",
]


class AxioneError(Exception):
    """Base of every error the gateway reports to a client.

    One place (`ErrorFormatMiddleware`, or the stream writer mid-stream) turns
    these into SPEC's `{"error": {...}}` JSON; code raises the type.
    """

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.headers = headers or {}
        if status is not None:
            self.status = status  # type: ignore[misc]
        # On pass-through, the upstream's own error answer in the client's
        # dialect: (status, body); that dialect's client gets it as it was.
        self.native: tuple[str, int, bytes] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The `{"error": {...}}` object of SPEC section 2."""
        return {
            "error": {
                "type": self.type,
                "message": self.message,
                "code": self.code,
                "param": self.param,
            }
        }

    def body(self) -> bytes:
        """The error's JSON body, encoded."""
        return json.dumps(self.to_dict(), ensure_ascii=False).encode()


class InvalidRequest(AxioneError):
    """400: a malformed body or field."""

    status = 400
    type = "invalid_request_error"
    default_code = "invalid_value"


class AuthenticationFailed(AxioneError):
    """401: no key, or an unknown or revoked key."""

    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(AxioneError):
    """403: the key may not do this."""

    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    """403: the key may not use this model."""

    default_code = "model_not_allowed"

    def __init__(self, model: str) -> None:
        super().__init__(f"This API key may not use model '{model}'", param="model")


class NotFound(AxioneError):
    """404: an unknown path or object."""

    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    """404: an unknown `provider/model` id."""

    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"Model '{model}' not found", param="model")


class RequestTooLarge(AxioneError):
    """413: the body is over the configured limit."""

    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(AxioneError):
    """429: a limit is reached; `headers` carries `Retry-After`."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamError(AxioneError):
    """502: the provider failed or answered garbage."""

    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class ProviderUnavailable(AxioneError):
    """503: the provider is not configured or cannot be reached."""

    status = 503
    type = "upstream_error"
    default_code = "provider_unavailable"


class QuotaUnavailable(AxioneError):
    """503: the quota counters cannot be reached, so nothing is admitted; `Retry-After` set."""

    status = 503
    type = "api_error"
    default_code = "quota_unavailable"


class UpstreamTimeout(AxioneError):
    """504: the provider was too slow."""

    status = 504
    type = "upstream_error"
    default_code = "upstream_timeout"


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    """SPEC error JSON for a bare status, for errors that arrive as responses."""
    etype = _STATUS_TYPES.get(
        status, "upstream_error" if status in (502, 503, 504) else "api_error"
    )
    return json.dumps(
        {"error": {"type": etype, "message": message, "code": code, "param": param}},
        ensure_ascii=False,
    ).encode()


def status_error(status: int, message: str, code: str) -> AxioneError:
    """The error type of SPEC section 2 for a bare status (a 404 or 405 from a router)."""
    kinds: dict[int, type[AxioneError]] = {
        401: AuthenticationFailed,
        403: PermissionDenied,
        404: NotFound,
        413: RequestTooLarge,
        429: RateLimited,
        502: UpstreamError,
        503: ProviderUnavailable,
        504: UpstreamTimeout,
    }
    kind = kinds.get(status, InvalidRequest if 400 <= status < 500 else AxioneError)
    return kind(message, code=code, status=status)


class ErrorEnvelope(Protocol):
    """How one client dialect writes an error: the body of a whole error answer.

    An error that carries an upstream's own answer in this `dialect`
    (`AxioneError.native`, on pass-through) is sent as that answer instead.
    """

    dialect: str

    def render(self, exc: AxioneError) -> bytes:
        """The JSON body for `exc` (its status and headers are sent as they are)."""
        ...


class _OpenAIEnvelope:
    """SPEC section 2: `{"error": {"type", "message", "code", "param"}}`."""

    dialect = "openai-chat"

    def render(self, exc: AxioneError) -> bytes:
        return exc.body()


OPENAI_ENVELOPE: ErrorEnvelope = _OpenAIEnvelope()


# Shapes of credentials the known providers issue, so a message copied from an
# upstream never carries one to a client or a log line.
_SECRET_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,}"
    r"|(?i:api[_-]?key)[\"'=:\s]+[A-Za-z0-9._\-]{8,})"
)


def scrub_secrets(text: str, *secrets: str) -> str:
    """Remove anything that looks like a key, and the given literal secrets."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _SECRET_PATTERNS.sub("[redacted]", text)
