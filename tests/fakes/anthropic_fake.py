"""A strict fake of Anthropic's Messages API: the documented wire format, and its rejections.

Mount it with `httpx.ASGITransport(app=fake)` (or `httpx2.ASGITransport` for the
official SDK). It validates requests as the real API does, answering 400
`invalid_request_error` (401 `authentication_error` for a bad key) with
Anthropic's error body, and answers valid ones deterministically:

- with tools offered and `tool_choice` not `none`, it calls the forced tool, or
  the first `tool_calls_per_turn` tools, unless the last user turn carries tool
  results and the choice is `auto` (then it answers with those results);
- otherwise it echoes the last user turn's text;
- `stop_sequences` and `max_tokens` cut the echo (`stop_sequence`, `max_tokens`).

Knobs on the instance make it fail: `fail_next(...)`, `cut_stream_after`,
`stream_error_after`, `refuse`. Every received body is kept in `requests`.

It takes the key as `x-api-key` (API version 2023-06-01) or as
`Authorization: Bearer` (what the official 2.x SDK sends), like the real API.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["FAKE_API_KEY", "Failure", "FakeAnthropic"]

FAKE_API_KEY = "sk-ant-api03-fake-0123456789abcdef"

Json = dict[str, Any]

_TOP_LEVEL = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
        "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
        "container", "mcp_servers", "output_config", "context_management", "cache_control",
        "inference_geo", "speed", "diagnostics",
    }
)  # fmt: skip
_BLOCK_KEYS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "document": {"type", "source", "title", "context", "citations", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
_ROLE_BLOCKS = {
    "user": {"text", "image", "tool_result", "document"},
    "assistant": {"text", "tool_use", "thinking", "redacted_thinking"},
}
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_PIECE = re.compile(r"\S+\s*|\s+")


class _Reject(Exception):
    def __init__(self, message: str, status: int = 400, etype: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.etype = message, status, etype


@dataclass
class Failure:
    """One injected error answer."""

    status: int
    etype: str
    message: str
    headers: dict[str, str] | None = None


def _magic(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _extra(obj: Json, allowed: set[str] | frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _Reject(f"{where}{key}: Extra inputs are not permitted")


def _check_text(block: Json, where: str) -> None:
    if not isinstance(block.get("text"), str):
        raise _Reject(f"{where}.text: Field required")
    if not block["text"].strip():
        raise _Reject("messages: text content blocks must contain non-whitespace text")


def _check_image(block: Json, where: str) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _Reject(f"{where}.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        _extra(source, {"type", "media_type", "data"}, f"{where}.source.")
        if source.get("media_type") not in _MEDIA_TYPES:
            raise _Reject(
                f"{where}.source.base64.media_type: Input should be "
                "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
            )
        data = source.get("data")
        try:
            raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
        except (binascii.Error, ValueError):
            raise _Reject(f"{where}.source.base64.data: invalid base64 data") from None
        if not raw:
            raise _Reject(f"{where}.source.base64.data: image cannot be empty")
        if _magic(raw) != source["media_type"]:
            raise _Reject(
                f"{where}.source.base64.data: Image does not match the provided media type "
                f"{source['media_type']}"
            )
    elif kind == "url":
        _extra(source, {"type", "url"}, f"{where}.source.")
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _Reject(f"{where}.source.url.url: Input should be a valid URL")
    else:
        raise _Reject(
            f"{where}.source: Input tag '{kind}' found using 'type' does not match any of "
            "the expected tags: 'base64', 'url', 'file'"
        )


def _blocks_of(message: Json, i: int) -> list[Json]:
    """The message's content as blocks, validated one by one."""
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        if not content:
            return []
        block = {"type": "text", "text": content}
        _check_text(block, f"messages.{i}.content")
        return [block]
    if not isinstance(content, list):
        raise _Reject(f"messages.{i}.content: Input should be a valid list")
    for j, block in enumerate(content):
        where = f"messages.{i}.content.{j}"
        if not isinstance(block, dict) or block.get("type") not in _BLOCK_KEYS:
            raise _Reject(f"{where}: Input tag does not match any of the expected tags")
        kind = block["type"]
        if kind not in _ROLE_BLOCKS[role]:
            raise _Reject(f"{where}: blocks of type '{kind}' are not allowed in {role} messages")
        _extra(block, _BLOCK_KEYS[kind], f"{where}.")
        if kind == "text":
            _check_text(block, where)
        elif kind == "image":
            _check_image(block, where)
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not _TOOL_ID.match(block["id"]):
                raise _Reject(f"{where}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
            if not isinstance(block.get("name"), str) or not block["name"]:
                raise _Reject(f"{where}.name: Field required")
            if not isinstance(block.get("input"), dict):
                raise _Reject(f"{where}.input: Input should be a valid dictionary")
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise _Reject(f"{where}.tool_use_id: Field required")
            inner = block.get("content")
            if isinstance(inner, list):
                for k, part in enumerate(inner):
                    at = f"{where}.content.{k}"
                    if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
                        raise _Reject(f"{at}: Input tag does not match any of the expected tags")
                    _extra(part, _BLOCK_KEYS[part["type"]], f"{at}.")
                    if part["type"] == "text":
                        _check_text(part, at)
                    else:
                        _check_image(part, at)
            elif inner is not None and not isinstance(inner, str):
                raise _Reject(f"{where}.content: Input should be a valid string or list")
    return content


def _validate(body: Any) -> None:
    """Raise `_Reject` for what the real Messages API rejects."""
    if not isinstance(body, dict):
        raise _Reject("There was an error parsing the body of your request.")
    _extra(body, _TOP_LEVEL, "")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _Reject("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _Reject("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _Reject("max_tokens: Input should be greater than or equal to 1")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 1):
            raise _Reject(f"{name}: range: 0..1")
    if "top_k" in body and (not isinstance(body["top_k"], int) or body["top_k"] < 0):
        raise _Reject("top_k: Input should be greater than or equal to 0")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _Reject("stream: Input should be a valid boolean")
    _validate_system(body.get("system"))
    _validate_extras(body)
    tool_names = _validate_tools(body)
    _validate_messages(body.get("messages"), has_tools=bool(tool_names))


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _Reject("system: Input should be a valid string or list")
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _Reject(f"system.{j}: Input tag does not match the expected tag 'text'")
        _extra(block, _BLOCK_KEYS["text"], f"system.{j}.")
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise _Reject(f"system.{j}.text: text content blocks must be non-empty")


def _validate_extras(body: Json) -> None:
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _Reject("metadata: Input should be a valid dictionary")
        _extra(metadata, {"user_id"}, "metadata.")
        user = metadata.get("user_id")
        if user is not None and (not isinstance(user, str) or len(user) > 256):
            raise _Reject("metadata.user_id: String should have at most 256 characters")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _Reject("stop_sequences: Input should be a valid list of strings")
        if any(not s.strip() for s in stops):
            raise _Reject("stop_sequences: each stop sequence must contain non-whitespace")


def _validate_tools(body: Json) -> set[str]:
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            raise _Reject("tools: Input should be a valid list")
        for j, tool in enumerate(tools):
            where = f"tools.{j}"
            if not isinstance(tool, dict):
                raise _Reject(f"{where}: Input should be a valid dictionary")
            _extra(
                tool, {"name", "description", "input_schema", "cache_control", "type"}, f"{where}."
            )
            name = tool.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise _Reject(
                    f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )
            if name in names:
                raise _Reject(f"tools: Tool names must be unique. Duplicate: {name}")
            names.add(name)
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise _Reject(f"{where}.input_schema: Field required")
            if schema.get("type") != "object":
                raise _Reject(f"{where}.input_schema.type: Input should be 'object'")
            if "description" in tool and not isinstance(tool["description"], str):
                raise _Reject(f"{where}.description: Input should be a valid string")
    choice = body.get("tool_choice")
    if choice is not None:
        if not names:
            raise _Reject("tool_choice: tool_choice may only be specified while providing tools")
        if not isinstance(choice, dict) or choice.get("type") not in (
            "auto",
            "any",
            "tool",
            "none",
        ):
            raise _Reject("tool_choice: Input tag does not match 'auto', 'any', 'tool', 'none'")
        allowed = {"type"} if choice["type"] == "none" else {"type", "disable_parallel_tool_use"}
        if choice["type"] == "tool":
            allowed.add("name")
            if choice.get("name") not in names:
                raise _Reject(f"tool_choice.name: tool '{choice.get('name')}' not found in tools")
        _extra(choice, allowed, "tool_choice.")
    return names


def _validate_messages(messages: Any, *, has_tools: bool) -> None:
    if not isinstance(messages, list):
        raise _Reject("messages: Field required")
    if not messages:
        raise _Reject("messages: at least one message is required")
    blocks_per_message: list[list[Json]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Reject(f"messages.{i}: Input should be a valid dictionary")
        _extra(message, {"role", "content"}, f"messages.{i}.")
        if message.get("role") not in ("user", "assistant"):
            raise _Reject(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and message["role"] != "user":
            raise _Reject('messages: first message must use the "user" role')
        if i > 0 and messages[i - 1].get("role") == message["role"]:
            raise _Reject(
                'messages: roles must alternate between "user" and "assistant", but found '
                f'multiple "{message["role"]}" roles in a row'
            )
        blocks = _blocks_of(message, i)
        final_assistant = i == len(messages) - 1 and message["role"] == "assistant"
        if not blocks and not final_assistant:
            raise _Reject(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        last = blocks[-1] if blocks else {}
        if final_assistant and last.get("type") == "text" and last["text"] != last["text"].rstrip():
            raise _Reject("messages: final assistant content cannot end with trailing whitespace")
        blocks_per_message.append(blocks)
    _validate_tool_pairing(messages, blocks_per_message, has_tools=has_tools)


def _validate_tool_pairing(
    messages: list[Json], blocks_per_message: list[list[Json]], *, has_tools: bool
) -> None:
    uses_tools = False
    for i, blocks in enumerate(blocks_per_message):
        results = [b for b in blocks if b["type"] == "tool_result"]
        uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
        uses_tools = uses_tools or bool(results or uses)
        if results:
            kinds = [b["type"] == "tool_result" for b in blocks]
            if kinds != sorted(kinds, reverse=True):
                raise _Reject(
                    f"messages.{i}: tool_result blocks must come before any other content"
                )
            previous = blocks_per_message[i - 1] if i > 0 else []
            called = {b["id"] for b in previous if b["type"] == "tool_use"}
            for j, block in enumerate(blocks):
                if block["type"] == "tool_result" and block["tool_use_id"] not in called:
                    raise _Reject(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous message."
                    )
        if uses:
            following = blocks_per_message[i + 1] if i + 1 < len(messages) else []
            answered = {b["tool_use_id"] for b in following if b["type"] == "tool_result"}
            missing = [u for u in uses if u not in answered]
            if missing:
                raise _Reject(
                    f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message."
                )
    if uses_tools and not has_tools:
        raise _Reject(
            "Requests which include `tool_use` or `tool_result` blocks must define tools."
        )


def _example_input(schema: Json) -> Json:
    """An input for a tool call that fits simple schemas."""
    values = {"string": "example", "integer": 1, "number": 1.5, "boolean": True, "array": []}
    result: Json = {}
    for name, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        if isinstance(prop.get("enum"), list) and prop["enum"]:
            result[name] = prop["enum"][0]
        else:
            result[name] = values.get(prop.get("type"), {})
    return result


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(_text_of(block.get("content")))
    return " ".join(p for p in parts if p)


class FakeAnthropic:
    """The fake as an ASGI app with knobs; see the module docstring."""

    def __init__(
        self,
        *,
        api_key: str = FAKE_API_KEY,
        cache_creation_input_tokens: int = 0,
        cache_read_input_tokens: int = 0,
    ) -> None:
        self.api_key = api_key
        self.cache_creation_input_tokens = cache_creation_input_tokens
        self.cache_read_input_tokens = cache_read_input_tokens
        self.requests: list[Any] = []
        self.request_headers: list[dict[str, str]] = []
        self.failures: list[Failure] = []
        # Streams: stop after this many events (no message_stop), or send an error event.
        self.cut_stream_after: int | None = None
        self.stream_error_after: int | None = None
        self.stream_error_type = "overloaded_error"
        self.tool_input: Json | None = None
        self.tool_calls_per_turn = 1
        self.refuse = False
        # Newer API versions repeat the input counts in message_delta's usage.
        self.delta_usage_repeats_input = False
        self.answers: list[Json] = []
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @property
    def last_request(self) -> Any:
        """The last body received, decoded."""
        return self.requests[-1]

    def fail_next(
        self, status: int, etype: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next request with this error instead."""
        self.failures.append(Failure(status, etype, message, headers))

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}_01fake{next(self._ids):08d}"

    def _error(
        self, status: int, etype: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        body = {
            "type": "error",
            "error": {"type": etype, "message": message},
            "request_id": self._next_id("req"),
        }
        return JSONResponse(body, status_code=status, headers=headers)

    async def _messages(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(body)
        self.request_headers.append(dict(request.headers))
        # The 2.x SDK authenticates with a bearer token, which the API also takes.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key not in (request.headers.get("x-api-key"), bearer):
            return self._error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        if self.failures:
            failure = self.failures.pop(0)
            return self._error(failure.status, failure.etype, failure.message, failure.headers)
        try:
            _validate(body)
        except _Reject as exc:
            return self._error(exc.status, exc.etype, exc.message)
        message = self._answer(body)
        self.answers.append(message)
        if body.get("stream"):
            return StreamingResponse(
                self._events(message), media_type="text/event-stream; charset=utf-8"
            )
        return JSONResponse(message, headers={"request-id": self._next_id("req")})

    # -- answers -------------------------------------------------------------
    def _answer(self, body: Json) -> Json:
        messages = body["messages"]
        last = messages[-1]
        last_blocks = [] if isinstance(last["content"], str) else last["content"]
        has_results = any(b["type"] == "tool_result" for b in last_blocks)
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {"type": "auto"}
        content: list[Json] = []
        stop_sequence = None
        if self.refuse:
            content, stop_reason = [{"type": "text", "text": "I can't help with that."}], "refusal"
        elif (
            last["role"] == "user"
            and tools
            and choice["type"] != "none"
            and (choice["type"] != "auto" or not has_results)
        ):
            content, stop_reason = self._tool_calls(tools, choice), "tool_use"
        else:
            if last["role"] == "assistant":
                text = "and that is all."
            elif has_results:
                text = "Tool said: " + _text_of(last["content"])
            else:
                text = _text_of(last["content"]) or "I see the image."
            text, stop_reason, stop_sequence = self._cut(text, body)
            if text:
                content = [{"type": "text", "text": text}]
        prompt = json.dumps([body.get("system"), messages, tools])
        output = sum(len(_PIECE.findall(b.get("text", ""))) + 10 * (b["type"] == "tool_use")
                     for b in content)  # fmt: skip
        return {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": len(prompt) // 4 + 1,
                "cache_creation_input_tokens": self.cache_creation_input_tokens,
                "cache_read_input_tokens": self.cache_read_input_tokens,
                "output_tokens": max(output, 1),
            },
        }

    def _tool_calls(self, tools: list[Json], choice: Json) -> list[Json]:
        if choice["type"] == "tool":
            chosen = [t for t in tools if t["name"] == choice["name"]]
        else:
            many = 1 if choice.get("disable_parallel_tool_use") else self.tool_calls_per_turn
            chosen = tools[:many]
        blocks: list[Json] = [
            {"type": "text", "text": "Let me use " + ", ".join(t["name"] for t in chosen) + "."}
        ]
        for tool in chosen:
            args = (
                self.tool_input
                if self.tool_input is not None
                else _example_input(tool["input_schema"])
            )
            blocks.append(
                {
                    "type": "tool_use",
                    "id": self._next_id("toolu"),
                    "name": tool["name"],
                    "input": args,
                }
            )
        return blocks

    @staticmethod
    def _cut(text: str, body: Json) -> tuple[str, str, str | None]:
        reason, matched = "end_turn", None
        hits = [(text.find(s), s) for s in body.get("stop_sequences") or [] if s in text]
        if hits:
            at, matched = min(hits)
            text, reason = text[:at], "stop_sequence"
        pieces = _PIECE.findall(text)
        if len(pieces) > body["max_tokens"]:
            text, reason, matched = "".join(pieces[: body["max_tokens"]]), "max_tokens", None
        return text, reason, matched

    # -- streaming -----------------------------------------------------------
    def _event_list(self, message: Json) -> list[Json]:
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {**usage, "output_tokens": 1}
        events: list[Json] = [{"type": "message_start", "message": start}]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                events.append(
                    {"type": "content_block_start", "index": index,
                     "content_block": {"type": "text", "text": ""}}
                )  # fmt: skip
                if index == 0:
                    events.append({"type": "ping"})
                for piece in _PIECE.findall(block["text"]):
                    events.append(
                        {"type": "content_block_delta", "index": index,
                         "delta": {"type": "text_delta", "text": piece}}
                    )  # fmt: skip
            else:
                events.append(
                    {"type": "content_block_start", "index": index,
                     "content_block": {**block, "input": {}}}
                )  # fmt: skip
                raw = json.dumps(block["input"]) if block["input"] else ""
                # The real API opens with an empty fragment, then sends pieces.
                for at in range(0, max(len(raw), 1), 7):
                    events.append(
                        {"type": "content_block_delta", "index": index,
                         "delta": {"type": "input_json_delta", "partial_json": raw[at : at + 7]}}
                    )  # fmt: skip
            events.append({"type": "content_block_stop", "index": index})
        events.append(
            {"type": "message_delta",
             "delta": {"stop_reason": message["stop_reason"],
                       "stop_sequence": message["stop_sequence"]},
             "usage": usage if self.delta_usage_repeats_input
                      else {"output_tokens": usage["output_tokens"]}}
        )  # fmt: skip
        events.append({"type": "message_stop"})
        return events

    async def _events(self, message: Json) -> AsyncIterator[bytes]:
        for n, event in enumerate(self._event_list(message)):
            if self.cut_stream_after is not None and n >= self.cut_stream_after:
                return
            if self.stream_error_after is not None and n >= self.stream_error_after:
                error = {
                    "type": "error",
                    "error": {"type": self.stream_error_type, "message": "Overloaded"},
                }
                yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
                return
            yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
