"""AxioneConfig and its parts: TOML loading, validation, the embedded default."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "DEFAULT_TIERS",
    "AccessLogConfig",
    "AdminConfig",
    "AxioneConfig",
    "CacheConfig",
    "ConfigError",
    "CorsConfig",
    "DashboardConfig",
    "MetricsConfig",
    "ProviderConfig",
    "RequestLimits",
    "ResponsesConfig",
    "RetryConfig",
    "ServerConfig",
    "StaticKey",
    "StorageConfig",
    "TierLimits",
    "TierPolicy",
    "TracingConfig",
]

ProviderKind = Literal["openai", "anthropic", "gemini", "mistral", "openai-compatible", "demo"]

_DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "mistral": "https://api.mistral.ai/v1",
}

# Providers the embedded default enables when their key is in the environment.
_KNOWN_PROVIDERS: dict[str, dict[str, Any]] = {
    "openai": {
        "kind": "openai",
        "api_key_env": "OPENAI_API_KEY",
        "models": {
            "gpt-4o": "gpt-4o",
            "gpt-4o-mini": "gpt-4o-mini",
            "gpt-4.1": "gpt-4.1",
            "gpt-4.1-mini": "gpt-4.1-mini",
            "gpt-3.5-turbo": "gpt-3.5-turbo",
        },
        "embedding_models": {
            "text-embedding-3-small": "text-embedding-3-small",
            "text-embedding-3-large": "text-embedding-3-large",
        },
    },
    "anthropic": {
        "kind": "anthropic",
        "api_key_env": "ANTHROPIC_API_KEY",
        "models": {
            "claude-3.5-sonnet": "claude-3-5-sonnet-latest",
            "claude-3.5-haiku": "claude-3-5-haiku-latest",
        },
    },
    "google": {
        "kind": "gemini",
        "api_key_env": "GEMINI_API_KEY",
        "models": {
            "gemini-2.5-flash-lite": "gemini-2.5-flash-lite",
            "gemini-2.5-flash": "gemini-2.5-flash",
        },
        "embedding_models": {"gemini-embedding-001": "gemini-embedding-001"},
    },
    "mistral": {
        "kind": "mistral",
        "api_key_env": "MISTRAL_API_KEY",
        "models": {
            "mistral-large": "mistral-large-latest",
            "mistral-small": "mistral-small-latest",
        },
        "embedding_models": {"mistral-embed": "mistral-embed"},
    },
}


class ConfigError(Exception):
    """Bad configuration: one line naming the file, the key and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderConfig(_Strict):
    """One `[providers.NAME]` table; NAME is the `provider` part of model ids."""

    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None
    # An inline key is accepted for local servers and tests; prefer api_key_env.
    api_key: str | None = Field(default=None, repr=False)
    timeout_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    models: dict[str, str] = Field(default_factory=dict)
    # Embedding models, public name -> upstream id, served at /embeddings.
    embedding_models: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    # Anthropic requires max_tokens; this is sent when the client gives none.
    default_max_tokens: int = Field(default=4096, ge=1)
    max_connections: int = Field(default=256, ge=1)
    # The HTTP client to the upstream: "auto" (aiohttp, or httpx when a proxy
    # is set in the environment, HTTPS_PROXY and the like, since only httpx
    # honours one), "aiohttp", "httpx", or "httptools" (opt-in: a lean
    # HTTP/1.1 pool on the parser uvicorn uses; the least CPU per request,
    # but no proxies, redirects or compression).
    transport: Literal["auto", "aiohttp", "httpx", "httptools"] = "auto"
    # An https upstream's trusted CA certificates: a PEM file (or a folder
    # `openssl rehash` prepared), trusted instead of the system store, for an
    # upstream with a private CA. Unset: the system store, or the bundle and
    # folder that SSL_CERT_FILE and SSL_CERT_DIR name, with certifi's bundle.
    ca_file: str | None = None
    # A stream whose first event takes longer than this is retried or falls back.
    first_byte_timeout_s: float | None = Field(default=None, gt=0)
    # A stream that sends no event for this long (keep-alive comments do not
    # count) is cut with an error event; and none lasts longer than
    # `stream_timeout_s` in all.
    stream_idle_timeout_s: float = Field(default=120.0, gt=0)
    stream_timeout_s: float = Field(default=1800.0, gt=0)
    # The largest whole answer read from the upstream, and the largest one event
    # of a stream: past them, a 502 "answer too large" (0 for no bound).
    max_response_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    max_event_bytes: int = Field(default=1024 * 1024, ge=0)
    # Kind `anthropic`, on pass-through: the `anthropic-beta` values forwarded
    # (None: every one the client sends).
    allowed_betas: list[str] | None = None
    # Kinds `openai`/`openai-compatible`: whether the upstream serves `/responses`
    # itself ("native", passed through) or Responses requests are translated to
    # chat completions ("translate"). Unset: native for `openai`, else translate.
    responses: Literal["native", "translate"] | None = None
    # Kind `gemini`: whether image URLs that Gemini reads with the gateway's own
    # credentials (`gs://` objects, Files-API `.../files/...` URLs) may be sent;
    # off, they are a 400, so a client cannot read the operator's files.
    allow_file_uris: bool = False

    @property
    def responses_native(self) -> bool:
        """Whether Responses requests pass through to this upstream's `/responses`."""
        if self.responses is not None:
            return self.responses == "native"
        return self.kind == "openai"

    @field_validator("transport")
    @classmethod
    def _transport_installed(cls, value: str) -> str:
        if value == "aiohttp" and importlib.util.find_spec("aiohttp") is None:
            # A dependency of axione-asgi: missing only from an install without it (--no-deps).
            raise ValueError("'aiohttp' needs the aiohttp package: pip install aiohttp")
        if value == "httptools" and importlib.util.find_spec("httptools") is None:
            raise ValueError("'httptools' needs the httptools package: pip install httptools")
        return value

    def resolved_base_url(self) -> str:
        """The configured base URL, or the provider's public one."""
        if self.base_url:
            return self.base_url.rstrip("/")
        if self.kind in _DEFAULT_BASE_URLS:
            return _DEFAULT_BASE_URLS[self.kind]
        return ""

    def resolved_api_key(self, environ: Mapping[str, str]) -> str | None:
        """The upstream key: inline, or read from `api_key_env` at start-up."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return environ.get(self.api_key_env) or None
        return None


class StorageConfig(_Strict):
    """Where keys, the usage ledger and the daily counters live."""

    keys: str = "sqlite:///axione.db"
    ledger: str = "sqlite:///axione.db"
    counters: str = "memory://"
    # Stored Responses-API answers (`store: true`); the ledger's database when unset.
    responses: str | None = None
    # At shutdown, how long the ledger may take to write what it holds; what is
    # left then goes to the side file `<ledger file>.spill.jsonl` (written back
    # at the next start). Keep it inside the process manager's grace period.
    ledger_flush_timeout_s: float = Field(default=10.0, gt=0)
    # Redis (counters on `redis://`, and the response cache with them): one
    # connection pool per process, shared by every Redis user. At most
    # `redis_max_connections` connections; a request that finds none free
    # waits up to `redis_pool_timeout_s` for one. `redis_socket_timeout_s`
    # bounds connecting and each command. Past either, the store counts as down.
    redis_max_connections: int = Field(default=64, ge=1)
    redis_pool_timeout_s: float = Field(default=2.0, gt=0)
    redis_socket_timeout_s: float = Field(default=2.0, gt=0)
    # When the counters store cannot answer: "closed" refuses requests with 503
    # `quota_unavailable` and `Retry-After`; "open" lets them through uncounted
    # (counted at settlement if the store is back by then; the ledger has them
    # all). Either way counted in the metrics and logged once per outage.
    on_counter_failure: Literal["closed", "open"] = "closed"

    @field_validator("keys", "ledger", "responses")
    @classmethod
    def _known_scheme(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Any scheme of the store registry (memory, sqlite, postgresql, one's own).
        if value is None:
            return None
        from axione_asgi.stores.registry import check_uri

        return check_uri(str(info.field_name), value)


class ResponsesConfig(_Strict):
    """The Responses dialect: how long stored responses are kept."""

    # OpenAI keeps stored responses 30 days.
    retention_s: float = Field(default=30 * 86400, gt=0)


class TierLimits(_Strict):
    """A tier's daily limits."""

    requests_per_day: int = Field(ge=1)
    tokens_per_day: int = Field(ge=1)


DEFAULT_TIERS: dict[int, TierLimits] = {
    1: TierLimits(requests_per_day=1_000, tokens_per_day=250_000),
    2: TierLimits(requests_per_day=4_000, tokens_per_day=1_000_000),
    3: TierLimits(requests_per_day=40_000, tokens_per_day=10_000_000),
    4: TierLimits(requests_per_day=80_000, tokens_per_day=20_000_000),
    5: TierLimits(requests_per_day=120_000, tokens_per_day=30_000_000),
}


class TierPolicy(_Strict):
    """When keys are promoted at day rollover."""

    auto_upgrade: bool = True
    threshold: float = Field(default=0.8, gt=0, le=1)
    max_auto_tier: int = Field(default=4, ge=1)


class StaticKey(_Strict):
    """A key declared in the config file; the file is its source of truth."""

    name: str
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    tier: int = Field(default=1, ge=1)
    models: list[str] | None = None


class RetryConfig(_Strict):
    """Retries of retryable upstream failures (429, 5xx, timeouts, refused connections)."""

    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=0.25, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)
    # Everything a request does upstream, retries and fallbacks included.
    deadline_s: float = Field(default=120.0, gt=0)
    # Upstream calls one request may make, retries and fallbacks together.
    max_attempts: int = Field(default=6, ge=1, le=64)


class RequestLimits(_Strict):
    """Bounds on what a client may send."""

    max_messages: int = Field(default=4096, ge=1)
    # A body that trickles in slower than this is cut (slow-loris).
    body_timeout_s: float = Field(default=30.0, gt=0)


class ServerConfig(_Strict):
    """What `axione serve` lets one client hold, per worker process (unused when mounted)."""

    # Open connections; one more is answered 503 and closed at once. Each holds
    # a file descriptor: keep it well below `ulimit -n`, which upstream
    # connections and the databases share.
    max_connections: int = Field(default=1000, ge=1)
    # A request's head (request line and headers) must be complete this long
    # after the connection opens (its first request) or after its first byte
    # (the next ones), else 408 and closed: idle and slow-header connections
    # hold nothing for long.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # A head still incomplete past this many bytes is answered 431 and closed
    # before more of it is buffered. (Header names and values past 64 KiB are
    # refused with 431 by ErrorFormatMiddleware either way.)
    max_header_bytes: int = Field(default=80 * 1024, ge=1024)
    # How long a kept-alive connection may wait idle for its next request.
    keep_alive_s: int = Field(default=5, ge=1)
    # Connections the kernel queues before the server accepts them.
    backlog: int = Field(default=2048, ge=1)
    # On SIGTERM, how long in-flight requests and streams get to finish (30 s:
    # Envoy's drain time and Kubernetes' default grace period); streams still
    # running are then cut with an error event, and the ledger is flushed.
    graceful_shutdown_s: int = Field(default=30, ge=0)
    # On SIGTERM, first drain for this long: `/readyz` answers 503 so a load
    # balancer takes the server out, while requests (new ones too) are still
    # served; then the graceful shutdown above. 0: no drain. Behind a load
    # balancer set it above the health check's interval times its fall count.
    drain_s: float = Field(default=0.0, ge=0, le=600)


class CacheConfig(_Strict):
    """The opt-in cache of non-streamed chat answers."""

    enabled: bool = False
    # "deterministic": only requests with temperature 0 (or the request header
    # `x-axione-cache: use`); "always": every non-streamed request.
    mode: Literal["deterministic", "always"] = "deterministic"
    ttl_s: float = Field(default=300.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    max_entry_bytes: int = Field(default=1_000_000, ge=1)
    # Keys never share entries unless the operator says so here.
    shared_across_keys: bool = False


def _route_path(value: str) -> str:
    # "metrics", "/metrics/" -> "/metrics"; the root is refused (it would hide the API).
    value = "/" + value.strip("/")
    if value == "/":
        raise ValueError("must name a path below the app's root, such as '/metrics'")
    return value


class AccessLogConfig(_Strict):
    """One line per request on the `axione.access` logger (standard `logging`)."""

    enabled: bool = True
    # "kv": key=value pairs; "json": one JSON object per line.
    format: Literal["kv", "json"] = "kv"


class MetricsConfig(_Strict):
    """Prometheus metrics (needs `axione-asgi[metrics]`); off by default, and then free."""

    enabled: bool = False
    # Relative to the app's mount point and served without a key: expose it to
    # the scraper only (a reverse proxy rule, or a private listener).
    path: str = "/metrics"

    @field_validator("path")
    @classmethod
    def _path_shape(cls, value: str) -> str:
        return _route_path(value)


class TracingConfig(_Strict):
    """OpenTelemetry spans, when `opentelemetry-api` is installed (`axione-asgi[otel]`)."""

    # A span per request and per upstream call; nothing is imported when the
    # package is missing or this is false.
    enabled: bool = True


class AdminConfig(_Strict):
    """The operator API (keys and usage) under `prefix`; off by default."""

    enabled: bool = False
    # Relative to the app's mount point.
    prefix: str = "/admin"
    # Hex SHA-256 of the operator key, sent as `Authorization: Bearer <key>`;
    # required when the admin API is enabled. Gateway keys get 403 there.
    operator_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        return _route_path(value)

    @model_validator(mode="after")
    def _needs_operator_key(self) -> AdminConfig:
        if self.enabled and not self.operator_key_sha256:
            raise ValueError("operator_key_sha256 is required when the admin API is enabled")
        return self


class DashboardConfig(_Strict):
    """The usage page at `/dashboard` (public; it asks for the key in the browser)."""

    enabled: bool = True


class CorsConfig(_Strict):
    """Cross-origin requests from browsers (JavaScript `fetch` on another origin).

    Off while `allow_origins` is empty; `["*"]` allows every origin (keys are
    sent in a header, never as cookies, so no credentials are allowed).
    """

    allow_origins: list[str] = Field(default_factory=list)
    max_age_s: int = Field(default=600, ge=0)


class AxioneConfig(_Strict):
    """The whole configuration; defaults serve the embedded case."""

    prefix: str = "/api/v1"
    max_body_bytes: int = Field(default=4_000_000, ge=1)
    key_cache_ttl_s: float = Field(default=5.0, ge=0)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    providers: dict[str, ProviderConfig] = Field(
        default_factory=lambda: {"demo": ProviderConfig(kind="demo")}
    )
    tiers: dict[int, TierLimits] = Field(default_factory=dict)
    tier_policy: TierPolicy = Field(default_factory=TierPolicy)
    keys: list[StaticKey] = Field(default_factory=list)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    request: RequestLimits = Field(default_factory=RequestLimits)
    # Per public model id, the models to try in order when it fails.
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    # Other names for models (SPEC 9): exact, or with one `*` that the target repeats.
    aliases: dict[str, str] = Field(default_factory=dict)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    access_log: AccessLogConfig = Field(default_factory=AccessLogConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    # Known providers the embedded default left out, their key not being set.
    _keyless: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def keyless_providers(self) -> Mapping[str, str]:
        """Known providers the embedded default leaves out for want of a key: name -> variable."""
        return self._keyless

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value

    @field_validator("providers")
    @classmethod
    def _provider_names(cls, value: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        for name in value:
            if not name or "/" in name:
                raise ValueError(f"provider name {name!r} must be non-empty and hold no '/'")
        return value

    @field_validator("aliases")
    @classmethod
    def _alias_shapes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if name.count("*") > 1 or target.count("*") > name.count("*"):
                raise ValueError(
                    f"alias {name!r}: a pattern holds one '*', and its target at most that one"
                )
            if "/" not in target:
                raise ValueError(f"alias {name!r}: the target must be 'provider/model'")
        return value

    def tier_table(self) -> dict[int, TierLimits]:
        """The default tier table with this file's overrides applied."""
        return {**DEFAULT_TIERS, **self.tiers}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "<config>") -> AxioneConfig:
        """Validate a parsed mapping; errors become one `ConfigError` line."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise ConfigError(f"{source}: {where}: {first['msg']}{more}") from None

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> AxioneConfig:
        """Load and validate a TOML file (SPEC section 6)."""
        source = os.fspath(path)
        try:
            data = tomllib.loads(Path(source).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        return cls.from_mapping(data, source=source)

    @classmethod
    def embedded_default(cls, environ: Mapping[str, str] | None = None) -> AxioneConfig:
        """The configuration `axione serve` uses with no file.

        SQLite in the working folder, memory counters, the demo provider, and
        every known provider whose API key is in the environment.
        """
        env = os.environ if environ is None else environ
        providers: dict[str, Any] = {"demo": {"kind": "demo"}}
        for name, table in _KNOWN_PROVIDERS.items():
            if env.get(table["api_key_env"]):
                providers[name] = table
        config = cls.from_mapping({"providers": providers}, source="<embedded default>")
        config._keyless = {
            name: table["api_key_env"]
            for name, table in _KNOWN_PROVIDERS.items()
            if name not in providers
        }
        return config
