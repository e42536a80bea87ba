"""Issue 17, the server itself (in-process parts): body timeouts, clients that leave, naive
clocks, the admin API's unknown paths and days, and streams cut by a shutdown.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.testclient import TestClient

from axione_asgi import AxioneConfig, create_app
from axione_asgi.errors import InvalidRequest
from axione_asgi.exchange.parsing import read_body
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
)
from tests.helpers import assert_spec_error, free_port, serve_in_thread
from tests.quota_app import gateway, quota_config


def _scope(path: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": list(headers),
        "server": ("t", 80),
        "client": ("127.0.0.1", 1234),
    }


# -- 1. a body that never starts is timed out too ----------------------------------------


@pytest.mark.anyio
async def test_a_body_whose_first_byte_never_comes_is_timed_out() -> None:
    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError

    request = Request(_scope("/chat/completions", [(b"content-length", b"100")]), receive)
    began = time.monotonic()
    with anyio.fail_after(3), pytest.raises(InvalidRequest) as caught:
        await read_body(request, 1000, 0.2)
    assert caught.value.status == 408 and caught.value.code == "request_timeout"
    assert time.monotonic() - began < 1


@pytest.mark.anyio
async def test_a_body_in_one_message_is_read_as_before() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"a": 1}', "more_body": False}

    assert await read_body(Request(_scope("/x"), receive), 1000, 0.2) == b'{"a": 1}'


# -- 3. a client leaving mid-body is a quiet 499 -----------------------------------------


@pytest.mark.anyio
async def test_a_client_leaving_mid_body_is_a_quiet_499(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with gateway(quota_config()) as gw:
        messages = iter(
            [
                {"type": "http.request", "body": b'{"model": "demo/echo", ', "more_body": True},
                {"type": "http.disconnect"},
            ]
        )

        async def receive() -> dict[str, Any]:
            return next(messages)

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        headers = [
            (b"authorization", f"Bearer {gw.secret}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"200"),
        ]
        with anyio.fail_after(5):
            await gw.app(_scope("/chat/completions", headers), receive, send)
        quota = gw.app.runtime.quota
        await quota.writer.stop()
        # Never admitted (its body never arrived): nothing is counted or written to the ledger.
        assert quota.ledger.records(key_id=gw.key_id) == []
        assert (await gw.usage())["used"] == {"requests": 0, "tokens": 0}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "unhandled error" not in caplog.text and "Traceback" not in caplog.text
    access = [
        line
        for line in (r.getMessage() for r in caplog.records if r.name == "axione.access")
        if "path=/chat/completions" in line
    ]
    assert len(access) == 1 and " status=499 " in access[0], access
    # Nothing meant for the client: no error body (a server drops a gone client's 499).
    assert all(m["status"] == 499 for m in sent if m["type"] == "http.response.start")
    assert b"".join(m.get("body", b"") for m in sent) == b""


# -- 4. a naive datetime from clock= is UTC -----------------------------------------------


@pytest.mark.anyio
async def test_a_naive_clock_is_taken_as_utc() -> None:
    naive = datetime(2030, 5, 17, 23, 0)  # 1 hour before the UTC day ends

    async with gateway(quota_config(), clock=lambda: naive) as gw:
        response = await gw.chat()
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-reset-requests"] == "1h"
        usage = await gw.usage()
        assert usage["day"] == "2030-05-17" and usage["used"]["requests"] == 1


# -- 5. the admin API's unknown paths, methods and days -----------------------------------

OPERATOR_KEY = "op-" + "fedcba9876543210" * 3
OPERATOR = {"authorization": f"Bearer {OPERATOR_KEY}"}


@pytest.fixture
def admin() -> Any:
    config = AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://"},
            "admin": {
                "enabled": True,
                "operator_key_sha256": hashlib.sha256(OPERATOR_KEY.encode()).hexdigest(),
            },
        }
    )
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        response = client.post("/admin/keys", headers=OPERATOR, json={"name": "k"})
        assert response.status_code == 201
        yield client


@pytest.mark.parametrize("path", ["/admin", "/admin/", "/admin/nope", "/admin/keys/a/b/c"])
def test_admin_unknown_path_is_404(admin: TestClient, path: str) -> None:
    assert_spec_error(admin.get(path, headers=OPERATOR), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/admin/keys"), ("PUT", "/admin/keys"), ("POST", "/admin/usage")],
)
def test_admin_unknown_method_is_405(admin: TestClient, method: str, path: str) -> None:
    response = admin.request(method, path, headers=OPERATOR)
    assert_spec_error(response, 405, "method_not_allowed")
    assert response.headers["allow"]


@pytest.mark.parametrize("path", ["/admin/usage", "/admin/usage/models"])
@pytest.mark.parametrize("day", ["9999-12-31", "2030-02-30", "today"])
def test_admin_day_out_of_range_is_400(admin: TestClient, path: str, day: str) -> None:
    assert_spec_error(admin.get(f"{path}?day={day}", headers=OPERATOR), 400, "invalid_value")


def test_admin_day_in_range_still_answers(admin: TestClient) -> None:
    for day in ("2030-05-17", "0001-01-01", "9999-12-30"):
        response = admin.get(f"/admin/usage?day={day}", headers=OPERATOR)
        assert response.status_code == 200, response.text
        assert response.json()["data"][0]["day"] == day


# -- 6. a stream cut by shutdown ends on its error event ----------------------------------


class EndlessProvider:
    """`endless/m` streams one piece, then waits forever (a long answer in progress)."""

    def models(self) -> Sequence[str]:
        return ["m"]

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        raise NotImplementedError

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        yield ChatCompletionChunk(
            id="e", choices=[ChunkChoice(delta=Delta(role="assistant", content="once"))]
        )
        await anyio.sleep(3600)
        yield ChatCompletionChunk(id="e", choices=[ChunkChoice(delta=Delta(content="never"))])


def _stream_until_shutdown(app: Any, path: str, body: dict[str, Any], shut_at: str) -> list[str]:
    """The lines of a stream from `app` under uvicorn, shut down once `shut_at` arrived."""
    _, secret = anyio.run(app.runtime.key_store.create, "cut")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="critical",
            access_log=False,
            timeout_graceful_shutdown=0.3,  # type: ignore[arg-type]
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    lines: list[str] = []
    try:
        with (
            httpx.stream(
                "POST",
                f"http://127.0.0.1:{port}{path}",
                json={"stream": True, **body},
                headers={"authorization": f"Bearer {secret}"},
                timeout=10,
            ) as response,
            contextlib.suppress(httpx.RemoteProtocolError),  # the close after the last event
        ):
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                lines.append(line)
                if shut_at in line:
                    server.should_exit = True  # the stream is under way: shut down
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return [line for line in lines if line]


DIALECTS = {
    "chat": ("/chat/completions", {"messages": [{"role": "user", "content": "go"}]}),
    "messages": (
        "/messages",
        {"max_tokens": 100, "messages": [{"role": "user", "content": "go"}]},
    ),
    "responses": ("/responses", {"input": "go", "store": False}),
}


def _error_event(dialect: str, lines: list[str]) -> dict[str, Any]:
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    if dialect == "chat":
        return dict(data[-1]["error"])
    if dialect == "messages":
        assert lines[-2:][0] == "event: error", lines
        return dict(data[-1]["error"])
    assert data[-1]["type"] == "response.failed", data[-1]
    (error,) = [d for d in data if d["type"] == "error"]
    return dict(error)


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_a_stream_cut_by_shutdown_ends_on_its_error_event(dialect: str) -> None:
    config = AxioneConfig.from_mapping({"storage": {"keys": "memory://", "ledger": "memory://"}})
    app = create_app(config, providers={"endless": EndlessProvider()})
    path, body = DIALECTS[dialect]
    lines = _stream_until_shutdown(app, path, {"model": "endless/m", **body}, "once")
    # The stream's last event is the dialect's error, not whatever came before the cut.
    error = _error_event(dialect, lines)
    assert error.get("code") in ("server_shutting_down", None), error
    assert "shutting down" in error["message"], error


class StallingSSE:
    """An upstream (ASGI) that sends a stream's first event, then nothing until its caller goes."""

    FIRST = {
        "/v1/messages": b'event: message_start\ndata: {"type":"message_start","message":'
        b'{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],'
        b'"usage":{"input_tokens":3,"output_tokens":0}}}\n\n',
        "/v1/responses": b'event: response.created\ndata: {"type":"response.created",'
        b'"response":{"id":"resp_1","object":"response","status":"in_progress","model":"m"}}\n\n',
    }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        start = {"type": "http.response.start", "status": 200}
        headers = [(b"content-type", b"text/event-stream")]
        await send({**start, "headers": headers})
        first = self.FIRST[scope["path"]]
        await send({"type": "http.response.body", "body": first, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass


PASS_THROUGH = {
    "messages": (
        "/messages",
        "anth/m",
        "message_start",
        {"max_tokens": 9, "messages": [{"role": "user", "content": "go"}]},
    ),
    "responses": ("/responses", "oai/m", "response.created", {"input": "go", "store": False}),
}


@pytest.mark.parametrize("dialect", list(PASS_THROUGH))
def test_a_pass_through_stream_cut_by_shutdown_ends_on_its_error_event(dialect: str) -> None:
    path, model, first, body = PASS_THROUGH[dialect]
    with serve_in_thread(StallingSSE()) as upstream:
        config = AxioneConfig.from_mapping(
            {
                "storage": {"keys": "memory://", "ledger": "memory://"},
                "providers": {
                    "anth": {"kind": "anthropic", "base_url": upstream, "api_key": "k"},
                    "oai": {"kind": "openai", "base_url": f"{upstream}/v1", "api_key": "k"},
                },
            }
        )
        config.providers["anth"].models["m"] = config.providers["oai"].models["m"] = "m"
        lines = _stream_until_shutdown(create_app(config), path, {"model": model, **body}, first)
    assert lines[-2] == "event: error", lines
    error = json.loads(lines[-1].removeprefix("data: "))
    if dialect == "messages":
        assert error["type"] == "error" and error["error"]["type"] == "overloaded_error", error
        assert "shutting down" in error["error"]["message"]
    else:
        assert error["code"] == "server_shutting_down", error
