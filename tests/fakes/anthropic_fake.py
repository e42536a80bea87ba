"""A strict fake of Anthropic's Messages API: the documented wire format, and its rejections.

Mount it with `httpx.ASGITransport(app=fake)` (or `httpx2.ASGITransport` for the
official SDK). It serves `POST /v1/messages` and `POST /v1/messages/count_tokens`
(any query string, e.g. the SDK's `?beta=true`). It validates requests as the
real API does, answering 400 `invalid_request_error` (401 `authentication_error`
for a bad key) with Anthropic's error body, and answers valid ones
deterministically:

- with custom tools offered and `tool_choice` not `none`, it calls the forced
  tool, or the first `tool_calls_per_turn` tools (of those named in `tool_names`
  when set, none for `[]`; with `tool_input` as their input when set), unless the last user turn
  carries tool results and the choice is `auto` (then it answers with those results);
- otherwise it echoes the last user turn's text;
- `system` turns inside `messages` (the `mid-conversation-system-2026-04-07` beta,
  as Claude Code sends them) are accepted only with that beta in `anthropic-beta`,
  right after a user turn and as text; they are not turns: roles alternate, tool
  calls pair up and answers are made around them;
- `stop_sequences` and `max_tokens` cut the echo (`stop_sequence`, `max_tokens`);
- with `thinking` on (`enabled`, `adaptive`), the answer starts with a `thinking`
  block whose `signature` is an HMAC of its text under the instance's
  `signing_key` (and, with `redacted_thinking = True`, a `redacted_thinking`
  block); thinking blocks sent back in assistant turns must verify, and each
  one that does bumps `verified_signatures`.

`count_tokens` answers `{"input_tokens": N}`, N being what a message answer for
the same prompt reports as `usage.input_tokens`.

Knobs on the instance make it fail: `fail_next(...)`, `cut_stream_after`,
`stream_error_after`, `refuse`, `reject_betas`. Every received body is kept in
`requests` (`count_requests` for count_tokens).

It takes the key as `x-api-key` (API version 2023-06-01) or as
`Authorization: Bearer` (what the official 2.x SDK sends), like the real API.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import json
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["FAKE_API_KEY", "MID_CONVERSATION_SYSTEM_BETA", "Failure", "FakeAnthropic"]

FAKE_API_KEY = "sk-ant-api03-fake-0123456789abcdef"

Json = dict[str, Any]

_TOP_LEVEL = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
        "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
        "container", "mcp_servers", "output_config", "output_format", "context_management",
        "cache_control", "inference_geo", "speed", "diagnostics", "user_profile_id",
        "workspace_id",
    }
)  # fmt: skip
# count_tokens takes the prompt, not the sampling: `max_tokens`, `stream`... are extra inputs.
_COUNT_TOP_LEVEL = frozenset(
    {
        "model", "messages", "system", "tools", "tool_choice", "thinking", "cache_control",
        "output_config", "output_format", "context_management", "mcp_servers", "speed",
        "user_profile_id", "workspace_id",
    }
)  # fmt: skip
_BLOCK_KEYS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "tool_use": {"type", "id", "name", "input", "cache_control", "caller", "toolset_name"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control", "toolset_name"},
    "document": {"type", "source", "title", "context", "citations", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
_ROLE_BLOCKS = {
    "user": {"text", "image", "tool_result", "document"},
    "assistant": {"text", "tool_use", "thinking", "redacted_thinking"},
}
_TOOL_RESULT_BLOCKS = ("text", "image", "document")
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_PIECE = re.compile(r"\S+\s*|\s+")
_DOCS = "Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude"

_CUSTOM_TOOL_KEYS = frozenset(
    {
        "type", "name", "description", "input_schema", "cache_control", "input_examples",
        "defer_loading", "strict", "eager_input_streaming", "allowed_callers",
    }
)  # fmt: skip
_SERVER_TOOL_KEYS = frozenset(
    {"type", "name", "cache_control", "defer_loading", "strict", "allowed_callers"}
)
_WEB_SEARCH = frozenset({"max_uses", "allowed_domains", "blocked_domains", "user_location"})
_WEB_FETCH = frozenset(
    {"max_uses", "allowed_domains", "blocked_domains", "citations", "max_content_tokens",
     "url_sources"}
)  # fmt: skip
# Server (Anthropic-defined) tools: type -> (the name it must have, its own extra keys).
_SERVER_TOOLS: dict[str, tuple[str, frozenset[str]]] = {
    "bash_20241022": ("bash", frozenset()),
    "bash_20250124": ("bash", frozenset({"input_examples"})),
    "code_execution_20250522": ("code_execution", frozenset()),
    "code_execution_20250825": ("code_execution", frozenset()),
    "computer_20250124": (
        "computer", frozenset({"display_width_px", "display_height_px", "display_number"})
    ),
    "memory_20250818": ("memory", frozenset({"input_examples"})),
    "text_editor_20250124": ("str_replace_editor", frozenset({"input_examples"})),
    "text_editor_20250429": ("str_replace_based_edit_tool", frozenset({"input_examples"})),
    "text_editor_20250728": (
        "str_replace_based_edit_tool", frozenset({"input_examples", "max_characters"})
    ),
    "web_search_20250305": ("web_search", _WEB_SEARCH),
    "web_search_20260209": ("web_search", _WEB_SEARCH),
    "web_search_20260318": ("web_search", _WEB_SEARCH | {"response_inclusion"}),
    "web_fetch_20250910": ("web_fetch", _WEB_FETCH),
    "web_fetch_20260209": ("web_fetch", _WEB_FETCH),
    "web_fetch_20260309": ("web_fetch", _WEB_FETCH | {"use_cache"}),
    "web_fetch_20260318": ("web_fetch", _WEB_FETCH | {"use_cache", "response_inclusion"}),
    "tool_search_tool_regex_20251119": ("tool_search_tool_regex", frozenset()),
    "tool_search_tool_bm25_20251119": ("tool_search_tool_bm25", frozenset()),
}  # fmt: skip
_THINKING_ON = ("enabled", "adaptive", "between_tools")
MID_CONVERSATION_SYSTEM_BETA = "mid-conversation-system-2026-04-07"
_FIRST_THINKING = (
    "When `thinking` is enabled, a final `assistant` message must start with a thinking "
    "block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We "
    "recommend you include thinking blocks from previous turns. To avoid this requirement, "
    f"disable `thinking`. {_DOCS}/extended-thinking"
)


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


@dataclass
class _Check:
    """What validating one request needs from the fake (its key), and what it found."""

    key: bytes
    verified: int = 0
    # The `mid-conversation-system-2026-04-07` beta: `system` turns inside `messages`.
    system_turns: bool = False
    # cache_control ttls met, per part of the prompt (cached in the order tools, system, messages).
    cache_ttls: dict[str, list[str]] = field(
        default_factory=lambda: {"tools": [], "system": [], "messages": []}
    )


def _mac(key: bytes, domain: bytes, payload: bytes) -> bytes:
    return hmac.new(key, domain + b"\0" + payload, hashlib.sha256).digest()


def _sign(key: bytes, thinking: str) -> str:
    return base64.b64encode(_mac(key, b"thinking", thinking.encode())).decode()


def _signature_ok(key: bytes, thinking: str, signature: str) -> bool:
    return hmac.compare_digest(_sign(key, thinking), signature)


def _redact(key: bytes, thinking: str) -> str:
    payload = hashlib.sha256(b"redacted\0" + thinking.encode()).digest()[:24]
    return base64.b64encode(payload + _mac(key, b"redacted", payload)).decode()


def _redacted_ok(key: bytes, data: str) -> bool:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    payload, mac = raw[:-32], raw[-32:]
    return bool(payload) and hmac.compare_digest(_mac(key, b"redacted", payload), mac)


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_cache(obj: Json, where: str, check: _Check) -> None:
    """`cache_control` on a block or tool: `{"type": "ephemeral", "ttl"?: "5m" | "1h"}`."""
    cache = obj.get("cache_control")
    if cache is None:
        return
    at = f"{where}.cache_control" if where else "cache_control"
    if not isinstance(cache, dict):
        raise _Reject(f"{at}: Input should be a valid dictionary")
    if cache.get("type") != "ephemeral":
        raise _Reject(
            f"{at}: Input tag '{cache.get('type')}' found using 'type' does not match any of "
            "the expected tags: 'ephemeral'"
        )
    _extra(cache, {"type", "ttl"}, f"{at}.ephemeral.")
    ttl = cache.get("ttl", "5m")
    if ttl not in ("5m", "1h"):
        raise _Reject(f"{at}.ephemeral.ttl: Input should be '5m' or '1h'")
    part = where.split(".", 1)[0]
    if part in check.cache_ttls:
        check.cache_ttls[part].append(ttl)


def _check_cache_count(check: _Check) -> None:
    ttls = check.cache_ttls["tools"] + check.cache_ttls["system"] + check.cache_ttls["messages"]
    if len(ttls) > 4:
        raise _Reject(
            f"A maximum of 4 blocks with cache_control may be provided. Found {len(ttls)}."
        )
    if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
        raise _Reject(
            "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control "
            "block. Note that blocks are processed in the following order: `tools`, "
            "`system`, `messages`."
        )


def _check_text(block: Json, where: str) -> None:
    if not isinstance(block.get("text"), str):
        raise _Reject(f"{where}.text: Field required")
    if not block["text"].strip():
        raise _Reject("messages: text content blocks must contain non-whitespace text")


def _check_url(source: Json, where: str) -> None:
    _extra(source, {"type", "url"}, f"{where}.source.")
    url = source.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise _Reject(f"{where}.source.url.url: Input should be a valid URL")


def _b64(data: Any, at: str) -> bytes:
    try:
        return base64.b64decode(data if isinstance(data, str) else "", validate=True)
    except (binascii.Error, ValueError):
        raise _Reject(f"{at}: invalid base64 data") from None


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
        raw = _b64(source.get("data"), f"{where}.source.base64.data")
        if not raw:
            raise _Reject(f"{where}.source.base64.data: image cannot be empty")
        if _magic(raw) != source["media_type"]:
            raise _Reject(
                f"{where}.source.base64.data: Image does not match the provided media type "
                f"{source['media_type']}"
            )
    elif kind == "url":
        _check_url(source, where)
    else:
        raise _Reject(
            f"{where}.source: Input tag '{kind}' found using 'type' does not match any of "
            "the expected tags: 'base64', 'url', 'file'"
        )


def _check_document(block: Json, where: str) -> None:
    """A `document` block: a PDF (base64 or URL), plain text, or inline content."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise _Reject(f"{where}.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        _extra(source, {"type", "media_type", "data"}, f"{where}.source.")
        if source.get("media_type") != "application/pdf":
            raise _Reject(f"{where}.source.base64.media_type: Input should be 'application/pdf'")
        raw = _b64(source.get("data"), f"{where}.source.base64.data")
        if not raw.startswith(b"%PDF"):
            raise _Reject(f"{where}.source.base64.data: The PDF specified was not valid.")
    elif kind == "text":
        _extra(source, {"type", "media_type", "data"}, f"{where}.source.")
        if source.get("media_type") != "text/plain":
            raise _Reject(f"{where}.source.text.media_type: Input should be 'text/plain'")
        if not isinstance(source.get("data"), str):
            raise _Reject(f"{where}.source.text.data: Input should be a valid string")
    elif kind == "url":
        _check_url(source, where)
    elif kind == "content":
        _extra(source, {"type", "content"}, f"{where}.source.")
        inner = source.get("content")
        if isinstance(inner, list):
            for k, part in enumerate(inner):
                at = f"{where}.source.content.{k}"
                if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
                    raise _Reject(f"{at}: Input tag does not match any of the expected tags")
                _extra(part, _BLOCK_KEYS[part["type"]], f"{at}.")
                (_check_text if part["type"] == "text" else _check_image)(part, at)
        elif not isinstance(inner, str):
            raise _Reject(f"{where}.source.content.content: Input should be a valid string or list")
    else:
        raise _Reject(
            f"{where}.source: Input tag '{kind}' found using 'type' does not match any of "
            "the expected tags: 'base64', 'content', 'text', 'url'"
        )
    for name in ("title", "context"):
        if block.get(name) is not None and not isinstance(block[name], str):
            raise _Reject(f"{where}.{name}: Input should be a valid string")
    citations = block.get("citations")
    if citations is not None:
        if not isinstance(citations, dict):
            raise _Reject(f"{where}.citations: Input should be a valid dictionary")
        _extra(citations, {"enabled"}, f"{where}.citations.")
        if "enabled" in citations and not isinstance(citations["enabled"], bool):
            raise _Reject(f"{where}.citations.enabled: Input should be a valid boolean")


def _check_thinking_block(block: Json, where: str, check: _Check) -> None:
    """A thinking block sent back must be one the fake signed, unchanged."""
    if block["type"] == "thinking":
        if not isinstance(block.get("thinking"), str):
            raise _Reject(f"{where}.thinking: Field required")
        if not isinstance(block.get("signature"), str):
            raise _Reject(f"{where}.signature: Field required")
        if not _signature_ok(check.key, block["thinking"], block["signature"]):
            raise _Reject(f"{where}: Invalid `signature` in `thinking` block")
    else:
        if not isinstance(block.get("data"), str):
            raise _Reject(f"{where}.data: Field required")
        if not _redacted_ok(check.key, block["data"]):
            raise _Reject(f"{where}: Invalid `data` in `redacted_thinking` block")
    check.verified += 1


def _check_tool_result(block: Json, where: str, check: _Check) -> None:
    if not isinstance(block.get("tool_use_id"), str):
        raise _Reject(f"{where}.tool_use_id: Field required")
    if "is_error" in block and not isinstance(block["is_error"], bool):
        raise _Reject(f"{where}.is_error: Input should be a valid boolean")
    inner = block.get("content")
    if isinstance(inner, list):
        for k, part in enumerate(inner):
            at = f"{where}.content.{k}"
            if not isinstance(part, dict) or part.get("type") not in _TOOL_RESULT_BLOCKS:
                raise _Reject(f"{at}: Input tag does not match any of the expected tags")
            _extra(part, _BLOCK_KEYS[part["type"]], f"{at}.")
            _check_cache(part, at, check)
            if part["type"] == "text":
                _check_text(part, at)
            elif part["type"] == "image":
                _check_image(part, at)
            else:
                _check_document(part, at)
    elif inner is not None and not isinstance(inner, str):
        raise _Reject(f"{where}.content: Input should be a valid string or list")


def _blocks_of(message: Json, i: int, check: _Check) -> list[Json]:
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
        _check_cache(block, where, check)
        if kind == "text":
            _check_text(block, where)
        elif kind == "image":
            _check_image(block, where)
        elif kind == "document":
            _check_document(block, where)
        elif kind in ("thinking", "redacted_thinking"):
            _check_thinking_block(block, where, check)
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not _TOOL_ID.match(block["id"]):
                raise _Reject(f"{where}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
            if not isinstance(block.get("name"), str) or not block["name"]:
                raise _Reject(f"{where}.name: Field required")
            if not isinstance(block.get("input"), dict):
                raise _Reject(f"{where}.input: Input should be a valid dictionary")
        elif kind == "tool_result":
            _check_tool_result(block, where, check)
    return content


def _validate(body: Any, check: _Check, *, count: bool = False) -> None:
    """Raise `_Reject` for what the real Messages API (or count_tokens, with `count`) rejects."""
    if not isinstance(body, dict):
        raise _Reject("There was an error parsing the body of your request.")
    _extra(body, _COUNT_TOP_LEVEL if count else _TOP_LEVEL, "")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _Reject("model: Field required")
    if not count:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _Reject("max_tokens: Field required")
        if not _is_int(max_tokens) or max_tokens < 1:
            raise _Reject("max_tokens: Input should be greater than or equal to 1")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 1):
            raise _Reject(f"{name}: range: 0..1")
    if "top_k" in body and (not isinstance(body["top_k"], int) or body["top_k"] < 0):
        raise _Reject("top_k: Input should be greater than or equal to 0")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _Reject("stream: Input should be a valid boolean")
    _validate_system(body.get("system"), check)
    _validate_extras(body, check)
    tool_names = _validate_tools(body, check)
    thinking = _validate_thinking(body, count=count)
    blocks, indices = _validate_messages(body.get("messages"), check, has_tools=bool(tool_names))
    _check_cache_count(check)
    if thinking:
        _require_leading_thinking(blocks, indices)


def _validate_system(system: Any, check: _Check) -> None:
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
        _check_cache(block, f"system.{j}", check)


def _validate_extras(body: Json, check: _Check) -> None:
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
    if "service_tier" in body and body["service_tier"] not in ("auto", "standard_only"):
        raise _Reject("service_tier: Input should be 'auto' or 'standard_only'")
    if body.get("speed") is not None and body["speed"] not in ("standard", "fast"):
        raise _Reject("speed: Input should be 'standard' or 'fast'")
    _check_cache(body, "", check)


def _validate_tool(tool: Json, where: str, check: _Check) -> None:
    kind = tool.get("type")
    if kind in _SERVER_TOOLS:
        name, own = _SERVER_TOOLS[kind]
        _extra(tool, _SERVER_TOOL_KEYS | own, f"{where}.{kind}.")
        if tool.get("name") != name:
            raise _Reject(f"{where}.{kind}.name: Input should be '{name}'")
        max_uses = tool.get("max_uses")
        if max_uses is not None and (not _is_int(max_uses) or max_uses < 1):
            raise _Reject(f"{where}.{kind}.max_uses: Input should be greater than 0")
    elif kind in (None, "custom"):
        _extra(tool, _CUSTOM_TOOL_KEYS, f"{where}.")
        name = tool.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _Reject(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _Reject(f"{where}.input_schema: Field required")
        if schema.get("type") != "object":
            raise _Reject(f"{where}.input_schema.type: Input should be 'object'")
        if "description" in tool and not isinstance(tool["description"], str):
            raise _Reject(f"{where}.description: Input should be a valid string")
        for flag in ("strict", "defer_loading", "eager_input_streaming"):
            value = tool.get(flag)
            if value is not None and not isinstance(value, bool):
                raise _Reject(f"{where}.{flag}: Input should be a valid boolean")
        examples = tool.get("input_examples")
        if examples is not None and (
            not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples)
        ):
            raise _Reject(f"{where}.input_examples: Input should be a valid list of dictionaries")
    else:
        expected = ", ".join(f"'{t}'" for t in ("custom", *_SERVER_TOOLS))
        raise _Reject(
            f"{where}: Input tag '{kind}' found using 'type' does not match any of the "
            f"expected tags: {expected}"
        )
    _check_cache(tool, where, check)


def _validate_tools(body: Json, check: _Check) -> set[str]:
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            raise _Reject("tools: Input should be a valid list")
        for j, tool in enumerate(tools):
            where = f"tools.{j}"
            if not isinstance(tool, dict):
                raise _Reject(f"{where}: Input should be a valid dictionary")
            _validate_tool(tool, where, check)
            if tool["name"] in names:
                raise _Reject(f"tools: Tool names must be unique. Duplicate: {tool['name']}")
            names.add(tool["name"])
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


def _validate_thinking(body: Json, *, count: bool) -> bool:
    """Check `thinking` and what it rules out; tell whether thinking is on."""
    thinking = body.get("thinking")
    if thinking is None:
        return False
    if not isinstance(thinking, dict):
        raise _Reject("thinking: Input should be a valid dictionary")
    kind = thinking.get("type")
    if kind == "disabled":
        _extra(thinking, {"type"}, "thinking.disabled.")
        return False
    if kind == "enabled":
        _extra(thinking, {"type", "budget_tokens", "display"}, "thinking.enabled.")
        budget = thinking.get("budget_tokens")
        if budget is None:
            raise _Reject("thinking.enabled.budget_tokens: Field required")
        if not _is_int(budget):
            raise _Reject("thinking.enabled.budget_tokens: Input should be a valid integer")
        if budget < 1024:
            raise _Reject(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if not count and body["max_tokens"] <= budget:
            raise _Reject(
                "`max_tokens` must be greater than `thinking.budget_tokens`. "
                f"{_DOCS}/extended-thinking#max-tokens-and-context-window-size"
            )
    elif kind == "adaptive":
        _extra(thinking, {"type", "display"}, "thinking.adaptive.")
    elif kind == "between_tools":
        _extra(thinking, {"type"}, "thinking.between_tools.")
    else:
        raise _Reject(
            f"thinking: Input tag '{kind}' found using 'type' does not match any of the "
            "expected tags: 'adaptive', 'between_tools', 'disabled', 'enabled'"
        )
    if thinking.get("display") not in (None, "summarized", "omitted"):
        raise _Reject(f"thinking.{kind}.display: Input should be 'summarized' or 'omitted'")
    compat = f"{_DOCS}/extended-thinking#feature-compatibility"
    if body.get("temperature") not in (None, 1):
        raise _Reject(f"`temperature` may only be set to 1 when thinking is enabled. {compat}")
    if body.get("top_p") is not None and body["top_p"] < 0.95:
        raise _Reject(
            "`top_p` must be greater than or equal to 0.95 or unset when thinking is "
            f"enabled. {compat}"
        )
    if body.get("top_k") is not None:
        raise _Reject(f"`top_k` must be unset when thinking is enabled. {compat}")
    choice = body.get("tool_choice") or {}
    if choice.get("type") in ("any", "tool"):
        raise _Reject("Thinking may not be enabled when tool_choice forces tool use.")
    return True


def _require_leading_thinking(blocks_per_message: list[list[Json]], indices: list[int]) -> None:
    """With thinking on, the assistant turn answered by tool results must open with thinking."""
    if len(blocks_per_message) < 3 or len(blocks_per_message) % 2 == 0:
        return  # roles alternate from `user`: an even count ends on an assistant turn
    assistant, results = blocks_per_message[-2], blocks_per_message[-1]
    i = indices[-2]
    if not any(b["type"] == "tool_result" for b in results):
        return
    if not any(b["type"] == "tool_use" for b in assistant):
        return
    first = assistant[0]["type"]
    if first not in ("thinking", "redacted_thinking"):
        raise _Reject(
            f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but "
            f"found `{first}`. {_FIRST_THINKING}"
        )


def _check_system_turn(messages: list[Any], i: int, check: _Check) -> None:
    """A `system` turn inside `messages`: only with the beta, right after a user turn, text."""
    if not check.system_turns:
        raise _Reject(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    if i == 0:
        raise _Reject('messages: first message must use the "user" role')
    if messages[i - 1].get("role") != "user":
        raise _Reject(f"messages.{i}: a system message must immediately follow a user message")
    content = messages[i].get("content")
    if isinstance(content, str):
        if not content.strip():
            raise _Reject("messages: text content blocks must contain non-whitespace text")
        return
    if not isinstance(content, list) or not content:
        raise _Reject(f"messages.{i}.content: Input should be a valid string or non-empty list")
    for j, block in enumerate(content):
        where = f"messages.{i}.content.{j}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _Reject(f"{where}: Input tag does not match the expected tag 'text'")
        _extra(block, _BLOCK_KEYS["text"], f"{where}.")
        _check_cache(block, where, check)
        _check_text(block, where)


def _validate_messages(
    messages: Any, check: _Check, *, has_tools: bool
) -> tuple[list[list[Json]], list[int]]:
    """Check every message; the conversation turns' blocks and places (system turns left out)."""
    if not isinstance(messages, list):
        raise _Reject("messages: Field required")
    if not messages:
        raise _Reject("messages: at least one message is required")
    blocks_per_message: list[list[Json]] = []
    indices: list[int] = []
    previous_role: str | None = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Reject(f"messages.{i}: Input should be a valid dictionary")
        _extra(message, {"role", "content"}, f"messages.{i}.")
        if message.get("role") == "system":
            _check_system_turn(messages, i, check)
            continue
        if message.get("role") not in ("user", "assistant"):
            raise _Reject(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and message["role"] != "user":
            raise _Reject('messages: first message must use the "user" role')
        if previous_role == message["role"]:
            raise _Reject(
                'messages: roles must alternate between "user" and "assistant", but found '
                f'multiple "{message["role"]}" roles in a row'
            )
        previous_role = message["role"]
        blocks = _blocks_of(message, i, check)
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
        indices.append(i)
    _validate_tool_pairing(indices, blocks_per_message, has_tools=has_tools)
    return blocks_per_message, indices


def _validate_tool_pairing(
    indices: list[int], blocks_per_message: list[list[Json]], *, has_tools: bool
) -> None:
    """Calls and results pair up across adjacent turns; `indices` are their places in `messages`."""
    uses_tools = False
    for k, blocks in enumerate(blocks_per_message):
        i = indices[k]
        results = [b for b in blocks if b["type"] == "tool_result"]
        uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
        uses_tools = uses_tools or bool(results or uses)
        if results:
            kinds = [b["type"] == "tool_result" for b in blocks]
            if kinds != sorted(kinds, reverse=True):
                raise _Reject(
                    f"messages.{i}: tool_result blocks must come before any other content"
                )
            previous = blocks_per_message[k - 1] if k > 0 else []
            called = {b["id"] for b in previous if b["type"] == "tool_use"}
            for j, block in enumerate(blocks):
                if block["type"] == "tool_result" and block["tool_use_id"] not in called:
                    raise _Reject(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous message."
                    )
        if uses:
            following = blocks_per_message[k + 1] if k + 1 < len(blocks_per_message) else []
            answered = {b["tool_use_id"] for b in following if b["type"] == "tool_result"}
            missing = [u for u in uses if u not in answered]
            if missing:
                after = indices[k + 1] if k + 1 < len(indices) else i + 1
                raise _Reject(
                    f"messages.{after}: `tool_use` ids were found without `tool_result` blocks "
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


def _is_custom(tool: Json) -> bool:
    return tool.get("type") in (None, "custom")


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


def _input_tokens(body: Json) -> int:
    """The prompt's token count, the same for a message answer and for count_tokens."""
    return len(json.dumps([body.get("system"), body["messages"], body.get("tools") or []])) // 4 + 1


def _betas(request: Request) -> list[str]:
    values = request.headers.getlist("anthropic-beta")
    return [b.strip() for value in values for b in value.split(",") if b.strip()]


class FakeAnthropic:
    """The fake as an ASGI app with knobs; see the module docstring."""

    def __init__(
        self,
        *,
        api_key: str = FAKE_API_KEY,
        cache_creation_input_tokens: int = 0,
        cache_read_input_tokens: int = 0,
        signing_key: bytes | None = None,
    ) -> None:
        self.api_key = api_key
        self.cache_creation_input_tokens = cache_creation_input_tokens
        self.cache_read_input_tokens = cache_read_input_tokens
        self.requests: list[Any] = []
        self.request_headers: list[dict[str, str]] = []
        # count_tokens calls, kept apart from the Messages calls above.
        self.count_requests: list[Any] = []
        self.count_request_headers: list[dict[str, str]] = []
        self.failures: list[Failure] = []
        # Streams: stop after this many events (no message_stop), or send an error event.
        self.cut_stream_after: int | None = None
        self.stream_error_after: int | None = None
        self.stream_error_type = "overloaded_error"
        self.tool_input: Json | None = None
        self.tool_calls_per_turn = 1
        # Call the offered tools of these names (in this order) instead of the first ones;
        # `[]` calls none: a text answer whatever the tools.
        self.tool_names: list[str] | None = None
        self.refuse = False
        # Newer API versions repeat the input counts in message_delta's usage.
        self.delta_usage_repeats_input = False
        # Thinking: signatures are HMACs under this key, which only the fake holds.
        self.signing_key = signing_key if signing_key is not None else secrets.token_bytes(32)
        self.redacted_thinking = False  # add a redacted_thinking block to thinking answers
        self.verified_signatures = 0  # thinking/redacted_thinking blocks verified on replay
        # `anthropic-beta` values answered with 400, as the API does for unknown ones.
        self.reject_betas: set[str] = set()
        self.answers: list[Json] = []
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @property
    def last_request(self) -> Any:
        """The last body received, decoded."""
        return self.requests[-1]

    def fail_next(
        self, status: int, etype: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next request (to either route) with this error instead."""
        self.failures.append(Failure(status, etype, message, headers))

    def sign(self, thinking: str) -> str:
        """The signature the fake gives (and expects back on) this thinking text."""
        return _sign(self.signing_key, thinking)

    def redacted_data(self, seed: str) -> str:
        """An opaque `redacted_thinking` payload that this fake accepts back."""
        return _redact(self.signing_key, seed)

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

    async def _admit(
        self, request: Request, bodies: list[Any], headers: list[dict[str, str]], *, count: bool
    ) -> Json | Response:
        """Record the request, then the body if valid, or the error answer."""
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        bodies.append(body)
        headers.append(dict(request.headers))
        # The 2.x SDK authenticates with a bearer token, which the API also takes.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key not in (request.headers.get("x-api-key"), bearer):
            return self._error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        unknown = [b for b in _betas(request) if b in self.reject_betas]
        if unknown:
            return self._error(
                400,
                "invalid_request_error",
                f"Unexpected value(s) `{', '.join(unknown)}` for the `anthropic-beta` header. "
                "Please consult our documentation at docs.claude.com or try again without "
                "the header.",
            )
        if self.failures:
            failure = self.failures.pop(0)
            return self._error(failure.status, failure.etype, failure.message, failure.headers)
        check = _Check(
            self.signing_key, system_turns=MID_CONVERSATION_SYSTEM_BETA in _betas(request)
        )
        try:
            _validate(body, check, count=count)
        except _Reject as exc:
            return self._error(exc.status, exc.etype, exc.message)
        self.verified_signatures += check.verified
        return body  # type: ignore[no-any-return]

    async def _messages(self, request: Request) -> Response:
        body = await self._admit(request, self.requests, self.request_headers, count=False)
        if isinstance(body, Response):
            return body
        message = self._answer(body)
        self.answers.append(message)
        if body.get("stream"):
            return StreamingResponse(
                self._events(message), media_type="text/event-stream; charset=utf-8"
            )
        return JSONResponse(message, headers={"request-id": self._next_id("req")})

    async def _count_tokens(self, request: Request) -> Response:
        body = await self._admit(
            request, self.count_requests, self.count_request_headers, count=True
        )
        if isinstance(body, Response):
            return body
        return JSONResponse(
            {"input_tokens": _input_tokens(body)}, headers={"request-id": self._next_id("req")}
        )

    # -- answers -------------------------------------------------------------
    def _answer(self, body: Json) -> Json:
        # System turns (a beta) steer the model; the turn answered is the last user/assistant one.
        messages = [m for m in body["messages"] if m["role"] != "system"]
        last = messages[-1]
        last_blocks = [] if isinstance(last["content"], str) else last["content"]
        has_results = any(b["type"] == "tool_result" for b in last_blocks)
        tools = [t for t in body.get("tools") or [] if _is_custom(t)]
        choice = body.get("tool_choice") or {"type": "auto"}
        thinking = self._thinking(body) if last["role"] == "user" else []
        used = sum(len(_PIECE.findall(b.get("thinking", ""))) for b in thinking)
        content: list[Json] = []
        stop_sequence = None
        calls = (
            self._tool_calls(tools, choice)
            if not self.refuse
            and last["role"] == "user"
            and tools
            and choice["type"] != "none"
            and (choice["type"] != "auto" or not has_results)
            else []
        )
        if self.refuse:
            content, stop_reason = [{"type": "text", "text": "I can't help with that."}], "refusal"
        elif calls:
            content, stop_reason = calls, "tool_use"
        else:
            if last["role"] == "assistant":
                text = "and that is all."
            elif has_results:
                text = "Tool said: " + _text_of(last["content"])
            else:
                text = _text_of(last["content"]) or (
                    "I see the document."
                    if any(b["type"] == "document" for b in last_blocks)
                    else "I see the image."
                )
            text, stop_reason, stop_sequence = self._cut(text, body, used)
            if text:
                content = [{"type": "text", "text": text}]
        content = thinking + content
        output = sum(len(_PIECE.findall(b.get("text", b.get("thinking", ""))))
                     + 10 * (b["type"] in ("tool_use", "redacted_thinking"))
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
                "input_tokens": _input_tokens(body),
                "cache_creation_input_tokens": self.cache_creation_input_tokens,
                "cache_read_input_tokens": self.cache_read_input_tokens,
                "output_tokens": max(output, 1),
            },
        }

    def _thinking(self, body: Json) -> list[Json]:
        """The thinking blocks that open the answer when thinking is on."""
        config = body.get("thinking") or {}
        if config.get("type") not in _THINKING_ON:
            return []
        turns = [m for m in body["messages"] if m["role"] != "system"]
        seed = _text_of(turns[-1]["content"]) or "something without text"
        text = (
            ""
            if config.get("display") == "omitted"
            else f"The user wrote: {seed.strip()}. Let me think about how to answer that. "
            "The best answer is a short, direct one."
        )
        blocks: list[Json] = [{"type": "thinking", "thinking": text, "signature": self.sign(text)}]
        if self.redacted_thinking:
            blocks.append({"type": "redacted_thinking", "data": self.redacted_data(text)})
        return blocks

    def _tool_calls(self, tools: list[Json], choice: Json) -> list[Json]:
        if choice["type"] == "tool":
            chosen = [t for t in tools if t["name"] == choice["name"]]
        else:
            many = 1 if choice.get("disable_parallel_tool_use") else self.tool_calls_per_turn
            pool = (
                tools
                if self.tool_names is None
                else [t for name in self.tool_names for t in tools if t["name"] == name]
            )
            chosen = pool[:many]
        if not chosen:  # a forced server tool: the fake does not run those
            return []
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
    def _cut(text: str, body: Json, used: int = 0) -> tuple[str, str, str | None]:
        """Cut at the first stop sequence, then to what `max_tokens` leaves after `used`."""
        reason, matched = "end_turn", None
        hits = [(text.find(s), s) for s in body.get("stop_sequences") or [] if s in text]
        if hits:
            at, matched = min(hits)
            text, reason = text[:at], "stop_sequence"
        pieces = _PIECE.findall(text)
        room = max(body["max_tokens"] - used, 0)
        if len(pieces) > room:
            text, reason, matched = "".join(pieces[:room]), "max_tokens", None
        return text, reason, matched

    # -- streaming -----------------------------------------------------------
    def _event_list(self, message: Json) -> list[Json]:
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {**usage, "output_tokens": 1}
        events: list[Json] = [{"type": "message_start", "message": start}]

        def delta(index: int, **fields: Any) -> None:
            events.append({"type": "content_block_delta", "index": index, "delta": fields})

        for index, block in enumerate(message["content"]):
            kind = block["type"]
            opening = {
                "text": {"type": "text", "text": ""},
                "thinking": {"type": "thinking", "thinking": "", "signature": ""},
                "tool_use": {**block, "input": {}},
            }.get(kind, block)
            events.append({"type": "content_block_start", "index": index,
                           "content_block": opening})  # fmt: skip
            if index == 0:
                events.append({"type": "ping"})
            if kind == "text":
                for piece in _PIECE.findall(block["text"]):
                    delta(index, type="text_delta", text=piece)
            elif kind == "thinking":
                pieces = _PIECE.findall(block["thinking"])
                for at in range(0, len(pieces), 4):
                    delta(index, type="thinking_delta", thinking="".join(pieces[at : at + 4]))
                delta(index, type="signature_delta", signature=block["signature"])
            elif kind == "tool_use":
                raw = json.dumps(block["input"]) if block["input"] else ""
                # The real API opens with an empty fragment, then sends pieces.
                for at in range(0, max(len(raw), 1), 7):
                    delta(index, type="input_json_delta", partial_json=raw[at : at + 7])
            # redacted_thinking comes whole in content_block_start.
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
