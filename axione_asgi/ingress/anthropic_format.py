"""Anthropic Messages <-> the hub's chat types, without I/O: requests, answers, streams.

What a Messages client sends becomes a `ChatCompletionRequest` for backends
that do not speak Messages; what they answer becomes a Message or, streamed,
Anthropic's event sequence. The choices where the two differ:

- `system` (a string or text blocks) becomes one system message.
- `tool_result` blocks become `tool` messages, placed right after the
  assistant's calls; an `is_error` result reads "Error: ..."; images in a
  result follow in a user message (OpenAI takes no images in tool messages).
- `thinking` and `redacted_thinking` blocks carry a signature only Anthropic
  can check: toward other backends they are dropped, never a 400.
- `thinking` (the request field) becomes the hub's `reasoning`, which each
  provider sends in its own form; reasoning text that comes back becomes a
  `thinking` block with an empty signature.
- `output_config.format` (structured output) becomes `response_format`.
- `cache_control` and `top_k` have no equivalent there and are ignored;
  server tools (`web_search_...`, `bash_...`) are left out and named in
  `x-axione-ignored-tools`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from axione_asgi.errors import AxioneError, InvalidRequest
from axione_asgi.exchange.parsing import validation_error
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Usage,
    new_id,
)
from axione_asgi.transports import json_bytes

__all__ = [
    "ANTHROPIC_ENVELOPE",
    "DIALECT",
    "MessagesStreamWriter",
    "error_event",
    "event",
    "stop_reason",
    "to_chat",
    "to_message",
]

Json = dict[str, Any]

DIALECT = "anthropic-messages"

# SPEC 9: Anthropic's error types by the gateway's status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_EFFORTS = ((4096, "low"), (16384, "medium"))


def error_type(exc: AxioneError) -> str:
    """Anthropic's error type for a gateway error."""
    return _ERROR_TYPES.get(exc.status, "api_error")


def error_object(exc: AxioneError) -> Json:
    """Anthropic's `{"type": "error", "error": {...}}` for a gateway error."""
    return {"type": "error", "error": {"type": error_type(exc), "message": exc.message}}


class _AnthropicEnvelope:
    """Errors as Anthropic writes them, so the anthropic SDKs raise their own classes."""

    dialect = DIALECT

    def render(self, exc: AxioneError) -> bytes:
        return json.dumps(error_object(exc), ensure_ascii=False).encode()


ANTHROPIC_ENVELOPE = _AnthropicEnvelope()


def event(name: str, data: Json) -> bytes:
    """One server-sent event as Anthropic frames them: `event:` then `data:`."""
    return b"event: " + name.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"


def error_event(exc: AxioneError) -> bytes:
    """The `event: error` that ends a stream cut by `exc`."""
    if exc.native is not None and exc.native[0] == DIALECT:
        return b"event: error\ndata: " + exc.native[2].replace(b"\n", b"") + b"\n\n"
    return event("error", error_object(exc))


def stop_reason(finish_reason: str | None) -> str:
    """Anthropic's stop reason for an OpenAI finish reason."""
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


# -- request: Messages -> hub -------------------------------------------------
def _fail(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _text_of_system(system: Any) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _fail("'system' must be a string or a list of text blocks", "system")
    texts: list[str] = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _fail("'system' blocks must be text blocks", f"system[{j}]")
        text = block.get("text")
        if not isinstance(text, str):
            raise _fail("'text' must be a string", f"system[{j}].text")
        texts.append(text)
    return "\n\n".join(t for t in texts if t)


def _image_part(block: Json, where: str) -> Json:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _fail("An image block needs a 'source'", f"{where}.source")
    if source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _fail("A base64 image needs 'media_type' and 'data'", f"{where}.source")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _fail(
        f"Image sources of type '{source.get('type')}' are served by Anthropic models only",
        f"{where}.source.type",
    )


def _document_part(block: Json, where: str) -> Json:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _fail("A document block needs a 'source'", f"{where}.source")
    kind = source.get("type")
    if kind == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") or "application/pdf"
        title = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        return {
            "type": "file",
            "file": {"filename": title, "file_data": f"data:{media};base64,{source['data']}"},
        }
    if kind == "text" and isinstance(source.get("data"), str):
        title = block.get("title")
        text = (
            f"{title}\n\n{source['data']}" if isinstance(title, str) and title else source["data"]
        )
        return {"type": "text", "text": text}
    if kind == "content" and isinstance(source.get("content"), list | str):
        return {"type": "text", "text": _plain_text(source["content"])}
    raise _fail(
        f"Document sources of type '{kind}' are served by Anthropic models only",
        f"{where}.source.type",
    )


def _plain_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(
        b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
    )


def _blocks(content: Any, where: str) -> list[Json]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _fail("'content' must be a string or a list of content blocks", where)
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _fail("Each content block must be an object with a 'type'", f"{where}[{j}]")
    return content


def _user_turn(content: Any, where: str) -> list[Json]:
    """Hub messages for one user turn: tool results first, then the rest."""
    tools: list[Json] = []
    parts: list[Json] = []
    tool_images: list[Json] = []
    for j, block in enumerate(_blocks(content, where)):
        at = f"{where}[{j}]"
        kind = block["type"]
        if kind == "text":
            if isinstance(block.get("text"), str) and block["text"]:
                parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "document":
            parts.append(_document_part(block, at))
        elif kind == "tool_result":
            tool_id = block.get("tool_use_id")
            if not isinstance(tool_id, str) or not tool_id:
                raise _fail("A tool_result needs its 'tool_use_id'", f"{at}.tool_use_id")
            texts: list[str] = []
            inner = block.get("content")
            for k, part in enumerate(_blocks(inner, f"{at}.content") if inner else []):
                if part["type"] == "image":
                    tool_images.append(_image_part(part, f"{at}.content[{k}]"))
                elif isinstance(part.get("text"), str):
                    texts.append(part["text"])
            text = "\n".join(texts)
            if block.get("is_error") is True:
                text = f"Error: {text}" if text else "Error"
            tools.append({"role": "tool", "tool_call_id": tool_id, "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        elif kind == "search_result":
            parts.append({"type": "text", "text": _plain_text(block.get("content") or [])})
        else:
            raise _fail(f"Content blocks of type '{kind}' are served by Anthropic models only", at)
    messages = tools
    if tool_images:
        parts = [{"type": "text", "text": "Images from the tool results:"}, *tool_images, *parts]
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        text_content = "\n".join(p["text"] for p in parts) if only_text else None
        messages.append({"role": "user", "content": text_content or parts})
    return messages


def _assistant_turn(content: Any, where: str) -> list[Json]:
    texts: list[str] = []
    calls: list[Json] = []
    for j, block in enumerate(_blocks(content, where)):
        kind = block["type"]
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind in ("tool_use", "server_tool_use"):
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _fail("A tool_use block needs 'id' and 'name'", f"{where}[{j}]")
            arguments = block.get("input")
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {
                        "name": block["name"],
                        "arguments": json.dumps(
                            arguments if arguments is not None else {}, ensure_ascii=False
                        ),
                    },
                }
            )
        # thinking, redacted_thinking and server tool results: not for other vendors.
    text = "".join(texts)
    if not text and not calls:
        return []
    message: Json = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tools(tools: Any) -> tuple[list[Json], list[str]]:
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise _fail("'tools' must be a list", "tools")
    out: list[Json] = []
    ignored: list[str] = []
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _fail("Each tool needs a 'name'", f"tools[{j}]")
        kind = tool.get("type")
        if kind not in (None, "custom") or "input_schema" not in tool:
            ignored.append(tool["name"])  # a server tool: the backend has none
            continue
        function: Json = {"name": tool["name"], "parameters": tool.get("input_schema") or {}}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out, ignored


def _tool_choice(choice: Any, has_tools: bool) -> tuple[Any, bool | None]:
    """The hub's `tool_choice` and `parallel_tool_calls` for Anthropic's `tool_choice`."""
    if choice is None or not has_tools:
        return None, None
    if not isinstance(choice, dict):
        raise _fail("'tool_choice' must be an object", "tool_choice")
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") is True else None
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise _fail("'tool_choice.type' must be auto, any, tool or none", "tool_choice.type")


def _reasoning(thinking: Any) -> Json | None:
    if not isinstance(thinking, dict):
        return None
    if thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int) and budget > 0:
            effort = next((name for cap, name in _EFFORTS if budget < cap), "high")
            return {"effort": effort, "budget_tokens": budget}
        return {"effort": "medium"}
    if thinking.get("type") == "adaptive":
        return {"effort": "medium"}
    return None


def to_chat(body: Json, public_model: str) -> tuple[ChatCompletionRequest, list[str]]:
    """The hub request for a Messages body, and the names of the tools left out."""
    messages: list[Json] = []
    system = _text_of_system(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise _fail("'messages' must be a non-empty list", "messages")
    for i, turn in enumerate(turns):
        where = f"messages[{i}]"
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant", "system"):
            raise _fail("Each message needs a role of 'user' or 'assistant'", f"{where}.role")
        if "content" not in turn:
            raise InvalidRequest(
                f"'{where}.content': Field required", param=f"{where}.content", code="missing_field"
            )
        if turn["role"] == "system":
            # Claude Code's mid-conversation system turns (a beta): a system message there.
            text = _text_of_system(turn["content"])
            if text:
                messages.append({"role": "system", "content": text})
        elif turn["role"] == "user":
            messages.extend(_user_turn(turn["content"], f"{where}.content"))
        else:
            messages.extend(_assistant_turn(turn["content"], f"{where}.content"))
    tools, ignored = _tools(body.get("tools"))
    chat: Json = {"model": public_model, "messages": messages}
    if tools:
        chat["tools"] = tools
    choice, parallel = _tool_choice(body.get("tool_choice"), bool(tools))
    if choice is not None:
        chat["tool_choice"] = choice
    if parallel is not None:
        chat["parallel_tool_calls"] = parallel
    for name, hub in (
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
    ):
        if body.get(name) is not None:
            chat[hub] = body[name]
    stops = body.get("stop_sequences")
    if stops:
        chat["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    output = body.get("output_config")
    output = output if isinstance(output, dict) else {}
    reasoning = _reasoning(body.get("thinking"))
    if reasoning is not None:
        effort = output.get("effort")
        if effort in ("low", "medium", "high"):
            reasoning["effort"] = effort
        chat["reasoning"] = reasoning
    fmt = output.get("format") or body.get("output_format")
    if (
        isinstance(fmt, dict)
        and fmt.get("type") == "json_schema"
        and isinstance(fmt.get("schema"), dict)
    ):
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"]},
        }
    if body.get("stream"):
        chat["stream_options"] = {"include_usage": True}
    try:
        return ChatCompletionRequest.model_validate(chat), ignored
    except ValidationError as exc:
        raise validation_error(exc) from None


# -- answer: hub -> Messages --------------------------------------------------
def message_id(completion_id: str) -> str:
    """A Message id that keeps the upstream's own id traceable."""
    return "msg_" + completion_id.removeprefix("chatcmpl-")


def usage_object(usage: Usage | None, estimate: int = 0) -> Json:
    """Anthropic's usage for the hub's; cached prompt tokens are cache reads."""
    if usage is None:
        return {"input_tokens": estimate, "output_tokens": 0}
    details = getattr(usage, "prompt_tokens_details", None)
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) and 0 < cached <= usage.prompt_tokens else 0
    out: Json = {
        "input_tokens": usage.prompt_tokens - cached,
        "output_tokens": usage.completion_tokens,
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def _tool_input(arguments: str) -> Any:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def to_message(completion: ChatCompletion, model: str) -> Json:
    """The Message for a hub completion (its first choice)."""
    content: list[Json] = []
    finish: str | None = "stop"
    if completion.choices:
        choice = completion.choices[0]
        finish = choice.finish_reason
        message = choice.message
        if message.reasoning_content:
            content.append(
                {"type": "thinking", "thinking": message.reasoning_content, "signature": ""}
            )
        if message.content:
            content.append({"type": "text", "text": message.content})
        for call in message.tool_calls or ():
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.function.name,
                    "input": _tool_input(call.function.arguments),
                }
            )
    return {
        "id": message_id(completion.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": None,
        "usage": usage_object(completion.usage),
    }


class MessagesStreamWriter:
    """Hub chunks in, Anthropic's stream out, in its order of events.

    `message_start` (with the input estimate: the real count comes at the
    end from most upstreams), `ping`, then per content block
    `content_block_start`, deltas (`thinking_delta`, `text_delta`,
    `input_json_delta`) and `content_block_stop`; at the end `message_delta`
    with the stop reason and the upstream's real usage, and `message_stop`.
    """

    def __init__(self, model: str, input_estimate: int) -> None:
        self.model = model
        self.input_estimate = input_estimate
        self.started = False
        self.index = -1
        self.block: str | None = None  # the open block: "text", "thinking" or "tool"
        self.tools: dict[int, int] = {}  # hub tool call index -> block index
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.output_chars = 0

    def _start(self, chunk_id: str) -> list[bytes]:
        self.started = True
        message: Json = {
            "id": message_id(chunk_id or new_id()),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 1},
        }
        return [
            event("message_start", {"type": "message_start", "message": message}),
            event("ping", {"type": "ping"}),
        ]

    def _open(self, kind: str, block: Json) -> list[bytes]:
        out = self._close()
        self.index += 1
        self.block = kind
        out.append(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )
        return out

    def _close(self) -> list[bytes]:
        if self.block is None:
            return []
        out: list[bytes] = []
        if self.block == "thinking":
            # Another vendor's reasoning carries no Anthropic signature.
            out.append(self._delta({"type": "signature_delta", "signature": ""}))
        self.block = None
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": self.index}))
        return out

    def _delta(self, delta: Json) -> bytes:
        return event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def feed(self, batch: list[ChatCompletionChunk]) -> bytes:
        out: list[bytes] = []
        for chunk in batch:
            if not self.started:
                out += self._start(chunk.id)
            if chunk.usage is not None:
                self.usage = chunk.usage
            for choice in chunk.choices[:1] if chunk.choices else ():
                if choice.index != 0:
                    continue
                delta = choice.delta
                if delta.reasoning_content:
                    if self.block != "thinking":
                        out += self._open(
                            "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                        )
                    out.append(
                        self._delta({"type": "thinking_delta", "thinking": delta.reasoning_content})
                    )
                if delta.content:
                    self.output_chars += len(delta.content)
                    if self.block != "text":
                        out += self._open("text", {"type": "text", "text": ""})
                    out.append(self._delta({"type": "text_delta", "text": delta.content}))
                for call in delta.tool_calls or ():
                    if call.index not in self.tools:
                        function = call.function
                        out += self._open(
                            "tool",
                            {
                                "type": "tool_use",
                                "id": call.id or f"toolu_{new_id('')[1:]}",
                                "name": (function.name if function else None) or "",
                                "input": {},
                            },
                        )
                        self.tools[call.index] = self.index
                    elif self.tools[call.index] != self.index:
                        continue  # a late fragment of a call already closed
                    fragment = call.function.arguments if call.function else None
                    if fragment:
                        out.append(
                            self._delta({"type": "input_json_delta", "partial_json": fragment})
                        )
                if choice.finish_reason:
                    self.finish_reason = choice.finish_reason
        return b"".join(out)

    def finish(self) -> bytes:
        out: list[bytes] = [] if self.started else self._start("")
        out += self._close()
        usage = usage_object(self.usage, self.input_estimate)
        if self.usage is None:
            usage["output_tokens"] = (self.output_chars + 3) // 4
        out.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop_reason(self.finish_reason),
                        "stop_sequence": None,
                    },
                    "usage": usage,
                },
            )
        )
        out.append(event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, exc: AxioneError) -> bytes:
        return error_event(exc)
