"""The offline demo model family: deterministic answers for quick starts and tests."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import AsyncIterator, Sequence

from axione_asgi.errors import ModelNotFound
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    FunctionCall,
    ResponseMessage,
    ToolCall,
    ToolChoiceNamed,
    Usage,
    new_id,
)

__all__ = ["DemoProvider", "count_tokens"]

_TOKEN = re.compile(r"\w+|[^\w\s]")
_PIECE = re.compile(r"\S+\s*")


def _unit_vector(seed: str, dims: int) -> list[float]:
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _digest(*parts: str) -> str:
    # hashlib, not hash(): str hashes change with every process (PYTHONHASHSEED).
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def count_tokens(text: str) -> int:
    """The demo's token count: words and punctuation marks."""
    return len(_TOKEN.findall(text))


class DemoProvider:
    """`demo/echo` answers with the last user message; `demo/lorem` with fixed text;
    `demo/embed` makes deterministic unit vectors.

    Both honour `max_tokens` (finish `length`), `stop` and tools (with tools
    offered and `tool_choice` not `none`, the model calls a tool once, then
    answers with the tool's result). Token counts come from its own text.
    """

    _LOREM = (
        "Axione demo model. This answer is generated offline and is the same "
        "every time, so it is useful for trying the API without a provider key."
    )

    EMBEDDING_DIMENSIONS = 256

    def __init__(self, name: str = "demo") -> None:
        self.name = name

    def models(self) -> Sequence[str]:
        return ["echo", "lorem"]

    def embedding_models(self) -> Sequence[str]:
        return ["embed"]

    async def embed(self, request: EmbeddingRequest, model: str) -> EmbeddingResponse:
        """Unit vectors drawn from a generator seeded by each input: same text, same vector."""
        if model not in self.embedding_models():
            raise ModelNotFound(f"{self.name}/{model}")
        items: list[str | list[int]]
        if isinstance(request.input, str):
            items = [request.input]
        elif all(isinstance(i, int) for i in request.input):
            items = [[i for i in request.input if isinstance(i, int)]]
        else:
            items = [i for i in request.input if isinstance(i, str | list)]
        dims = request.dimensions or self.EMBEDDING_DIMENSIONS
        data = [
            Embedding(index=i, embedding=_unit_vector(json.dumps(item), dims))
            for i, item in enumerate(items)
        ]
        tokens = sum(count_tokens(i) if isinstance(i, str) else len(i) for i in items)
        return EmbeddingResponse(
            data=data, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        )

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # -- the deterministic "model" -------------------------------------------
    def _answer(self, request: ChatCompletionRequest, model: str) -> tuple[list[str], str]:
        if model not in self.models():
            raise ModelNotFound(f"{self.name}/{model}")
        last = request.messages[-1]
        if model == "lorem":
            text = self._LOREM
        elif last.role == "tool":
            text = f"The tool answered: {last.text()}"
        else:
            users = [m for m in request.messages if m.role == "user"]
            text = users[-1].text() if users else ""
            text = text or "(empty message)"
        for stop in request.stop_sequences:
            if stop and stop in text:
                text = text[: text.index(stop)]
                break
        pieces = _PIECE.findall(text)
        cap = request.output_cap
        if cap is not None and len(pieces) > cap:
            return pieces[:cap], "length"
        return pieces, "stop"

    def _tool_call(self, request: ChatCompletionRequest) -> ToolCall | None:
        if not request.tools or request.tool_choice == "none":
            return None
        if request.messages[-1].role == "tool":
            return None
        tool = request.tools[0]
        if isinstance(request.tool_choice, ToolChoiceNamed):
            wanted = request.tool_choice.function.name
            tool = next((t for t in request.tools if t.function.name == wanted), tool)
        user_text = request.messages[-1].text()
        return ToolCall(
            id=f"call_{int(_digest(tool.function.name, user_text)[:15], 16) % 10**12:012d}",
            function=FunctionCall(
                name=tool.function.name, arguments=json.dumps({"input": user_text})
            ),
        )

    def _usage(self, request: ChatCompletionRequest, completion: int) -> Usage:
        prompt = sum(count_tokens(m.text()) for m in request.messages)
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )

    # -- Provider ------------------------------------------------------------
    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        call = self._tool_call(request)
        if call is not None:
            if model not in self.models():
                raise ModelNotFound(f"{self.name}/{model}")
            message = ResponseMessage(content=None, tool_calls=[call])
            return ChatCompletion(
                choices=[Choice(message=message, finish_reason="tool_calls")],
                usage=self._usage(request, count_tokens(call.function.arguments)),
            )
        pieces, finish = self._answer(request, model)
        text = "".join(pieces)
        choices = [
            Choice(index=i, message=ResponseMessage(content=text), finish_reason=finish)
            for i in range(request.n or 1)
        ]
        return ChatCompletion(
            choices=choices, usage=self._usage(request, count_tokens(text) * (request.n or 1))
        )

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        cid = new_id()
        call = self._tool_call(request)
        if call is not None:
            if model not in self.models():
                raise ModelNotFound(f"{self.name}/{model}")
            first = DeltaToolCall(
                index=0,
                id=call.id,
                type="function",
                function=DeltaFunction(name=call.function.name, arguments=""),
            )
            yield ChatCompletionChunk(
                id=cid, choices=[ChunkChoice(delta=Delta(role="assistant", tool_calls=[first]))]
            )
            args = DeltaToolCall(index=0, function=DeltaFunction(arguments=call.function.arguments))
            yield ChatCompletionChunk(id=cid, choices=[ChunkChoice(delta=Delta(tool_calls=[args]))])
            yield ChatCompletionChunk(
                id=cid, choices=[ChunkChoice(delta=Delta(), finish_reason="tool_calls")]
            )
            yield ChatCompletionChunk(
                id=cid, usage=self._usage(request, count_tokens(call.function.arguments))
            )
            return
        pieces, finish = self._answer(request, model)
        yield ChatCompletionChunk(
            id=cid, choices=[ChunkChoice(delta=Delta(role="assistant", content=""))]
        )
        produced = 0
        for piece in pieces:
            produced += count_tokens(piece)
            yield ChatCompletionChunk(id=cid, choices=[ChunkChoice(delta=Delta(content=piece))])
        yield ChatCompletionChunk(
            id=cid, choices=[ChunkChoice(delta=Delta(), finish_reason=finish)]
        )
        yield ChatCompletionChunk(id=cid, usage=self._usage(request, produced))
