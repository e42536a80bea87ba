"""Anthropic's Messages API (kind `anthropic`): all of its format, both directions, streaming."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from axione_asgi.errors import (
    AxioneError,
    InvalidRequest,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    ContentPart,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    FunctionCall,
    ImagePart,
    ResponseMessage,
    TextPart,
    ToolCall,
    ToolChoiceNamed,
    Usage,
    new_id,
)
from axione_asgi.providers.base import HTTPProvider
from axione_asgi.transports import UpstreamResponse, UpstreamStream, json_bytes

__all__ = [
    "ANTHROPIC_VERSION",
    "MESSAGES_DIALECT",
    "AnthropicProvider",
    "decode_thinking",
    "encode_thinking",
    "translate_request",
    "translate_response",
]

ANTHROPIC_VERSION = "2023-06-01"
"""The `anthropic-version` header sent with every request the gateway writes itself."""

MESSAGES_DIALECT = "anthropic-messages"
"""The client dialect this provider's upstream speaks, for pass-through."""

WEB_SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search"}
"""Anthropic's server-side web search tool, for a client that asks for web search."""

_NATIVE_PATHS = {"messages": "/v1/messages", "count_tokens": "/v1/messages/count_tokens"}

Json = dict[str, Any]

# Anthropic requires the conversation to open with a user turn; a client that
# starts with an assistant message (or sends only system messages) gets this
# minimal user turn in front, the smallest text the API accepts.
_PLACEHOLDER_USER_TEXT = "."

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL)

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose before or after it "
    "and no Markdown code fences."
)


def _sniff_image(data: bytes) -> str | None:
    """The media type a supported image's bytes announce, if any."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _image_block(url: str, param: str) -> Json:
    """An OpenAI `image_url` as an Anthropic image block."""
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequest("Image URLs must be http(s) URLs or base64 data URLs", param=param)
    if ";base64" not in match["params"].lower():
        raise InvalidRequest("Image data URLs must be base64-encoded", param=param)
    declared = match["mime"].strip().lower()
    if declared == "image/jpg":
        declared = "image/jpeg"
    payload = re.sub(r"\s+", "", match["data"])
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("Image data URL holds invalid base64", param=param) from None
    # Anthropic checks the bytes against media_type, and clients often label a
    # PNG as JPEG; the bytes are the truth when they name a supported format.
    media_type = _sniff_image(raw) or declared
    if media_type not in _IMAGE_MEDIA_TYPES:
        raise InvalidRequest(
            f"Unsupported image type '{declared or 'unknown'}': Anthropic accepts "
            "image/jpeg, image/png, image/gif and image/webp",
            param=param,
        )
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": payload},
    }


def _text_blocks(text: str) -> list[Json]:
    # Anthropic rejects empty and whitespace-only text blocks.
    return [{"type": "text", "text": text}] if text.strip() else []


def _content_blocks(
    content: str | list[ContentPart] | None, param: str, *, images: bool
) -> list[Json]:
    """Text and (where allowed) image blocks of one message's content."""
    if content is None:
        return []
    if isinstance(content, str):
        return _text_blocks(content)
    blocks: list[Json] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if isinstance(part, TextPart):
            blocks.extend(_text_blocks(part.text))
        elif isinstance(part, ImagePart):
            if not images:
                raise InvalidRequest("Image parts are not allowed in this message", param=where)
            blocks.append(_image_block(part.image_url.url, f"{where}.image_url.url"))
        elif part.type == "refusal" and isinstance(refusal := getattr(part, "refusal", None), str):
            # An assistant's earlier refusal is plain text to Anthropic.
            blocks.extend(_text_blocks(refusal))
        else:
            raise InvalidRequest(
                f"Content parts of type '{part.type}' are not supported by Anthropic models",
                param=where,
            )
    return blocks


def _tool_id(call_id: str | None) -> str:
    # Anthropic only takes [A-Za-z0-9_-] in tool ids; ids minted elsewhere
    # (another provider, a client) are mapped the same way on both sides.
    return re.sub(r"[^A-Za-z0-9_-]", "_", call_id or "") or "_"


def _tool_use_blocks(message: ChatMessage, i: int) -> list[Json]:
    blocks: list[Json] = []
    for j, call in enumerate(message.tool_calls or []):
        param = f"messages[{i}].tool_calls[{j}].function.arguments"
        arguments = call.function.arguments.strip()
        try:
            parsed = json.loads(arguments) if arguments else {}
        except ValueError:
            raise InvalidRequest(
                f"Tool call '{call.id}' has arguments that are not valid JSON", param=param
            ) from None
        if not isinstance(parsed, dict):
            raise InvalidRequest(
                f"Tool call '{call.id}' arguments must be a JSON object", param=param
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.id),
                "name": call.function.name,
                "input": parsed,
            }
        )
    return blocks


def _tool_result_block(message: ChatMessage, i: int) -> Json:
    block: Json = {"type": "tool_result", "tool_use_id": _tool_id(message.tool_call_id)}
    param = f"messages[{i}].content"
    if isinstance(message.content, str):
        if message.content:
            block["content"] = message.content
    else:
        parts = _content_blocks(message.content, param, images=True)
        if parts:
            block["content"] = parts
    return block


def _turns(request: ChatCompletionRequest) -> tuple[list[Json], list[Json]]:
    """System blocks and the user/assistant turns, merged and ordered as Anthropic requires."""
    system: list[Json] = []
    turns: list[Json] = []
    for i, message in enumerate(request.messages):
        param = f"messages[{i}].content"
        if message.role in ("system", "developer"):
            system.extend(_content_blocks(message.content, param, images=False))
            continue
        if message.role == "user":
            role, blocks = "user", _content_blocks(message.content, param, images=True)
        elif message.role == "assistant":
            role = "assistant"
            # Its own signed thinking first, as Anthropic wants it replayed.
            blocks = decode_thinking(message.reasoning_state)
            blocks += _content_blocks(message.content, param, images=False)
            blocks += _tool_use_blocks(message, i)
        elif message.role == "tool":
            role, blocks = "user", [_tool_result_block(message, i)]
        else:
            raise InvalidRequest(
                f"Messages with role '{message.role}' are not supported; use tools",
                param=f"messages[{i}].role",
            )
        if not blocks:
            continue
        # Anthropic wants strict user/assistant alternation: same-role
        # neighbours (also across dropped empty messages) become one turn.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # Tool results must open the user turn that answers the tool calls.
        turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    _trim_final_assistant(turns)
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": _text_blocks(_PLACEHOLDER_USER_TEXT)})
    _check_tool_pairing(turns)
    return system, turns


def _trim_final_assistant(turns: list[Json]) -> None:
    # A final assistant turn is a prefill, which Anthropic refuses to end in whitespace.
    while turns and turns[-1]["role"] == "assistant":
        content = turns[-1]["content"]
        if content[-1]["type"] != "text":
            return
        content[-1]["text"] = content[-1]["text"].rstrip()
        if content[-1]["text"]:
            return
        content.pop()
        if content:
            return
        turns.pop()


def _check_tool_pairing(turns: list[Json]) -> None:
    """Every tool call answered in the next turn, every result answering one, as OpenAI requires."""
    for k, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        called = [b["id"] for b in turn["content"] if b["type"] == "tool_use"]
        if not called:
            continue
        following = turns[k + 1]["content"] if k + 1 < len(turns) else []
        answered = {b["tool_use_id"] for b in following if b["type"] == "tool_result"}
        missing = [c for c in called if c not in answered]
        if missing:
            raise InvalidRequest(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                f"answering each call; no answer for: {', '.join(missing)}",
                param="messages",
            )
    for k, turn in enumerate(turns):
        if turn["role"] != "user":
            continue
        previous = turns[k - 1]["content"] if k > 0 else []
        called_ids = {b["id"] for b in previous if b["type"] == "tool_use"}
        for block in turn["content"]:
            if block["type"] == "tool_result" and block["tool_use_id"] not in called_ids:
                raise InvalidRequest(
                    f"Tool message answers '{block['tool_use_id']}', which is not a tool call "
                    "of the preceding assistant message",
                    param="messages",
                )


_STATE_PREFIX = "anthropic:"
_THINKING_KINDS = ("thinking", "redacted_thinking")
# Thinking budgets for a reasoning effort asked without one.
_THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 4096, "high": 16384}
_MIN_THINKING_BUDGET = 1024


def encode_thinking(blocks: list[Json]) -> str | None:
    """Signed thinking blocks as the hub's opaque `reasoning_state`, or None if there are none."""
    kept = [b for b in blocks if b.get("type") in _THINKING_KINDS]
    if not kept:
        return None
    raw = json.dumps(kept, ensure_ascii=False, separators=(",", ":")).encode()
    return _STATE_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii")


def decode_thinking(state: str | None) -> list[Json]:
    """The thinking blocks in a `reasoning_state` this provider wrote; [] for any other."""
    if not state or not state.startswith(_STATE_PREFIX):
        return []  # another vendor's state: only its issuer can read it
    try:
        blocks = json.loads(base64.urlsafe_b64decode(state[len(_STATE_PREFIX) :]))
    except (ValueError, binascii.Error):
        return []
    if not isinstance(blocks, list):
        return []
    return [b for b in blocks if isinstance(b, dict) and b.get("type") in _THINKING_KINDS]


def _thinking(request: ChatCompletionRequest, body: Json, client_cap: int | None) -> None:
    """Anthropic's `thinking` for the hub's reasoning, where the request allows it.

    Anthropic wants the budget below `max_tokens`, no `temperature` but 1 nor
    `top_p` under 0.95, no forced tool, and an assistant turn that called
    tools to replay its own thinking first: a request that cannot be all that
    is sent without thinking rather than refused.
    """
    reasoning = request.reasoning
    if reasoning is None:
        return
    turns = body["messages"]
    last_assistant = next((t for t in reversed(turns) if t["role"] == "assistant"), None)
    if last_assistant is not None:
        blocks = last_assistant["content"]
        calls = any(b["type"] == "tool_use" for b in blocks)
        if calls and blocks[0]["type"] not in _THINKING_KINDS:
            return  # its thinking was not kept (another vendor's turn, a stateless client)
    budget = reasoning.budget_tokens or _THINKING_BUDGETS.get(reasoning.effort or "medium", 4096)
    budget = max(budget, _MIN_THINKING_BUDGET)
    if client_cap is None:
        body["max_tokens"] = body["max_tokens"] + budget
    elif budget >= client_cap:
        budget = client_cap - 1
        if budget < _MIN_THINKING_BUDGET:
            return
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    body.pop("temperature", None)
    if body.get("top_p", 1.0) < 0.95:
        body.pop("top_p")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        body["tool_choice"] = {
            "type": "auto",
            **(
                {"disable_parallel_tool_use": True}
                if choice.get("disable_parallel_tool_use")
                else {}
            ),
        }


def _tools(request: ChatCompletionRequest) -> list[Json]:
    tools: list[Json] = []
    for tool in request.tools or []:
        fn = tool.function
        schema = dict(fn.parameters) if fn.parameters else {"type": "object", "properties": {}}
        schema.setdefault("type", "object")
        entry: Json = {"name": fn.name, "input_schema": schema}
        if fn.description:
            entry["description"] = fn.description
        tools.append(entry)
    return tools


def _tools_in_history(turns: list[Json]) -> list[Json]:
    # Anthropic refuses tool_use blocks in a request that defines no tools; a
    # client that offers none now still has them in its history. Declared
    # with an open schema and `tool_choice: none`, they cannot be called.
    names: dict[str, None] = {}
    for turn in turns:
        for block in turn["content"]:
            if block["type"] == "tool_use":
                names[block["name"]] = None
    return [{"name": n, "input_schema": {"type": "object", "properties": {}}} for n in names]


def _tool_choice(request: ChatCompletionRequest, tools: list[Json]) -> Json | None:
    choice = request.tool_choice
    parallel = (request.model_extra or {}).get("parallel_tool_calls")
    result: Json | None
    if choice is None:
        result = {"type": "auto"} if parallel is False else None
    elif isinstance(choice, ToolChoiceNamed):
        name = choice.function.name
        if name not in {t["name"] for t in tools}:
            raise InvalidRequest(
                f"tool_choice names '{name}', which is not one of the request's tools",
                param="tool_choice",
            )
        result = {"type": "tool", "name": name}
    else:
        result = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    if result is not None and parallel is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    return result


def _format_instruction(request: ChatCompletionRequest) -> str | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return _JSON_OBJECT_INSTRUCTION
    spec = fmt.json_schema or {}
    schema = spec.get("schema", {})
    name = spec.get("name")
    named = f" (named '{name}')" if isinstance(name, str) and name else ""
    return (
        f"{_JSON_OBJECT_INSTRUCTION} The JSON must conform to this JSON Schema{named}: "
        f"{json.dumps(schema, ensure_ascii=False, sort_keys=True)}"
    )


def translate_request(
    request: ChatCompletionRequest,
    upstream_model: str,
    *,
    default_max_tokens: int,
    stream: bool = False,
) -> Json:
    """The Messages API body for an OpenAI chat request.

    Decisions where the two APIs differ:

    - `system` and `developer` messages, wherever they stand, join the
      top-level `system` as text blocks, in order.
    - Same-role neighbours merge into one turn; `tool` messages become
      `tool_result` blocks of a user turn, placed before any text. A
      conversation that does not open with a user turn gets a minimal one
      (".") in front. Empty or whitespace-only text is dropped, and a final
      assistant turn (a prefill) loses its trailing whitespace, since
      Anthropic rejects both.
    - `temperature` is clamped to Anthropic's range 0..1 rather than
      rejected: values up to 1 mean the same on both APIs, and clients
      written for OpenAI's 0..2 keep working.
    - `response_format` (`json_object`, `json_schema`) has no native
      equivalent on every Claude model, so it becomes a system-prompt
      instruction (with the schema); the answer is not validated.
    - `stop` becomes `stop_sequences`, without whitespace-only entries,
      which Anthropic rejects. `user` becomes `metadata.user_id`.
      `parallel_tool_calls: false` becomes `disable_parallel_tool_use`.
    - `n` above 1 is refused (Anthropic returns one answer); `seed` and
      fields unknown to Anthropic are ignored.
    """
    if request.n is not None and request.n > 1:
        raise InvalidRequest("Anthropic models return one choice: 'n' must be 1", param="n")
    system, turns = _turns(request)
    instruction = _format_instruction(request)
    if instruction:
        system.append({"type": "text", "text": instruction})
    body: Json = {
        "model": upstream_model,
        "max_tokens": request.output_cap or default_max_tokens,
        "messages": turns,
    }
    if system:
        body["system"] = system
    tools = _tools(request)
    if tools:
        body["tools"] = tools
        choice = _tool_choice(request, tools)
        if choice is not None:
            body["tool_choice"] = choice
    else:
        history_tools = _tools_in_history(turns)
        if history_tools:
            body["tools"] = history_tools
            body["tool_choice"] = {"type": "none"}
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    stops = [s for s in request.stop_sequences if s.strip()]
    if stops:
        body["stop_sequences"] = stops
    if request.web_search:
        # Anthropic's own server-side search tool serves a client's web search.
        body.setdefault("tools", []).append(dict(WEB_SEARCH_TOOL))
    if request.user:
        body["metadata"] = {"user_id": request.user}
    _thinking(request, body, request.output_cap)
    if stream:
        body["stream"] = True
    return body


def _usage(data: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens; cache writes and reads are prompt tokens too."""
    prompt = sum(
        int(data.get(k) or 0)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return prompt, int(data.get("output_tokens") or 0)


def _openai_usage(prompt: int, completion: int) -> Usage:
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _finish_reason(stop_reason: Any) -> str:
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _completion_id(message_id: Any) -> str:
    # Keeping Anthropic's message id makes a completion traceable upstream.
    return f"chatcmpl-{message_id}" if isinstance(message_id, str) and message_id else new_id()


def translate_response(data: Any) -> ChatCompletion:
    """An OpenAI chat completion for a Messages API answer; `ValueError` if malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        raise ValueError("not a message")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    for block in data["content"]:
        if not isinstance(block, dict):
            raise ValueError("content block is not an object")
        if block.get("type") == "thinking":
            thoughts.append(str(block.get("thinking", "")))
        elif block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            calls.append(
                ToolCall(
                    id=str(block["id"]),
                    function=FunctionCall(
                        name=str(block["name"]),
                        arguments=json.dumps(block.get("input") or {}, ensure_ascii=False),
                    ),
                )
            )
        # Other blocks (server tools and their results) have no OpenAI equivalent.
    text = "".join(texts)
    message = ResponseMessage(
        content=text if text or not calls else None,
        tool_calls=calls or None,
        reasoning_content="".join(thoughts) or None,
        reasoning_state=encode_thinking(data["content"]),
    )
    usage = data.get("usage")
    prompt, completion = _usage(usage) if isinstance(usage, dict) else (0, 0)
    return ChatCompletion(
        id=_completion_id(data.get("id")),
        model=str(data.get("model", "")),
        choices=[Choice(message=message, finish_reason=_finish_reason(data.get("stop_reason")))],
        usage=_openai_usage(prompt, completion),
    )


def _error_detail(body: bytes | str) -> tuple[str, str]:
    """(error type, message) of an Anthropic error body, or empty strings."""
    try:
        data = json.loads(body)
    except ValueError:
        return "", ""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return "", ""
    etype, message = err.get("type"), err.get("message")
    return (etype if isinstance(etype, str) else ""), (message if isinstance(message, str) else "")


def _unsigned(block: Any) -> bool:
    return (
        isinstance(block, dict) and block.get("type") == "thinking" and not block.get("signature")
    )


def _signed_thinking_only(messages: list[Any]) -> list[Any]:
    """The history without thinking blocks that carry no signature; the same list if none.

    Only another vendor's reasoning, translated for a Messages client, comes
    back unsigned; Anthropic would refuse the whole request for it.
    """
    if not any(
        isinstance(m, dict)
        and isinstance(m.get("content"), list)
        and any(map(_unsigned, m["content"]))
        for m in messages
    ):
        return messages
    return [
        {**m, "content": [b for b in m["content"] if not _unsigned(b)]}
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        else m
        for m in messages
    ]


class _StreamTranslator:
    """Turns Messages API stream events into OpenAI chunks, one event at a time."""

    def __init__(self, provider: AnthropicProvider) -> None:
        self.provider = provider
        self.id = new_id()
        self.finished = False
        self.stop_reason: Any = None
        # The latest count of each usage field (message_start, then message_delta).
        self.usage: Json = {}
        # Content block index -> [tool call index, whether arguments were sent].
        self.tools: dict[int, list[Any]] = {}
        # Thinking blocks as they stream (index -> block), and those complete.
        self.thinking: dict[int, Json] = {}
        self.thought: list[Json] = []

    def _chunk(self, delta: Delta, finish_reason: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id, choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)]
        )

    def _tool_delta(self, index: int, **kwargs: Any) -> ChatCompletionChunk:
        return self._chunk(Delta(tool_calls=[DeltaToolCall(index=index, **kwargs)]))

    def feed(self, name: str, raw: str) -> list[ChatCompletionChunk]:
        """The chunks one event yields; raises `UpstreamError` for error events and garbage."""
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(f"Provider '{self.provider.name}' sent a malformed stream event")
        kind = data.get("type", name)
        if kind == "error" or name == "error":
            etype, message = _error_detail(raw)
            detail = self.provider.scrub(message) or etype or "unknown error"
            # Anthropic often reports overload as an error event right after a
            # 200; it is the same condition as a 529, so it maps the same way.
            overloaded = etype == "overloaded_error"
            raise UpstreamError(
                f"Provider '{self.provider.name}' reported an error mid-stream: {detail}",
                code="upstream_overloaded" if overloaded else None,
                status=503 if overloaded else None,
            )
        handlers = {
            "message_start": self._on_message_start,
            "content_block_start": self._on_content_block_start,
            "content_block_delta": self._on_content_block_delta,
            "content_block_stop": self._on_content_block_stop,
            "message_delta": self._on_message_delta,
            "message_stop": self._on_message_stop,
        }
        handler = handlers.get(kind)
        # `ping` and event types added after this code was written carry nothing for us.
        return handler(data) if handler is not None else []

    def _on_message_start(self, data: Json) -> list[ChatCompletionChunk]:
        message = data.get("message") or {}
        self.id = _completion_id(message.get("id"))
        self.usage.update(message.get("usage") or {})
        return [self._chunk(Delta(role="assistant", content=""))]

    def _on_content_block_start(self, data: Json) -> list[ChatCompletionChunk]:
        block = data.get("content_block") or {}
        if block.get("type") in _THINKING_KINDS:
            self.thinking[int(data.get("index", -1))] = dict(block)
            return []
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk(Delta(content=block["text"]))]
        if block.get("type") != "tool_use":
            return []
        index = len(self.tools)
        preset = block.get("input") or {}
        arguments = json.dumps(preset, ensure_ascii=False) if preset else ""
        self.tools[int(data.get("index", index))] = [index, bool(arguments)]
        return [
            self._tool_delta(
                index,
                id=str(block.get("id", "")),
                type="function",
                function=DeltaFunction(name=str(block.get("name", "")), arguments=arguments),
            )
        ]

    def _on_content_block_delta(self, data: Json) -> list[ChatCompletionChunk]:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            text = delta.get("text") or ""
            return [self._chunk(Delta(content=text))] if text else []
        if delta.get("type") == "input_json_delta":
            tool = self.tools.get(int(data.get("index", -1)))
            fragment = delta.get("partial_json") or ""
            if tool is None or not fragment:
                return []
            tool[1] = True
            return [self._tool_delta(tool[0], function=DeltaFunction(arguments=fragment))]
        thinking = self.thinking.get(int(data.get("index", -1)))
        if thinking is not None and delta.get("type") == "thinking_delta":
            text = delta.get("thinking") or ""
            thinking["thinking"] = thinking.get("thinking", "") + text
            return [self._chunk(Delta(reasoning_content=text))] if text else []
        if thinking is not None and delta.get("type") == "signature_delta":
            thinking["signature"] = thinking.get("signature", "") + (delta.get("signature") or "")
        return []  # citation deltas have no OpenAI form

    def _on_content_block_stop(self, data: Json) -> list[ChatCompletionChunk]:
        thinking = self.thinking.pop(int(data.get("index", -1)), None)
        if thinking is not None:
            # Each signed block, once whole: the state its next turn must replay.
            self.thought.append(thinking)
            return [self._chunk(Delta(reasoning_state=encode_thinking(self.thought)))]
        tool = self.tools.get(int(data.get("index", -1)))
        if tool is None or tool[1]:
            return []
        # A call without parameters streams no JSON at all; OpenAI clients
        # parse the arguments, so they get an empty object.
        tool[1] = True
        return [self._tool_delta(tool[0], function=DeltaFunction(arguments="{}"))]

    def _on_message_delta(self, data: Json) -> list[ChatCompletionChunk]:
        self.stop_reason = (data.get("delta") or {}).get("stop_reason")
        # Counts here are cumulative; newer API versions repeat the input counts
        # too, possibly as null, which must not erase message_start's.
        usage = data.get("usage") or {}
        self.usage.update({k: v for k, v in usage.items() if v is not None})
        return []

    def _on_message_stop(self, data: Json) -> list[ChatCompletionChunk]:
        self.finished = True
        return [
            self._chunk(Delta(), finish_reason=_finish_reason(self.stop_reason)),
            ChatCompletionChunk(id=self.id, usage=_openai_usage(*_usage(self.usage))),
        ]


class AnthropicProvider(HTTPProvider):
    """Claude models through Anthropic's `POST {base}/v1/messages`.

    See `translate_request` for how OpenAI fields map where the APIs differ.
    """

    def searches_web(self, request: ChatCompletionRequest, model: str) -> bool:
        """Anthropic has a web search tool of its own (`web_search_20250305`)."""
        return True

    def auth_headers(self) -> dict[str, str]:
        """`x-api-key` and the pinned `anthropic-version`; config headers (betas) add to them."""
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    def payload(self, request: ChatCompletionRequest, model: str, *, stream: bool) -> Json:
        """The upstream body for a request to public model `model`."""
        return translate_request(
            request,
            self.upstream_model(model),
            default_max_tokens=self.config.default_max_tokens,
            stream=stream,
        )

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        """One whole completion from `POST /v1/messages`."""
        answer = await self.post_json("/v1/messages", self.payload(request, model, stream=False))
        try:
            return translate_response(answer)
        except (ValueError, KeyError, TypeError):
            raise UpstreamError(
                f"Provider '{self.name}' answered with a malformed message"
            ) from None

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Chunks as Anthropic's events arrive, then the finish and the usage-only chunk.

        An `error` event, or a stream that ends before `message_stop`, raises
        `UpstreamError` after the chunks already yielded.
        """
        translator = _StreamTranslator(self)
        async with self.post_events(
            "/v1/messages", self.payload(request, model, stream=True)
        ) as events:
            async for event in events:
                try:
                    chunks = translator.feed(event.event, event.data)
                except (KeyError, TypeError, ValueError):
                    raise UpstreamError(
                        f"Provider '{self.name}' sent a malformed stream event"
                    ) from None
                for chunk in chunks:
                    yield chunk
                if translator.finished:
                    return
        raise UpstreamError(
            f"Provider '{self.name}' ended the stream before the answer was complete"
        )

    # -- pass-through (the native face) --------------------------------------
    def native_dialects(self) -> frozenset[str]:
        return frozenset({MESSAGES_DIALECT})

    def _native(
        self,
        dialect: str,
        operation: str,
        body: dict[str, Any],
        model: str,
        headers: Mapping[str, str],
    ) -> tuple[str, bytes, dict[str, str]]:
        if dialect != MESSAGES_DIALECT or operation not in _NATIVE_PATHS:
            raise InvalidRequest(f"Provider '{self.name}' does not serve {dialect} {operation}")
        forwarded = {**body, "model": self.upstream_model(model)}
        messages = body.get("messages")
        if isinstance(messages, list):
            kept = _signed_thinking_only(messages)
            if kept is not messages:
                forwarded["messages"] = kept
        sent = {"anthropic-version": headers.get("anthropic-version") or ANTHROPIC_VERSION}
        betas = headers.get("anthropic-beta")
        allowed = self.config.allowed_betas
        if betas and allowed is not None:
            betas = ",".join(b for b in (x.strip() for x in betas.split(",")) if b in allowed)
        if betas:
            sent["anthropic-beta"] = betas
        return _NATIVE_PATHS[operation], json_bytes(forwarded), sent

    async def forward(
        self,
        dialect: str,
        operation: str,
        body: dict[str, Any],
        model: str,
        headers: Mapping[str, str],
    ) -> UpstreamResponse:
        """The client's Messages body to `/v1/messages` (or count_tokens), as sent."""
        path, payload, sent = self._native(dialect, operation, body, model, headers)
        return await self.forward_bytes(path, payload, sent, dialect)

    def forward_stream(
        self,
        dialect: str,
        operation: str,
        body: dict[str, Any],
        model: str,
        headers: Mapping[str, str],
    ) -> AbstractAsyncContextManager[UpstreamStream]:
        path, payload, sent = self._native(dialect, operation, body, model, headers)
        return self.forward_stream_bytes(path, payload, sent, dialect)

    def upstream_message(self, body: bytes) -> str:
        """The message of Anthropic's `{"type": "error", "error": {...}}` body."""
        message = _error_detail(body)[1]
        return message or super().upstream_message(body)

    def error_for_status(self, status: int, body: bytes, headers: Mapping[str, str]) -> AxioneError:
        """Map Anthropic's error answers, judged by status and the body's error type."""
        etype = _error_detail(body)[0]
        detail = self.scrub(self.upstream_message(body))
        said = f": {detail}" if detail else ""
        who = f"Provider '{self.name}'"
        retry = headers.get("retry-after")
        retry_headers = {"retry-after": retry} if retry else None
        if status == 529 or etype == "overloaded_error":
            return UpstreamError(
                f"{who} is overloaded (upstream status {status}){said}",
                code="upstream_overloaded",
                status=503,
                headers=retry_headers,
            )
        if status == 429 or etype == "rate_limit_error":
            return RateLimited(
                f"{who} is rate limiting requests{said}",
                code="upstream_rate_limited",
                headers=retry_headers,
            )
        if status == 413 or etype == "request_too_large":
            return RequestTooLarge(f"{who} found the request too large{said}")
        if status == 400 or etype == "invalid_request_error":
            # OpenAI's code for an over-long prompt, which clients handle specially.
            code = "context_length_exceeded" if "prompt is too long" in detail else None
            return InvalidRequest(
                f"{who} rejected the request{said}", code=code or "upstream_invalid_request"
            )
        if status == 504 or etype == "timeout_error":
            return UpstreamTimeout(f"{who} timed out (upstream status {status}){said}")
        return super().error_for_status(status, body, headers)
