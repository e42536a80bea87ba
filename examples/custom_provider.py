"""A custom provider: `acme/<model>` served by your own code, through the same Protocol.

Run: python examples/custom_provider.py
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from axione_asgi import AxioneConfig, create_app
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ResponseMessage,
    Usage,
)


class ShoutingProvider:
    """Answers with the last message in capitals; `acme/shout`."""

    def models(self) -> Sequence[str]:
        return ["shout"]

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _answer(self, request: ChatCompletionRequest) -> tuple[str, Usage]:
        text = request.messages[-1].text().upper()
        prompt = sum(len(m.text().split()) for m in request.messages)
        completion = len(text.split())
        return text, Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        text, usage = self._answer(request)
        return ChatCompletion(choices=[Choice(message=ResponseMessage(content=text))], usage=usage)

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        text, usage = self._answer(request)
        for word in text.split(" "):
            yield ChatCompletionChunk(
                id="shout", choices=[ChunkChoice(delta=Delta(content=word + " "))]
            )
        yield ChatCompletionChunk(
            id="shout", choices=[ChunkChoice(delta=Delta(), finish_reason="stop")]
        )
        yield ChatCompletionChunk(id="shout", usage=usage)


def build_app():  # type: ignore[no-untyped-def]
    """The gateway with the demo models and `acme/shout`."""
    config = AxioneConfig.from_mapping({"storage": {"keys": "memory://", "ledger": "memory://"}})
    return create_app(config, providers={"acme": ShoutingProvider()})


async def main() -> None:
    import httpx

    app = build_app()
    _record, key = await app.runtime.key_store.create("example")
    async with (
        app.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://axione"
        ) as client,
    ):
        answer = await client.post(
            "/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "acme/shout", "messages": [{"role": "user", "content": "hello there"}]},
        )
        print(answer.json()["choices"][0]["message"]["content"])


if __name__ == "__main__":
    asyncio.run(main())
