"""Every example in examples/ runs: the mounts, the custom provider, the TOML, the local server."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from starlette.testclient import TestClient

from axione_asgi import AxioneConfig
from tests.helpers import AxioneServer, free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHAT = {"model": "demo/echo", "messages": [{"role": "user", "content": "hello"}]}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLES.parent,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", ["fastapi_mount", "starlette_mount"])
def test_mount_example_serves_the_host_route_and_the_gateway(name: str) -> None:
    module = _load(name)
    with TestClient(module.app) as client:
        _, secret = client.portal.call(module.api.runtime.key_store.create, "example")
        auth = {"authorization": f"Bearer {secret}"}
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ai/v1/models").status_code == 401
        models = client.get("/ai/v1/models", headers=auth).json()["data"]
        assert "demo/echo" in {m["id"] for m in models}
        answer = client.post("/ai/v1/chat/completions", headers=auth, json=CHAT)
        assert answer.json()["choices"][0]["message"]["content"] == "hello"
        assert client.get("/ai/v1/dashboard").status_code == 200


def test_custom_provider_example_answers_through_acme() -> None:
    assert _run("custom_provider").strip() == "HELLO THERE"


def test_openai_compatible_local_example_reaches_its_local_server() -> None:
    out = _run("openai_compatible_local")
    assert "models: local/llama3" in out
    assert "answer: local llama3.1:8b says: hi" in out
    assert "streamed events: 7" in out


def test_standalone_toml_loads() -> None:
    config = AxioneConfig.from_toml(EXAMPLES / "axione.toml")
    assert {"demo", "local", "openai"} <= set(config.providers)
    assert config.providers["local"].kind == "openai-compatible"


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[AxioneServer]:
    server = AxioneServer(
        ["--config", str(EXAMPLES / "axione.toml")], cwd=tmp_path, port=free_port()
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_standalone_toml_serves_under_its_prefix(standalone: AxioneServer) -> None:
    key = next(line for line in standalone.output().splitlines() if line.startswith("sk-ax-"))
    auth = {"authorization": f"Bearer {key}"}
    api = f"{standalone.base_url}/api/v1"
    ids = {m["id"] for m in httpx.get(f"{api}/models", headers=auth).json()["data"]}
    assert {"demo/echo", "local/llama3"} <= ids
    answer = httpx.post(f"{api}/chat/completions", headers=auth, json=CHAT)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "hello"
    # `axione serve` prints the access log (the file enables it) to its output.
    request_id = answer.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while f"request_id={request_id}" not in standalone.output():
        assert time.monotonic() < deadline, standalone.output()
        time.sleep(0.05)
    assert key not in standalone.output().split(key, 1)[1]  # the key: once, at first start
