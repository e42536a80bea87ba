"""Axione in front of a local OpenAI-compatible server (Ollama, vLLM, LM Studio, llama.cpp).

The gateway's `openai-compatible` kind speaks OpenAI's wire format to any
`base_url`. Here a tiny fake stands in for the local server, so the example
runs anywhere; point `base_url` at `http://127.0.0.1:11434/v1` (Ollama) or
`http://127.0.0.1:8000/v1` (vLLM) to use a real one.

Run: python examples/openai_compatible_local.py
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from axione_asgi import AxioneConfig, create_app
from axione_asgi.app import AxioneApp


# -- the stand-in for a local model server --------------------------------------------
async def local_chat(request: Request) -> JSONResponse | StreamingResponse:
    """`POST /v1/chat/completions` as Ollama's OpenAI-compatible endpoint answers it."""
    body: dict[str, Any] = await request.json()
    text = f"local {body['model']} says: {body['messages'][-1]['content']}"
    usage = {"prompt_tokens": 5, "completion_tokens": len(text.split()), "total_tokens": 0}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if body.get("stream"):

        def chunk(choice: dict[str, Any], **extra: Any) -> str:
            data = {"id": "local", "object": "chat.completion.chunk", "created": 0}
            data.update(model=body["model"], choices=[choice], **extra)
            return f"data: {json.dumps(data)}\n\n"

        async def events() -> Any:
            for word in text.split(" "):
                yield chunk({"index": 0, "delta": {"content": word + " "}})
            yield chunk({"index": 0, "delta": {}, "finish_reason": "stop"}, usage=usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse(
        {
            "id": "local-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    )


local_server = Starlette(routes=[Route("/v1/chat/completions", local_chat, methods=["POST"])])


# -- the gateway ---------------------------------------------------------------------------
def build_gateway(base_url: str) -> AxioneApp:
    """The gateway with `local/llama3` served by the OpenAI-compatible server at `base_url`."""
    config = AxioneConfig.from_mapping(
        {
            "storage": {"keys": "memory://", "ledger": "memory://"},
            "providers": {
                "local": {
                    "kind": "openai-compatible",
                    "base_url": base_url,  # e.g. http://127.0.0.1:11434/v1 for Ollama
                    "models": {"llama3": "llama3.1:8b"},  # public name -> the server's name
                    "timeout_s": 120,  # local models can be slow to answer
                }
            },
        }
    )
    return create_app(config)


def _serve_local_server() -> tuple[str, uvicorn.Server]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(local_server, host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}/v1", server


async def main() -> None:
    base_url, server = _serve_local_server()
    gateway = build_gateway(base_url)
    _record, key = await gateway.runtime.key_store.create("example")
    try:
        async with (
            gateway.lifespan(),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gateway),
                base_url="http://axione",
                headers={"Authorization": f"Bearer {key}"},
            ) as client,
        ):
            models = await client.get("/models")
            print("models:", ", ".join(m["id"] for m in models.json()["data"]))
            answer = await client.post(
                "/chat/completions",
                json={"model": "local/llama3", "messages": [{"role": "user", "content": "hi"}]},
            )
            print("answer:", answer.json()["choices"][0]["message"]["content"])
            print("usage:", answer.json()["usage"])
            streamed = await client.post(
                "/chat/completions",
                json={
                    "model": "local/llama3",
                    "messages": [{"role": "user", "content": "stream it"}],
                    "stream": True,
                },
            )
            print("streamed events:", streamed.text.count("data: "))
    finally:
        server.should_exit = True


if __name__ == "__main__":
    asyncio.run(main())
