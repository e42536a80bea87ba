"""A custom provider with fixed token counts, for tests that check numbers end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import anyio

from axione_asgi.errors import UpstreamError
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

PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7


class FixedProvider:
    """`fixed/m` answers "ok" with 11 prompt and 7 completion tokens; `fixed/broken` fails."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def models(self) -> Sequence[str]:
        return ["m", "broken"]

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _usage(self) -> Usage:
        return Usage(
            prompt_tokens=PROMPT_TOKENS,
            completion_tokens=COMPLETION_TOKENS,
            total_tokens=PROMPT_TOKENS + COMPLETION_TOKENS,
        )

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        await anyio.sleep(self.delay_s)
        if model == "broken":
            raise UpstreamError("the upstream broke", code="upstream_auth_failed")
        return ChatCompletion(
            choices=[Choice(message=ResponseMessage(content="ok"))], usage=self._usage()
        )

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        await anyio.sleep(self.delay_s)
        yield ChatCompletionChunk(id="f", choices=[ChunkChoice(delta=Delta(content="ok"))])
        yield ChatCompletionChunk(
            id="f", choices=[ChunkChoice(delta=Delta(), finish_reason="stop")]
        )
        yield ChatCompletionChunk(id="f", usage=self._usage())


def chat_body(model: str = "fixed/m", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
