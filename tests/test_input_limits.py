"""Hostile input: size, count, nesting, header size, slow bodies, odd unicode and numbers.

Every case answers SPEC's error JSON with a 4xx, never a 500. Header size
and slow-loris bodies need a real server (uvicorn on 127.0.0.1, raw sockets).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest

from axione_asgi import AxioneConfig, create_app
from axione_asgi.stores import MemoryKeyStore
from tests.helpers import assert_spec_error, serve_in_thread
from tests.quota_app import Gateway, gateway

MSG = {"role": "user", "content": "hi"}


def config() -> AxioneConfig:
    return AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://", "counters": "memory://"},
            "max_body_bytes": 100_000,
            "request": {"max_messages": 50, "body_timeout_s": 0.5},
        }
    )


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with gateway(config()) as g:
        yield g


async def post(gw: Gateway, raw: bytes) -> object:
    headers = {**gw.auth, "content-type": "application/json"}
    return await gw.client.post("/chat/completions", content=raw, headers=headers)


def chat(**fields: object) -> bytes:
    return json.dumps({"model": "demo/echo", "messages": [MSG], **fields}).encode()


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


# -- size, count, nesting ------------------------------------------------------
@pytest.mark.anyio
async def test_body_over_the_limit_is_413(gw: Gateway) -> None:
    raw = chat(messages=[{"role": "user", "content": "x" * 200_000}])
    assert_spec_error(await post(gw, raw), 413, "request_too_large")


@pytest.mark.anyio
async def test_body_over_the_limit_without_content_length_is_413(gw: Gateway) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b" " * 10_000

    headers = {**gw.auth, "content-type": "application/json"}
    response = await gw.client.post("/chat/completions", content=trickle(), headers=headers)
    assert_spec_error(response, 413, "request_too_large")


@pytest.mark.anyio
async def test_more_messages_than_the_limit_is_400(gw: Gateway) -> None:
    error = assert_spec_error(await post(gw, chat(messages=[MSG] * 51)), 400)
    assert error["param"] == "messages"


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["extra", "content", "tool_parameters"])
async def test_ten_thousand_deep_arrays_are_400_not_500(gw: Gateway, where: str) -> None:
    deep = nested(10_000).decode()
    raw = {
        "extra": f'{{"model":"demo/echo","messages":[{{"role":"user","content":"x"}}],"x":{deep}}}',
        "content": f'{{"model":"demo/echo","messages":[{{"role":"user","content":{deep}}}]}}',
        "tool_parameters": '{"model":"demo/echo","messages":[{"role":"user","content":"x"}],'
        f'"tools":[{{"type":"function","function":{{"name":"f","parameters":{deep}}}}}]}}',
    }[where]
    assert_spec_error(await post(gw, raw.encode()), 400, "invalid_json")


@pytest.mark.anyio
async def test_ten_thousand_deep_objects_are_400_not_500(gw: Gateway) -> None:
    deep = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    raw = b'{"model":"demo/echo","messages":[{"role":"user","content":"x"}],"x":' + deep + b"}"
    assert_spec_error(await post(gw, raw), 400, "invalid_json")


@pytest.mark.anyio
async def test_moderate_nesting_in_unknown_fields_is_accepted(gw: Gateway) -> None:
    raw = b'{"model":"demo/echo","messages":[{"role":"user","content":"x"}],"x":' + nested(50)
    response = await post(gw, raw + b"}")
    assert response.status_code == 200  # type: ignore[attr-defined]


# -- unicode, empty strings, numbers, types --------------------------------------
HOSTILE: dict[str, bytes] = {
    "lone_surrogate_in_content": chat().replace(b'"hi"', b'"\\ud800"'),
    "lone_surrogate_in_model": chat().replace(b"demo/echo", b"demo/\\udfff"),
    "invalid_utf8": b'{"model":"demo/echo","messages":[{"role":"user","content":"\xff\xfe"}]}',
    "nul_in_model": chat(model="demo/\u0000echo"),
    "rtl_override_in_model": chat(model="demo/\u202eohce"),
    "empty_model": chat(model=""),
    "empty_messages": chat(messages=[]),
    "empty_role": chat(messages=[{"role": "", "content": "x"}]),
    "empty_body": b"",
    "empty_object": b"{}",
    "float_overflow_1e309": chat()[:-1] + b',"temperature":1e309}',
    "nan": chat()[:-1] + b',"temperature":NaN}',
    "ten_to_the_1000_as_float": chat()[:-1] + b',"max_tokens":1e1000}',
    "ten_to_the_5000": chat()[:-1] + b',"max_tokens":1' + b"0" * 5000 + b"}",
    "negative_max_tokens": chat(max_tokens=-1),
    "max_tokens_as_string": chat(max_tokens="ten"),
    "model_as_number": chat(model=5),
    "messages_as_string": chat(messages="hello"),
    "message_as_number": chat(messages=[5]),
    "content_as_object": chat(messages=[{"role": "user", "content": {"a": 1}}]),
    "unknown_role": chat(messages=[{"role": "wizard", "content": "x"}]),
    "models_as_string": chat(models="demo/lorem"),
    "array_body": b"[]",
    "null_body": b"null",
    "string_body": b'"hello"',
    "truncated_json": chat()[:-5],
    "temperature_as_word": chat(temperature="hot"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_body_is_a_4xx_spec_error(gw: Gateway, case: str) -> None:
    response = await post(gw, HOSTILE[case])
    status = response.status_code  # type: ignore[attr-defined]
    assert 400 <= status < 500, (status, response.text)  # type: ignore[attr-defined]
    assert_spec_error(response, status)


@pytest.mark.anyio
@pytest.mark.parametrize("text", ["a\u0000b", "\u202e\u05e9\u05dc\u05d5\u05dd", "", "😀" * 100])
async def test_odd_but_valid_unicode_content_is_answered(gw: Gateway, text: str) -> None:
    response = await post(gw, chat(messages=[{"role": "user", "content": text}]))
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_max_tokens_beyond_any_model_is_400(gw: Gateway) -> None:
    assert_spec_error(await post(gw, chat(max_tokens=10**1000)), 400, "invalid_value")


# -- a real server: header size and slow bodies ----------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, str]]:
    store = MemoryKeyStore()
    _, secret = anyio.run(store.create, "limits")
    app = create_app(config(), key_store=store)
    with serve_in_thread(app, lifespan="on") as url:
        yield int(url.rsplit(":", 1)[1]), secret


def raw_request(port: int, head: bytes, pieces: list[bytes], pause: float) -> tuple[bytes, float]:
    """Send `head`, then `pieces` `pause` apart from a thread; the answer and when it came."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        began = time.monotonic()

        def trickle() -> None:
            for piece in pieces:
                time.sleep(pause)
                try:
                    sock.sendall(piece)
                except OSError:
                    return  # the server answered and closed: what the test wants

        threading.Thread(target=trickle, daemon=True).start()
        answer = b""
        while not (b"\r\n\r\n" in answer and answer.endswith(b"}")):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer, time.monotonic() - began


def status_and_json(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.mark.parametrize("size", [70_000, 1_000_000])
def test_huge_request_headers_are_431_from_a_real_server(
    server: tuple[int, str], size: int
) -> None:
    port, secret = server
    response = httpx.get(
        f"http://127.0.0.1:{port}/models",
        headers={"authorization": f"Bearer {secret}", "x-big": "a" * size},
    )
    assert_spec_error(response, 431, "request_headers_too_large")


def test_ordinary_large_headers_pass(server: tuple[int, str]) -> None:
    port, secret = server
    response = httpx.get(
        f"http://127.0.0.1:{port}/models",
        headers={"authorization": f"Bearer {secret}", "x-big": "a" * 16_000},
    )
    assert response.status_code == 200


def test_slow_loris_body_is_cut_by_the_body_timeout_with_408(server: tuple[int, str]) -> None:
    port, secret = server
    head = (
        b"POST /chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + secret.encode() + b"\r\ncontent-length: 1000\r\n\r\n"
    )
    answer, after = raw_request(port, head, [b" "] * 100, pause=0.05)  # 5 s of body
    status, body = status_and_json(answer)
    assert status == 408
    assert body["error"]["code"] == "request_timeout"  # type: ignore[index]
    assert 0.4 < after < 1.5  # body_timeout_s is 0.5
