"""The OpenAI wire format: `openai`, `openai-compatible` and `mistral` kinds."""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from pydantic import ValidationError

from axione_asgi.errors import AxioneError, InvalidRequest, UpstreamError
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    DeltaFunction,
    DeltaToolCall,
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
        finished = False
        async with self.post_event_batches("/chat/completions", payload) as batches:
            async for events in batches:
                chunks: list[ChatCompletionChunk] = []
                done = False
                for event in events:
                    if event.data == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = self._chunk(event.data)
                    except UpstreamError:
                        if chunks:
                            yield chunks  # what came before the bad chunk still counts
                        raise
                    chunks.append(chunk)
                    if not finished:
                        for choice in chunk.choices:
                            if choice.finish_reason:
                                finished = True
                if chunks:
                    yield chunks
                if done:
                    # Read to the end of the body, so the connection goes back
                    # to the pool instead of being closed half-read.
                    async for _ in batches:
                        pass
                    return
        if not finished:
            # Neither `[DONE]` nor a finish reason: the answer was cut (or the
            # body was no event stream at all), and the client must know it.
            raise UpstreamError(
                f"Provider '{self.name}' ended the stream before the answer was complete"
            )

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
# What Mistral's messages may hold, per role; anything else is a 422 (`extra_forbidden`),
# and clients echo back what they were given (`refusal`, `annotations`, `index`, ...).
_MISTRAL_MESSAGE_FIELDS = {
    "system": ("content",),
    "user": ("content",),
    "assistant": ("content", "tool_calls", "prefix"),
    "tool": ("content", "tool_call_id", "name"),
}
_MISTRAL_FUNCTION_FIELDS = ("name", "description", "parameters", "strict")
_MISTRAL_TOOL_ID = re.compile(r"[A-Za-z0-9]{9}")
_BASE62 = string.digits + string.ascii_letters
# The tags pydantic puts after a list index in a 422's `loc` (which member of a
# union failed: a message's role, a chunk's type): not fields.
_LOC_TAGS = frozenset(
    {"system", "user", "assistant", "tool", "text", "image_url", "document_url", "input_audio"}
)


def mistral_tool_call_id(call_id: str) -> str:
    """The id Mistral sees for a client's tool-call id: 9 of a-z, A-Z, 0-9, as it demands.

    Mistral's own ids are their own image, so they go back as they came; any
    other (OpenAI's `call_...`, Anthropic's `toolu_...`, a client's rewrite)
    becomes 9 base-62 digits of its SHA-256: the same in every request, so a
    call and its result still match, also in a history made by other models.
    """
    if _MISTRAL_TOOL_ID.fullmatch(call_id):
        return call_id
    number = int.from_bytes(hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).digest()[:8])
    digits = []
    for _ in range(9):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(digits)


def _new_tool_call_id() -> str:
    # For a call Mistral sent without an id (its schema's default is "null").
    return "".join(random.choices(_BASE62, k=9))


def _mistral_content(content: Any, role: str) -> Any:
    """Content parts as Mistral's chunks: text and image_url with their own fields only."""
    if not isinstance(content, list):
        return content
    parts: list[Any] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            image = part["image_url"]
            url = {k: image[k] for k in ("url", "detail") if image.get(k) is not None}
            parts.append({"type": "image_url", "image_url": url})
        else:
            parts.append(part)  # Mistral's own chunk kinds (document_url, ...), as sent
    if role != "user" and all(p.get("type") == "text" for p in parts if isinstance(p, dict)):
        # Text only: a string, which every Mistral model takes for every role.
        return "".join(p["text"] for p in parts if isinstance(p, dict))
    return parts


def _mistral_message(message: dict[str, Any], last: bool) -> dict[str, Any]:
    """One OpenAI message as Mistral's schema for its role allows it."""
    role = message.get("role")
    if role == "developer":
        role = "system"
    elif role == "function":  # OpenAI's legacy tool result
        role = "tool"
    out: dict[str, Any] = {"role": role}
    for field in _MISTRAL_MESSAGE_FIELDS.get(str(role), ("content",)):
        value = message.get(field)
        if value is None:
            continue
        if field == "content":
            value = _mistral_content(value, str(role))
        elif field == "tool_calls":
            if not value:
                continue
            value = [
                {
                    "id": mistral_tool_call_id(call["id"]),
                    "type": "function",
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": call["function"]["arguments"],
                    },
                }
                for call in value
            ]
        elif field == "tool_call_id":
            value = mistral_tool_call_id(value)
        elif field == "prefix":
            # Only Mistral's own meaning: the last message starts the answer.
            if value is not True or not last:
                continue
        elif field == "name" and not isinstance(value, str):
            continue
        out[field] = value
    return out


def _mistral_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    fields = {k: function[k] for k in _MISTRAL_FUNCTION_FIELDS if function.get(k) is not None}
    return {"type": "function", "function": fields}


def _chunks_text(content: list[Any]) -> tuple[str, str]:
    """Mistral's content chunks as (text, thinking): its reasoning models answer in chunks."""
    text: list[str] = []
    thinking: list[str] = []
    for chunk in content:
        if not isinstance(chunk, dict):
            continue
        if chunk.get("type") == "text" and isinstance(chunk.get("text"), str):
            text.append(chunk["text"])
        elif chunk.get("type") == "thinking":
            inner = chunk.get("thinking")
            parts = inner if isinstance(inner, list) else [{"text": inner}]
            thinking += [
                p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
            ]
    return "".join(text), "".join(thinking)


def _openai_message(message: dict[str, Any], *, delta: bool) -> None:
    """A Mistral answer message (or stream delta) in OpenAI's shape, in place.

    `prefix` is Mistral's alone: an OpenAI client would echo it back (to
    other providers too). Chunked content becomes text and reasoning text;
    object arguments become the JSON string OpenAI sends.
    """
    message.pop("prefix", None)
    content = message.get("content")
    if isinstance(content, list):
        text, thinking = _chunks_text(content)
        message["content"] = text if text or not delta else None
        if thinking and not message.get("reasoning_content"):
            message["reasoning_content"] = thinking
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if isinstance(function, dict) and isinstance(function.get("arguments"), dict):
            function["arguments"] = json.dumps(function["arguments"], ensure_ascii=False)
        if delta:
            continue  # the stream's ids, types and indexes: MistralToolCallDeltas
        call.pop("index", None)
        call["type"] = "function"
        if not call.get("id") or call["id"] == "null":
            call["id"] = _new_tool_call_id()


def _loc_label(part: str, after_index: bool) -> bool:
    # Union member labels (`list[...]`, `str`), and member tags after an index.
    return "[" in part or part == "str" or (after_index and part in _LOC_TAGS)


def _loc_path(loc: list[Any]) -> str:
    """`messages[1].annotations` from Mistral's (pydantic's) `loc`."""
    out = ""
    after_index = False
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not _loc_label(part, after_index):
            out += ("." if out else "") + part
        after_index = isinstance(part, int)
    return out


def _mistral_details(body: bytes) -> list[tuple[str, str]]:
    """(where, what) of each item of a Mistral 422's `message.detail` list."""
    try:
        data = json.loads(body)
    except ValueError:
        return []
    message = data.get("message") if isinstance(data, dict) else None
    detail = message.get("detail") if isinstance(message, dict) else None
    if not isinstance(detail, list):
        return []
    found: list[tuple[str, str]] = []
    for item in detail:
        if isinstance(item, dict):
            loc = item.get("loc")
            msg = item.get("msg")
            where = _loc_path(loc) if isinstance(loc, list) else ""
            found.append((where, msg if isinstance(msg, str) else "invalid"))
    return found


class MistralToolCallDeltas:
    """Mistral's streamed tool calls in OpenAI's shape: sans I/O, `feed(chunk) -> chunk`.

    Mistral sends each call whole in one delta, without `type`, with its own
    `index` (0 for every call of a turn on some models). OpenAI's clients
    build calls by `index` and want `id`, `type` and `function.name` on the
    first delta of each call and not again: openai-python adds up repeated
    strings, and openai-node refuses a call without `type`.
    """

    def __init__(self) -> None:
        self._by_id: dict[tuple[int, str], int] = {}
        self._by_upstream: dict[tuple[int, int], int] = {}
        self._count: dict[int, int] = {}

    def feed(self, chunk: ChatCompletionChunk) -> ChatCompletionChunk:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                self._fix(choice.index, call)
        return chunk

    def _fix(self, choice: int, call: DeltaToolCall) -> None:
        call_id = call.id if call.id and call.id != "null" else None
        upstream = (choice, call.index)
        known = (
            self._by_id.get((choice, call_id))
            if call_id is not None
            else self._by_upstream.get(upstream)
        )
        if known is not None:  # more of a call already begun
            call.index, call.id, call.type = known, None, None
            if call.function is not None:
                call.function.name = None
            return
        index = self._count.get(choice, 0)
        self._count[choice] = index + 1
        call_id = call_id or _new_tool_call_id()
        self._by_id[(choice, call_id)] = self._by_upstream[upstream] = index
        call.index, call.id, call.type = index, call_id, "function"
        if call.function is None:
            call.function = DeltaFunction(arguments="")


class MistralProvider(OpenAIProvider):
    """Mistral's OpenAI-like API: what it rejects dropped or renamed, its answers made OpenAI's.

    Requests carry only the fields and message fields Mistral's schema has
    (it refuses any other with a 422), tool-call ids mapped to the 9
    alphanumerics it demands (`mistral_tool_call_id`). Answers lose
    Mistral's own `prefix`, and streamed tool calls get OpenAI's shape.
    """

    def payload(
        self, request: ChatCompletionRequest, model: str, *, stream: bool
    ) -> dict[str, Any]:
        data = super().payload(request, model, stream=stream)
        if "seed" in data:
            data["random_seed"] = data.pop("seed")
        if "max_completion_tokens" in data:
            cap = data.pop("max_completion_tokens")
            data.setdefault("max_tokens", cap)
        messages = data["messages"]
        last = len(messages) - 1
        data["messages"] = [_mistral_message(m, i == last) for i, m in enumerate(messages)]
        if data.get("tools"):
            data["tools"] = [_mistral_tool(t) for t in data["tools"]]
        # Mistral streams usage in its last chunk without being asked.
        return {k: v for k, v in data.items() if k in _MISTRAL_FIELDS}

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        answer = await self.post_json(
            "/chat/completions", self.payload(request, model, stream=False)
        )
        for choice in answer.get("choices") or () if isinstance(answer, dict) else ():
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                _openai_message(choice["message"], delta=False)
        try:
            return ChatCompletion.model_validate(answer)
        except ValidationError:
            raise UpstreamError(
                f"Provider '{self.name}' answered with a malformed chat completion"
            ) from None

    async def stream_batches(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[list[ChatCompletionChunk]]:
        deltas = MistralToolCallDeltas()
        batches = super().stream_batches(request, model)
        try:
            async for batch in batches:
                yield [deltas.feed(chunk) for chunk in batch]
        finally:
            closer = getattr(batches, "aclose", None)
            if closer is not None:
                await closer()

    def _chunk(self, data: str) -> ChatCompletionChunk:
        try:
            raw = json.loads(data)
        except ValueError:
            raw = None
        if isinstance(raw, dict) and "error" not in raw:
            for choice in raw.get("choices") or ():
                if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                    _openai_message(choice["delta"], delta=True)
            try:
                return ChatCompletionChunk.model_validate(raw)
            except ValidationError:
                pass
        return super()._chunk(data)  # its errors, said as for any OpenAI-format upstream

    def upstream_message(self, body: bytes) -> str:
        """Mistral's 422 lists each rejected field: the message names them all."""
        details = _mistral_details(body)
        if not details:
            return super().upstream_message(body)
        said = [f"{where}: {what}" if where else what for where, what in details[:5]]
        more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
        return "; ".join(said) + more

    def error_for_status(self, status: int, body: bytes, headers: Mapping[str, str]) -> AxioneError:
        error = super().error_for_status(status, body, headers)
        if status == 422 and error.param is None:
            details = _mistral_details(body)
            if details and details[0][0]:
                error.param = details[0][0]
        return error

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
