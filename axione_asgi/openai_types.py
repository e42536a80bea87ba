"""The OpenAI chat request, response and chunk models that the core speaks.

Every provider translates to and from these at its edge. Models allow extra
fields so that OpenAI-format upstreams receive what a client sent and clients
receive what such an upstream answered.
"""

from __future__ import annotations

import random
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChunkChoice",
    "ContentPart",
    "Delta",
    "DeltaFunction",
    "DeltaToolCall",
    "Embedding",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingUsage",
    "FunctionCall",
    "FunctionDefinition",
    "ImagePart",
    "ImageURL",
    "OtherPart",
    "Reasoning",
    "ResponseFormat",
    "ResponseMessage",
    "StreamOptions",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolChoiceFunction",
    "ToolChoiceNamed",
    "Usage",
    "new_id",
    "now",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ImageURL(_Open):
    url: str
    detail: str | None = None


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


class OtherPart(_Open):
    """A content part of a type only OpenAI-format upstreams understand."""

    type: str


def _part_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("text", "image_url") else "other"


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[ImagePart, Tag("image_url")]
    | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_tag),
]


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(_Open):
    """One message of a chat request."""

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # An assistant turn's reasoning as its vendor must see it again (Anthropic's
    # signed thinking blocks), opaque to everyone else: see `ResponseMessage`.
    reasoning_state: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _check_role_fields(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs 'tool_call_id'")
        if self.role in ("system", "developer", "user", "tool") and self.content is None:
            raise ValueError(f"a message with role '{self.role}' needs 'content'")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        return self

    def text(self) -> str:
        """The message's text parts joined, for providers and estimates."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class FunctionDefinition(_Open):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ToolChoiceFunction(_Open):
    name: str


class ToolChoiceNamed(_Open):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


class StreamOptions(_Open):
    include_usage: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class Reasoning(_Open):
    """How much a model may think before it answers (Anthropic `thinking`, OpenAI effort)."""

    effort: Literal["minimal", "low", "medium", "high"] | None = None
    budget_tokens: int | None = Field(default=None, ge=0)


class ChatCompletionRequest(_Open):
    """An OpenAI chat completion request, validated once at the edge."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceNamed | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    user: str | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    # OpenRouter's convention: models to try in order. Never sent upstream.
    models: list[str] | None = Field(default=None, exclude=True, max_length=16)
    # Reasoning asked for in another dialect (Anthropic `thinking`); each
    # provider sends it in its own form, never as this field.
    reasoning: Reasoning | None = Field(default=None, exclude=True)
    # A web search tool asked in another dialect (Responses `web_search`): the
    # providers whose upstream has its own search tool send it (`searches_web`).
    web_search: bool = Field(default=False, exclude=True)

    @property
    def output_cap(self) -> int | None:
        """The client's cap on generated tokens, whichever field it used."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_sequences(self) -> list[str]:
        """`stop` as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def wants_usage_chunk(self) -> bool:
        """Whether a streamed answer should end with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ResponseMessage(_Open):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    # The model's visible reasoning, as OpenAI-compatible servers name it.
    reasoning_content: str | None = None
    # What its vendor needs to see of that reasoning again on the next turn
    # (Anthropic's signed thinking blocks), opaque: a dialect that can carry
    # it (Responses' `encrypted_content`) gives it back on `ChatMessage`.
    reasoning_state: str | None = Field(default=None, exclude=True)


class Choice(_Open):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = "stop"
    logprobs: Any = None


def now() -> int:
    """Seconds since the epoch, as OpenAI's `created`."""
    return int(time.time())


def new_id(prefix: str = "chatcmpl") -> str:
    """A fresh completion id in OpenAI's style.

    Ids name things, they guard nothing: the process PRNG is enough, and it
    spares a system call on every request and stream.
    """
    return f"{prefix}-{random.getrandbits(96):024x}"


class ChatCompletion(_Open):
    """A whole, non-streamed chat completion."""

    id: str = Field(default_factory=new_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str = ""
    choices: list[Choice]
    usage: Usage | None = None


class DeltaFunction(_Open):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_Open):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction | None = None


class Delta(_Open):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    reasoning_state: str | None = Field(default=None, exclude=True)


class ChunkChoice(_Open):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(_Open):
    """One streamed chunk; a usage chunk has no choices and a `usage`."""

    id: str = ""
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str = ""
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None


EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(_Open):
    """An OpenAI embeddings request."""

    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    user: str | None = None

    @model_validator(mode="after")
    def _check_input(self) -> EmbeddingRequest:
        if isinstance(self.input, list):
            if not self.input:
                raise ValueError("'input' must not be empty")
            if len(self.input) > 2048:
                raise ValueError("'input' holds at most 2048 items")
        return self

    def texts(self) -> list[str] | None:
        """The inputs as strings, or None when they are token arrays."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(i, str) for i in self.input):
            return [i for i in self.input if isinstance(i, str)]
        return None


class Embedding(_Open):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Open):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(_Open):
    """An OpenAI embeddings answer."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str = ""
    usage: EmbeddingUsage = Field(default_factory=EmbeddingUsage)
