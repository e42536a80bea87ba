"""OpenAI Responses <-> the hub's chat types, without I/O: requests, answers, streams.

For backends that do not serve `/responses` themselves. The choices where
the two APIs differ:

- `instructions` becomes the first system message; `developer` and
  `system` input messages stay system-like messages where they stand.
- `function_call` items join the assistant message before them as
  `tool_calls`; `function_call_output` items become `tool` messages.
- `custom` tools (free-form input, as Codex's `apply_patch`) become
  functions taking one string argument, `input`; their calls come back as
  `custom_tool_call` items with that string.
- `reasoning` items carry state only their issuer can read. The gateway
  writes a backend's own (Anthropic's signed thinking) into
  `encrypted_content`, and gives it back to that backend when a stateless
  client (Codex) returns the item; any other backend drops it, never a 400.
  Reasoning text that comes back becomes a `reasoning` item's summary.
- Built-in tools: `web_search` becomes the backend's own search tool where
  it has one (Anthropic's web search, Gemini's Google Search), and is left
  out and named in `x-axione-ignored-tools` elsewhere, as are tools of types
  this gateway does not know; tools that need
  state the gateway does not hold (`file_search`, `code_interpreter`,
  `computer_use`) are a 400 naming the tool.
- `text.format` becomes `response_format`; `max_output_tokens` the output
  cap; `reasoning.effort` the hub's reasoning, which each provider sends in
  its own form.
"""

from __future__ import annotations

import json
import time
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
    "DIALECT",
    "ResponsesStreamWriter",
    "input_items",
    "response_object",
    "to_chat",
]

Json = dict[str, Any]

DIALECT = "openai-responses"

# The built-in search tool; a backend's own search tool serves it where there is one.
_WEB_SEARCH = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26"})
# Built-in tools that need state the gateway does not hold: refused by name.
_STATEFUL_TOOLS = frozenset(
    {"file_search", "code_interpreter", "computer_use", "computer_use_preview"}
)
_CUSTOM_SCHEMA: Json = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The tool's whole input."}},
    "required": ["input"],
}
# The request fields a response object repeats, with their defaults.
_ECHOED: Json = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
}


def _fail(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def input_items(body: Json) -> list[Json]:
    """The request's `input` as a list of items (a string is one user message)."""
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise _fail("'input' must be a string or a list of items", "input")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _fail("Each input item must be an object", f"input[{i}]")
    return value


def _text_parts(content: Any, where: str, *, images: bool) -> list[Json]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _fail("'content' must be a string or a list of parts", where)
    parts: list[Json] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text"):
            if not isinstance(part.get("text"), str):
                raise _fail("A text part needs 'text'", f"{at}.text")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and images:
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise _fail("Images by 'file_id' are served by native backends only", at)
            image: Json = {"url": url}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and images:
            data = part.get("file_data")
            if not isinstance(data, str) or not data:
                raise _fail(
                    "Files by 'file_id' or 'file_url' are served by native backends only", at
                )
            if not data.startswith("data:"):
                data = f"data:application/pdf;base64,{data}"
            name = part.get("filename") if isinstance(part.get("filename"), str) else "file.pdf"
            parts.append({"type": "file", "file": {"filename": name, "file_data": data}})
        else:
            raise _fail(f"Content parts of type '{kind}' are not supported here", at)
    return parts


def _content(parts: list[Json]) -> str | list[Json]:
    """Plain text where every part is text (what every backend takes), else the parts."""
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(
            p.get("text", "")
            for p in output
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return json.dumps(output, ensure_ascii=False)


class _Conversation:
    """Hub messages built item by item; calls join the assistant message before them."""

    def __init__(self) -> None:
        self.messages: list[Json] = []

    def _assistant(self) -> Json:
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant" or last.get("_closed"):
            last = {"role": "assistant", "content": None}
            self.messages.append(last)
        return last

    def say(self, role: str, content: str | list[Json]) -> None:
        if role == "assistant":
            message = self._assistant()
            text = content if isinstance(content, str) else _output_text(content)
            if message.get("tool_calls"):
                message = {"role": "assistant", "content": None}
                self.messages.append(message)
            message["content"] = (message["content"] or "") + text
        else:
            self.messages.append({"role": role, "content": content})

    def reason(self, state: str) -> None:
        """A reasoning item's opaque state: it opens the assistant turn it belongs to."""
        self.messages.append({"role": "assistant", "content": None, "reasoning_state": state})

    def call(self, call_id: str, name: str, arguments: str) -> None:
        message = self._assistant()
        message.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )

    def result(self, call_id: str, output: str) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": output})


def _messages(items: list[Json], instructions: Any) -> list[Json]:
    talk = _Conversation()
    if isinstance(instructions, str) and instructions:
        talk.say("system", instructions)
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _fail(
                    "A message's role must be user, assistant, system or developer", f"{where}.role"
                )
            parts = _text_parts(item.get("content", ""), f"{where}.content", images=role == "user")
            talk.say(role, _content(parts))
        elif kind in ("function_call", "custom_tool_call"):
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise _fail("A tool call needs 'call_id' and 'name'", where)
            if kind == "function_call":
                arguments = item.get("arguments")
                arguments = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
            else:
                arguments = json.dumps({"input": _output_text(item.get("input", ""))})
            talk.call(call_id, name, arguments)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise _fail("A tool call output needs 'call_id'", f"{where}.call_id")
            talk.result(call_id, _output_text(item.get("output", "")))
        elif kind == "reasoning":
            state = item.get("encrypted_content")
            if isinstance(state, str) and state:
                talk.reason(state)  # the backend that wrote it reads it; others drop it
        # item_reference and others: state the backend cannot use.
    # A reasoning item followed by nothing of its turn carries nothing to send.
    return [
        {k: v for k, v in m.items() if k != "_closed"}
        for m in talk.messages
        if m["role"] != "assistant" or m.get("content") is not None or m.get("tool_calls")
    ]


def wants_web_search(tools: Any) -> bool:
    """Whether the request offers the built-in web search tool, live.

    `external_web_access: false` (Codex's default) asks for no live search,
    which the backends' own search tools cannot promise: then it is left out.
    """
    return isinstance(tools, list) and any(
        isinstance(t, dict)
        and t.get("type") in _WEB_SEARCH
        and t.get("external_web_access") is not False
        for t in tools
    )


def _tools(tools: Any) -> tuple[list[Json], list[str], set[str]]:
    """Hub tools, the names left out, and the names of custom (free-form) tools.

    The web search tool is neither: it becomes the hub's `web_search`.
    """
    if tools is None:
        return [], [], set()
    if not isinstance(tools, list):
        raise _fail("'tools' must be a list", "tools")
    out: list[Json] = []
    ignored: list[str] = []
    custom: set[str] = set()
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _fail("Each tool must be an object", f"tools[{j}]")
        kind = tool.get("type")
        if kind in _STATEFUL_TOOLS:
            raise InvalidRequest(
                f"The built-in tool '{kind}' needs state this gateway does not hold; it is "
                "served by native OpenAI backends only",
                param=f"tools[{j}].type",
                code="unsupported_tool",
            )
        name = tool.get("name")
        if kind in _WEB_SEARCH:
            if tool.get("external_web_access") is False:
                ignored.append("web_search")  # no live search wanted: none to give
            continue
        if kind == "function":
            if not isinstance(name, str) or not name:
                raise _fail("A function tool needs a 'name'", f"tools[{j}].name")
            function: Json = {
                "name": name,
                "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
            }
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            if isinstance(tool.get("strict"), bool):
                function["strict"] = tool["strict"]
            out.append({"type": "function", "function": function})
        elif kind == "custom" and isinstance(name, str) and name:
            custom.add(name)
            given = tool.get("description")
            description: str = given if isinstance(given, str) else ""
            fmt = tool.get("format")
            if isinstance(fmt, dict) and isinstance(fmt.get("definition"), str):
                description += f"\n\nThe input follows this {fmt.get('syntax', '')} grammar:\n"
                description += fmt["definition"]
            out.append(
                {
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": description.strip(),
                        "parameters": _CUSTOM_SCHEMA,
                    },
                }
            )
        else:
            ignored.append(name if isinstance(name, str) and name else str(kind))
    return out, ignored, custom


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") in ("function", "custom")
        and isinstance(choice.get("name"), str)
    ):
        return {"type": "function", "function": {"name": choice["name"]}}
    return "auto"  # allowed_tools and built-in choices: the model decides


def _response_format(text: Any) -> Json | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        spec: Json = {"name": fmt.get("name") or "output", "schema": fmt.get("schema") or {}}
        if isinstance(fmt.get("strict"), bool):
            spec["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": spec}
    return None


def to_chat(
    body: Json, items: list[Json], public_model: str
) -> tuple[ChatCompletionRequest, list[str], set[str]]:
    """The hub request for a Responses body over `items` (history included).

    Also the tools left out, and the custom tools' names (their calls answer
    as `custom_tool_call`).
    """
    messages = _messages(items, body.get("instructions"))
    if not any(m["role"] != "system" for m in messages):
        raise _fail("'input' must hold at least one message", "input")
    tools, ignored, custom = _tools(body.get("tools"))
    chat: Json = {"model": public_model, "messages": messages}
    if wants_web_search(body.get("tools")):
        chat["web_search"] = True
    if tools:
        chat["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            chat["tool_choice"] = choice
        if body.get("parallel_tool_calls") is False:
            chat["parallel_tool_calls"] = False
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    for name, hub in (
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("user", "user"),
        ("stream", "stream"),
    ):
        if body.get(name) is not None:
            chat[hub] = body[name]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") in (
        "minimal",
        "low",
        "medium",
        "high",
    ):
        chat["reasoning"] = {"effort": reasoning["effort"]}
    if body.get("stream"):
        chat["stream_options"] = {"include_usage": True}
    try:
        return ChatCompletionRequest.model_validate(chat), ignored, custom
    except ValidationError as exc:
        raise validation_error(exc) from None


# -- answer: hub -> Responses ---------------------------------------------------
def usage_object(usage: Usage | None) -> Json:
    """Responses' usage for the hub's (cached and reasoning details where reported)."""
    if usage is None:
        usage = Usage()
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    output_details = getattr(usage, "completion_tokens_details", None)
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
    reasoning = output_details.get("reasoning_tokens") if isinstance(output_details, dict) else None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached if isinstance(cached, int) else 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {
            "reasoning_tokens": reasoning if isinstance(reasoning, int) else 0
        },
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _item_id(prefix: str) -> str:
    return f"{prefix}_{new_id('')[1:]}"


def reasoning_item(text: str, item_id: str | None = None, state: str | None = None) -> Json:
    """A reasoning item; `state` (the backend's own, opaque) travels as `encrypted_content`."""
    item: Json = {
        "id": item_id or _item_id("rs"),
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }
    if state:
        item["encrypted_content"] = state
    return item


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> Json:
    return {
        "id": item_id or _item_id("msg"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(
    call_id: str, name: str, arguments: str, custom: set[str], item_id: str | None = None
) -> Json:
    if name in custom:
        try:
            value = json.loads(arguments).get("input", "")
        except (ValueError, AttributeError):
            value = arguments
        return {
            "id": item_id or _item_id("ctc"),
            "type": "custom_tool_call",
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "input": value if isinstance(value, str) else json.dumps(value),
        }
    return {
        "id": item_id or _item_id("fc"),
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def output_of(completion: ChatCompletion, custom: set[str]) -> tuple[list[Json], str | None]:
    """The output items of a hub completion, and its finish reason."""
    if not completion.choices:
        return [], "stop"
    choice = completion.choices[0]
    message = choice.message
    output: list[Json] = []
    if message.reasoning_content or message.reasoning_state:
        output.append(
            reasoning_item(message.reasoning_content or "", None, message.reasoning_state)
        )
    if message.content or not message.tool_calls:
        output.append(message_item(message.content or ""))
    for call in message.tool_calls or ():
        output.append(call_item(call.id, call.function.name, call.function.arguments, custom))
    return output, choice.finish_reason


def response_object(
    body: Json,
    *,
    response_id: str,
    model: str,
    output: list[Json],
    usage: Json | None,
    status: str,
    created_at: int | None = None,
    error: Json | None = None,
) -> Json:
    """A whole `response` object: the answer and the request fields it repeats."""
    echoed = {name: body.get(name, default) for name, default in _ECHOED.items()}
    if echoed["metadata"] is None:
        echoed["metadata"] = {}
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at or int(time.time()),
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "usage": usage,
        **echoed,
    }


def status_of(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


class ResponsesStreamWriter:
    """Hub chunks in, the Responses event sequence out, every event numbered.

    `response.created` and `response.in_progress` open; each output item is
    added, streamed (text deltas, argument deltas, reasoning summary
    deltas) and done in turn; `response.completed` (or `.incomplete`)
    closes with the whole response and its usage. A failure is an `error`
    event then `response.failed`.
    """

    def __init__(
        self, body: Json, response_id: str, model: str, custom: set[str], created_at: int
    ) -> None:
        self.body = body
        self.response_id = response_id
        self.model = model
        self.custom = custom
        self.created_at = created_at
        self.sequence = 0
        self.started = False
        self.output: list[Json] = []
        self.open: Json | None = None  # the item being streamed
        self.text = ""
        self.calls: dict[int, Json] = {}  # hub tool index -> its item
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.final: Json | None = None  # the response as it ended, for the store
        self.state: str | None = None  # the open reasoning item's opaque state

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"

    def _response(self, status: str, usage: Json | None = None, error: Json | None = None) -> Json:
        return response_object(
            self.body,
            response_id=self.response_id,
            model=self.model,
            output=list(self.output),
            usage=usage,
            status=status,
            created_at=self.created_at,
            error=error,
        )

    def _start(self) -> list[bytes]:
        self.started = True
        snapshot = self._response("in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _close(self) -> list[bytes]:
        item = self.open
        if item is None:
            return []
        self.open = None
        index = len(self.output)
        out: list[bytes] = []
        if item["type"] == "message":
            part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
            out.append(
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=self.text,
                    logprobs=[],
                )
            )
            out.append(
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
            item = message_item(self.text, item["id"])
        elif item["type"] == "reasoning":
            part = {"type": "summary_text", "text": self.text}
            out.append(
                self._event(
                    "response.reasoning_summary_text.done",
                    item_id=item["id"],
                    output_index=index,
                    summary_index=0,
                    text=self.text,
                )
            )
            out.append(
                self._event(
                    "response.reasoning_summary_part.done",
                    item_id=item["id"],
                    output_index=index,
                    summary_index=0,
                    part=part,
                )
            )
            item = reasoning_item(self.text, item["id"], self.state)
            self.state = None
        else:
            arguments = item["_arguments"]
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=arguments,
                )
            )
            item = call_item(item["call_id"], item["name"], arguments, self.custom, item["id"])
        self.text = ""
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        self.output.append(item)
        return out

    def _open_id(self) -> str:
        assert self.open is not None
        return str(self.open["id"])

    def _open(self, item: Json) -> list[bytes]:
        out = self._close()
        self.open = item
        index = len(self.output)
        shown = {k: v for k, v in item.items() if not k.startswith("_")}
        out.append(self._event("response.output_item.added", output_index=index, item=shown))
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
        elif item["type"] == "reasoning":
            out.append(
                self._event(
                    "response.reasoning_summary_part.added",
                    item_id=item["id"],
                    output_index=index,
                    summary_index=0,
                    part={"type": "summary_text", "text": ""},
                )
            )
        return out

    def feed(self, batch: list[ChatCompletionChunk]) -> bytes:
        out: list[bytes] = [] if self.started else self._start()
        for chunk in batch:
            if chunk.usage is not None:
                self.usage = chunk.usage
            for choice in chunk.choices:
                if choice.index != 0:
                    continue
                delta = choice.delta
                if delta.reasoning_state:
                    if self.open is None or self.open["type"] != "reasoning":
                        out += self._open(
                            {"id": _item_id("rs"), "type": "reasoning", "summary": []}
                        )
                    self.state = delta.reasoning_state
                if delta.reasoning_content:
                    if self.open is None or self.open["type"] != "reasoning":
                        out += self._open(
                            {"id": _item_id("rs"), "type": "reasoning", "summary": []}
                        )
                    self.text += delta.reasoning_content
                    out.append(
                        self._event(
                            "response.reasoning_summary_text.delta",
                            item_id=self._open_id(),
                            output_index=len(self.output),
                            summary_index=0,
                            delta=delta.reasoning_content,
                        )
                    )
                if delta.content:
                    if self.open is None or self.open["type"] != "message":
                        out += self._open(
                            {
                                "id": _item_id("msg"),
                                "type": "message",
                                "status": "in_progress",
                                "role": "assistant",
                                "content": [],
                            }
                        )
                    self.text += delta.content
                    out.append(
                        self._event(
                            "response.output_text.delta",
                            item_id=self._open_id(),
                            output_index=len(self.output),
                            content_index=0,
                            delta=delta.content,
                            logprobs=[],
                        )
                    )
                for call in delta.tool_calls or ():
                    item = self.calls.get(call.index)
                    if item is None:
                        name = (call.function.name if call.function else None) or ""
                        custom = name in self.custom
                        item = {
                            "id": _item_id("ctc" if custom else "fc"),
                            "type": "custom_tool_call" if custom else "function_call",
                            "status": "in_progress",
                            "call_id": call.id or _item_id("call"),
                            "name": name,
                            "_arguments": "",
                        }
                        if custom:
                            item["input"] = ""
                        else:
                            item["arguments"] = ""
                        self.calls[call.index] = item
                        out += self._open(item)
                    elif item is not self.open:
                        continue  # a late fragment of a call already closed
                    fragment = call.function.arguments if call.function else None
                    if fragment:
                        item["_arguments"] += fragment
                        if item["type"] == "function_call":
                            out.append(
                                self._event(
                                    "response.function_call_arguments.delta",
                                    item_id=item["id"],
                                    output_index=len(self.output),
                                    delta=fragment,
                                )
                            )
                if choice.finish_reason:
                    self.finish_reason = choice.finish_reason
        return b"".join(out)

    def finish_response(self) -> Json:
        """The whole response as the stream ends (also what the store keeps)."""
        status = status_of(self.finish_reason)
        self.final = self._response(status, usage_object(self.usage))
        return self.final

    def finish(self) -> bytes:
        out: list[bytes] = [] if self.started else self._start()
        if not self.output and self.open is None:
            out += self._open(
                {
                    "id": _item_id("msg"),
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
            )
        out += self._close()
        response = self.finish_response()
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        out.append(self._event(kind, response=response))
        return b"".join(out)

    def error(self, exc: AxioneError) -> bytes:
        out: list[bytes] = [] if self.started else self._start()
        code = exc.code or "api_error"
        out.append(self._event("error", code=code, message=exc.message, param=exc.param))
        failed = self._response(
            "failed", usage_object(self.usage), error={"code": code, "message": exc.message}
        )
        self.final = failed
        out.append(self._event("response.failed", response=failed))
        return b"".join(out)
