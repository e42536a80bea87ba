"""OpenTelemetry: a span per request and per upstream call; nothing at all without the package."""

from __future__ import annotations

import sys

import httpx
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.observability import build_observability
from axione_asgi.observability.tracing import load_tracing
from tests.fixed_provider import PROMPT_TOKENS, FixedProvider, chat_body

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
export = pytest.importorskip("opentelemetry.sdk.trace.export")

_EXPORTER = in_memory.InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    from opentelemetry import trace

    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(_EXPORTER))
    # The global provider can be set once per process; this module owns it.
    trace.set_tracer_provider(provider)


def _config(**extra: object) -> AxioneConfig:
    return AxioneConfig.from_mapping(
        {"storage": {"keys": "memory://", "ledger": "memory://"}, **extra}
    )


@pytest.mark.anyio
async def test_request_and_upstream_spans_carry_model_and_provider() -> None:
    _EXPORTER.clear()
    app = create_app(_config(), providers={"fixed": FixedProvider()})
    record, secret = await app.runtime.key_store.create("traced")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://axione"
    ) as client:
        response = await client.post(
            "/chat/completions", json=chat_body(), headers={"authorization": f"Bearer {secret}"}
        )
    assert response.status_code == 200
    spans = {s.name: s for s in _EXPORTER.get_finished_spans()}
    upstream, request = spans["chat fixed/m"], spans["POST"]
    assert upstream.parent is not None and upstream.parent.span_id == request.context.span_id
    assert upstream.attributes is not None and request.attributes is not None
    assert upstream.attributes["gen_ai.system"] == "fixed"
    assert upstream.attributes["gen_ai.request.model"] == "m"
    assert request.attributes["axione.model"] == "fixed/m"
    assert request.attributes["axione.key_id"] == record.id
    assert request.attributes["gen_ai.usage.input_tokens"] == PROMPT_TOKENS
    assert request.attributes["http.response.status_code"] == 200


@pytest.mark.anyio
async def test_failed_upstream_call_span_has_error_status_and_code() -> None:
    _EXPORTER.clear()
    app = create_app(_config(), providers={"fixed": FixedProvider()})
    _, secret = await app.runtime.key_store.create("traced")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://axione"
    ) as client:
        await client.post(
            "/chat/completions",
            json=chat_body("fixed/broken"),
            headers={"authorization": f"Bearer {secret}"},
        )
    span = next(s for s in _EXPORTER.get_finished_spans() if s.name == "chat fixed/broken")
    assert span.attributes is not None
    assert span.attributes["error.type"] == "upstream_auth_failed"
    assert span.status.status_code.name == "ERROR"


def test_without_opentelemetry_nothing_is_imported_or_wrapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    assert load_tracing(True) is None
    assert build_observability(_config(access_log={"enabled": False})) is None


def test_tracing_can_be_turned_off() -> None:
    assert load_tracing(False) is None
