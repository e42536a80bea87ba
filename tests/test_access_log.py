"""Access logs: one line per request on `axione.access`, with ids, model, tokens and latencies."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.observability.access_log import FIELDS, AccessLog
from tests.fixed_provider import COMPLETION_TOKENS, PROMPT_TOKENS, FixedProvider, chat_body

pytestmark = pytest.mark.anyio


def _config(fmt: str = "kv") -> AxioneConfig:
    return AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://"},
            "access_log": {"format": fmt},
        }
    )


async def _client(fmt: str) -> tuple[httpx.AsyncClient, str, str]:
    app = create_app(_config(fmt), providers={"fixed": FixedProvider(delay_s=0.02)})
    record, secret = await app.runtime.key_store.create("logged")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://axione")
    client.headers["authorization"] = f"Bearer {secret}"
    return client, record.id, secret


@pytest.fixture
def access_lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="axione.access")
    return caplog


@pytest.fixture
async def kv() -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    client, key_id, secret = await _client("kv")
    async with client:
        yield client, key_id, secret


def _kv(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split(" "))


def _access(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.name == "axione.access"]


async def test_access_line_names_request_key_model_status_tokens_and_latencies(
    kv: tuple[httpx.AsyncClient, str, str], access_lines: pytest.LogCaptureFixture
) -> None:
    client, key_id, _ = kv
    response = await client.post("/chat/completions", json=chat_body())
    assert response.status_code == 200
    [line] = _access(access_lines.records)
    fields = _kv(line)
    assert list(fields) == list(FIELDS)
    assert fields["request_id"] == response.headers["x-request-id"]
    assert fields["key_id"] == key_id
    assert (fields["method"], fields["path"], fields["status"]) == (
        "POST",
        "/chat/completions",
        "200",
    )
    assert (fields["model"], fields["provider"]) == ("fixed/m", "fixed")
    assert fields["prompt_tokens"] == str(PROMPT_TOKENS)
    assert fields["completion_tokens"] == str(COMPLETION_TOKENS)
    assert float(fields["upstream_ms"]) >= 20.0
    assert float(fields["latency_ms"]) >= float(fields["upstream_ms"])
    assert fields["upstream_calls"] == "1"


async def test_access_line_never_holds_the_key(
    kv: tuple[httpx.AsyncClient, str, str], access_lines: pytest.LogCaptureFixture
) -> None:
    client, _, secret = kv
    await client.post("/chat/completions", json=chat_body(stream=True))
    await client.get("/usage")
    await client.get("/models", headers={"authorization": f"Bearer {secret}x"})  # a bad key
    lines = _access(access_lines.records)
    assert len(lines) == 3
    assert not any(secret in line or secret[:20] in line for line in lines)
    assert not any(secret in str(getattr(r, "axione", "")) for r in access_lines.records)


async def test_streamed_request_logs_its_tokens_once_the_stream_ends(
    kv: tuple[httpx.AsyncClient, str, str], access_lines: pytest.LogCaptureFixture
) -> None:
    client, _, _ = kv
    response = await client.post("/chat/completions", json=chat_body(stream=True))
    assert response.text.endswith("data: [DONE]\n\n")
    fields = _kv(_access(access_lines.records)[0])
    assert (fields["status"], fields["prompt_tokens"]) == ("200", str(PROMPT_TOKENS))


async def test_failed_request_logs_its_status_and_upstream_error(
    kv: tuple[httpx.AsyncClient, str, str], access_lines: pytest.LogCaptureFixture
) -> None:
    client, _, _ = kv
    response = await client.post("/chat/completions", json=chat_body("fixed/broken"))
    assert response.status_code == 502
    fields = _kv(_access(access_lines.records)[0])
    assert fields["status"] == "502"
    assert fields["upstream_error"] == "upstream_auth_failed"


async def test_json_format_writes_one_json_object_per_request(
    access_lines: pytest.LogCaptureFixture,
) -> None:
    client, key_id, _ = await _client("json")
    async with client:
        await client.post("/chat/completions", json=chat_body())
    [line] = _access(access_lines.records)
    data: dict[str, Any] = json.loads(line)
    assert list(data) == list(FIELDS)
    assert (data["key_id"], data["status"], data["completion_tokens"]) == (
        key_id,
        200,
        COMPLETION_TOKENS,
    )


def test_kv_line_quotes_a_value_a_client_could_forge_a_line_with() -> None:
    line = AccessLog("kv").line({"path": "/x\nrequest_id=forged status=200"})
    assert "\n" not in line
    assert 'path="/x\\nrequest_id=forged status=200"' in line
