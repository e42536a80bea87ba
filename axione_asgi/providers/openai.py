"""The OpenAI wire format: `openai`, `openai-compatible` and `mistral` kinds."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from pydantic import ValidationError

from axione_asgi.errors import InvalidRequest, UpstreamError
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
)
from axione_asgi.providers.base import HTTPProvider, flatten
from axione_asgi.transports import UpstreamResponse, UpstreamStream, json_bytes

__all__ = ["MistralProvider", "OpenAIProvider"]


_RESPONSES = frozenset({"openai-responses"})
# OpenAI's models that take `reasoning_effort` (the o-series and GPT-5).
_REASONING_MODELS = re.compile(r"^(o\d|gpt-5)")


class OpenAIProvider(HTTPProvider):
    """Any upstream that speaks OpenAI's `POST {base}/chat/completions`.

    Unknown request fields pass through untouched: the upstream decides.
    """

    @property
    def requires_key(self) -> bool:  # type: ignore[override]
        return self.config.kind != "openai-compatible"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def payload(
        self, request: ChatCompletionRequest, model: str, *, stream: bool
    ) -> dict[str, Any]:
        """The upstream body: the client's request with the upstream model id."""
        data = request.model_dump(exclude_unset=True)
        data["model"] = upstream = self.upstream_model(model)
        reasoning = request.reasoning
        # Asked in another dialect (Anthropic `thinking`): only reasoning models
        # take the field; the others refuse it, so there it is left out.
        if (
            reasoning is not None
            and reasoning.effort
            and "reasoning_effort" not in data
            and _REASONING_MODELS.match(upstream)
        ):
            data["reasoning_effort"] = reasoning.effort
        if stream:
            data["stream"] = True
            # Always ask for usage, so tokens are counted even when the client
            # did not ask; the router hides the usage chunk from such a client.
            data["stream_options"] = {**data.get("stream_options", {}), "include_usage": True}
        else:
            data.pop("stream", None)
            data.pop("stream_options", None)
        return data

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        answer = await self.post_bytes(
            "/chat/completions", self.payload(request, model, stream=False)
        )
        try:
            return ChatCompletion.model_validate_json(answer)
        except ValidationError:
            raise UpstreamError(
                f"Provider '{self.name}' answered with a malformed chat completion"
            ) from None

    def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        return flatten(self.stream_batches(request, model))

    async def stream_batches(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[list[ChatCompletionChunk]]:
        payload = self.payload(request, model, stream=True)
        async with self.post_event_batches("/chat/completions", payload) as batches:
            async for events in batches:
                chunks: list[ChatCompletionChunk] = []
                done = False
                for event in events:
                    if event.data == "[DONE]":
                        done = True
                        break
                    try:
                        chunks.append(self._chunk(event.data))
                    except UpstreamError:
                        if chunks:
                            yield chunks  # what came before the bad chunk still counts
                        raise
                if chunks:
                    yield chunks
                if done:
                    # Read to the end of the body, so the connection goes back
                    # to the pool instead of being closed half-read.
                    async for _ in batches:
                        pass
                    return

    # -- pass-through of the Responses dialect (the native face) --------------
    def native_dialects(self) -> frozenset[str]:
        """`openai-responses` where the upstream serves `/responses` (SPEC 9)."""
        return _RESPONSES if self.config.responses_native else frozenset()

    def _native(self, dialect: str, operation: str, body: dict[str, Any], model: str) -> bytes:
        if dialect not in self.native_dialects() or operation != "responses":
            raise InvalidRequest(f"Provider '{self.name}' does not serve {dialect} {operation}")
        return json_bytes({**body, "model": self.upstream_model(model)})

    async def forward(
        self,
        dialect: str,
        operation: str,
        body: dict[str, Any],
        model: str,
        headers: Mapping[str, str],
    ) -> UpstreamResponse:
        """The client's Responses body to `POST /responses`, as sent."""
        payload = self._native(dialect, operation, body, model)
        return await self.forward_bytes("/responses", payload, headers, dialect)

    def forward_stream(
        self,
        dialect: str,
        operation: str,
        body: dict[str, Any],
        model: str,
        headers: Mapping[str, str],
    ) -> AbstractAsyncContextManager[UpstreamStream]:
        payload = self._native(dialect, operation, body, model)
        return self.forward_stream_bytes("/responses", payload, headers, dialect)

    def embedding_payload(self, request: EmbeddingRequest, model: str) -> dict[str, Any]:
        """The upstream body; floats are always asked for, the router encodes base64."""
        data = request.model_dump(exclude_unset=True)
        data["model"] = self.upstream_embedding_model(model)
        data["encoding_format"] = "float"
        return data

    async def embed(self, request: EmbeddingRequest, model: str) -> EmbeddingResponse:
        answer = await self.post_json("/embeddings", self.embedding_payload(request, model))
        try:
            return EmbeddingResponse.model_validate(answer)
        except ValidationError:
            raise UpstreamError(
                f"Provider '{self.name}' answered with malformed embeddings"
            ) from None

    def _chunk(self, data: str) -> ChatCompletionChunk:
        try:
            chunk = ChatCompletionChunk.model_validate_json(data)
        except ValidationError:
            chunk = None
        # Chunks allow extra fields, so an error object validates as an empty
        # chunk: it must be caught here, before it reaches the client unscrubbed.
        if chunk is None or (chunk.model_extra and "error" in chunk.model_extra):
            if chunk is not None or '"error"' in data:
                raise UpstreamError(
                    f"Provider '{self.name}' reported an error mid-stream: "
                    f"{self.scrub(self.upstream_message(data.encode()))}"
                )
            raise UpstreamError(f"Provider '{self.name}' sent a malformed stream chunk")
        return chunk


# Mistral answers 422 to fields it does not know, so only these are sent.
_MISTRAL_FIELDS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stream",
        "stop",
        "random_seed",
        "response_format",
        "tools",
        "tool_choice",
        "presence_penalty",
        "frequency_penalty",
        "n",
        "parallel_tool_calls",
        "prediction",
        "safe_prompt",
    }
)


class MistralProvider(OpenAIProvider):
    """Mistral's OpenAI-like API, with the fields it rejects dropped or renamed."""

    def payload(
        self, request: ChatCompletionRequest, model: str, *, stream: bool
    ) -> dict[str, Any]:
        data = super().payload(request, model, stream=stream)
        if "seed" in data:
            data["random_seed"] = data.pop("seed")
        if "max_completion_tokens" in data:
            cap = data.pop("max_completion_tokens")
            data.setdefault("max_tokens", cap)
        for message in data["messages"]:
            if message.get("role") == "developer":
                message["role"] = "system"
        # Mistral streams usage in its last chunk without being asked.
        return {k: v for k, v in data.items() if k in _MISTRAL_FIELDS}

    def embedding_payload(self, request: EmbeddingRequest, model: str) -> dict[str, Any]:
        texts = request.texts()
        if texts is None:
            raise InvalidRequest(
                f"Provider '{self.name}' embeds text only, not token arrays", param="input"
            )
        data: dict[str, Any] = {"model": self.upstream_embedding_model(model), "input": texts}
        if request.dimensions is not None:
            data["output_dimension"] = request.dimensions
        return data
