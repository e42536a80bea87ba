"""A strict fake of OpenAI's Responses API: its wire format, its state, and its rejections.

Mount it with `httpx.ASGITransport(app=fake)` (`httpx2.ASGITransport` for the
official SDK). Under `base_path` (default `/v1`) it serves:

- `POST /responses`: validated like the real API (unknown parameters, item and
  content shapes, tools, `tool_choice`, `text.format`, ranges and enums; as Codex
  sends them, `namespace` tools grouping function/custom tools and a
  `client_metadata` map of strings), with OpenAI's error envelope
  `{"error": {"message", "type", "param", "code"}}`;
- `GET /responses/{id}` (`?stream=true` replays the events), `DELETE
  /responses/{id}`, `GET /responses/{id}/input_items` (`limit`, `order`, `after`).

Valid requests get deterministic answers:

- with `function`/`custom` tools offered, `tool_choice` not `none` and a user
  message last (or a `required`/forced choice), it calls the forced tool, or the
  first `parallel_calls` tools (one when `parallel_tool_calls` is false; of those
  named in `tool_names` when set, none for `[]`), with arguments
  `{"input": <last user text>}` (a custom tool gets the text as `input`), or
  `tool_arguments` when set (the arguments string, or a custom tool's input);
- after `function_call_output`/`custom_tool_call_output` items it answers
  `The tool answered: <output>` (outputs joined by `; `);
- otherwise it echoes the last user text; with a `json_schema` format it answers
  JSON built from the schema (strings are the user text), with `json_object`
  `{"input": <text>}`;
- a reasoning model (`o1`, `o3`, `o4-mini`, `gpt-5*` but not `gpt-5-chat*`) given
  `reasoning` (effort not `none`) starts with a `reasoning` item: a summary
  `Thinking about it.` when `reasoning.summary` is set, and `encrypted_content`
  (an HMAC under `signing_key`) when `include` has `reasoning.encrypted_content`.
  Sent back, that content must verify (else 400 `invalid_encrypted_content`);
  a reasoning item without it must be a stored one (else 404), and must be
  followed by the item it came with. Non-reasoning models refuse `reasoning.effort`
  and `reasoning.summary`; reasoning models refuse `temperature` and `top_p`;
- `max_output_tokens` (counting the 3 reasoning tokens) cuts the text by words:
  status `incomplete`, `incomplete_details: {"reason": "max_output_tokens"}`.

Usage counts words: `input_tokens` over the whole context (the previous
responses' input and output, the conversation, the input, `instructions`),
`output_tokens` over the output (reasoning included), `cached_tokens` from the knob.

State: with `store` (default true) responses are kept in `responses`; a
`previous_response_id` prepends that response's context (its chain, input and
output). Tool calls pair up across the context: every `function_call_output`
needs an earlier `function_call` with its `call_id`, every `function_call` needs
an output. `conversation` takes an id from `create_conversation()`.

Knobs: `fail_next(status, message, type, code)`, `parallel_calls`, `tool_names`,
`tool_arguments`, `stream_error_after` (an `error` event then `response.failed`
after N events), `cut_stream_after` (the stream ends after N events),
`cached_tokens`. Received
bodies are in `requests` (with `request_headers`), answers in `answers`,
verified encrypted contents counted in `verified_reasoning`.
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
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["FAKE_RESPONSES_KEY", "Failure", "FakeOpenAIResponses"]

FAKE_RESPONSES_KEY = "sk-proj-fake-responses-0123456789abcdef"

Json = dict[str, Any]

CREATED = 1_700_000_000
THOUGHT = "Thinking about it."
_PIECE = re.compile(r"\S+\s*|\s+")
_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5(?!-chat))")

_TOP_LEVEL = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
        "max_output_tokens", "max_tool_calls", "temperature", "top_p", "top_logprobs", "text",
        "reasoning", "include", "store", "stream", "stream_options", "metadata", "user",
        "previous_response_id", "truncation", "prompt_cache_key", "prompt_cache_retention",
        "safety_identifier", "service_tier", "background", "conversation", "prompt",
        "context_management", "client_metadata",
    }
)  # fmt: skip
_SCALARS = {
    "instructions": "string", "user": "string", "previous_response_id": "string",
    "prompt_cache_key": "string", "safety_identifier": "string", "truncation": "string",
    "service_tier": "string", "prompt_cache_retention": "string", "store": "boolean",
    "stream": "boolean", "background": "boolean", "parallel_tool_calls": "boolean",
    "max_output_tokens": "integer", "max_tool_calls": "integer", "top_logprobs": "integer",
    "temperature": "number", "top_p": "number", "metadata": "object", "reasoning": "object",
    "text": "object", "stream_options": "object", "prompt": "object", "include": "array",
    "tools": "array", "context_management": "array", "client_metadata": "object",
}  # fmt: skip
_ENUMS = {
    "truncation": ("auto", "disabled"),
    "service_tier": ("auto", "default", "flex", "scale", "priority"),
    "prompt_cache_retention": ("in_memory", "24h"),
}
INCLUDABLE = (
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
)
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
_SUMMARIES = ("auto", "concise", "detailed")

_ITEM_TYPES = (
    "message", "function_call", "function_call_output", "reasoning", "custom_tool_call",
    "custom_tool_call_output", "item_reference",
)  # fmt: skip
_ITEM_KEYS = {
    "message": {"type", "role", "content", "id", "status", "phase"},
    "function_call": {"type", "call_id", "name", "arguments", "id", "status", "namespace",
                      "caller"},
    "function_call_output": {"type", "call_id", "output", "id", "status", "caller"},
    "reasoning": {"type", "id", "summary", "encrypted_content", "content", "status"},
    "custom_tool_call": {"type", "call_id", "name", "input", "id", "status", "namespace",
                         "caller"},
    "custom_tool_call_output": {"type", "call_id", "output", "id", "status", "caller"},
    "item_reference": {"type", "id"},
}  # fmt: skip
# The id prefix each item type's `id` must have, as the API checks.
_ID_PREFIX = {"function_call": "fc", "custom_tool_call": "ctc", "reasoning": "rs"}
_ROLES = ("user", "assistant", "system", "developer")
_INPUT_PARTS = ("input_text", "input_image", "input_file")
_OUTPUT_PARTS = ("output_text", "refusal")
_PART_KEYS = {
    "input_text": {"type", "text", "prompt_cache_breakpoint"},
    "input_image": {"type", "image_url", "file_id", "detail", "prompt_cache_breakpoint"},
    "input_file": {"type", "file_data", "file_id", "file_url", "filename", "detail",
                   "prompt_cache_breakpoint"},
    "output_text": {"type", "text", "annotations", "logprobs"},
    "refusal": {"type", "refusal"},
}  # fmt: skip
_DETAILS = ("low", "high", "auto", "original")
_IMAGE_MIME = ("image/png", "image/jpeg", "image/gif", "image/webp")

_FUNCTION_KEYS = {
    "type", "name", "description", "parameters", "strict", "defer_loading", "allowed_callers",
    "output_schema",
}  # fmt: skip
_CUSTOM_KEYS = {"type", "name", "description", "format", "defer_loading", "allowed_callers"}
# Built-in tools, accepted by shape: type -> required keys. The fake never runs them.
_BUILTIN_TOOLS: dict[str, tuple[str, ...]] = {
    "web_search": (),
    "web_search_2025_08_26": (),
    "web_search_preview": (),
    "web_search_preview_2025_03_11": (),
    "file_search": ("vector_store_ids",),
    "code_interpreter": ("container",),
    "computer_use_preview": ("display_width", "display_height", "environment"),
    "image_generation": (),
    "local_shell": (),
    "mcp": ("server_label",),
}
_CHOICE_BUILTINS = (
    "file_search", "web_search_preview", "web_search_preview_2025_03_11", "computer_use_preview",
    "image_generation", "code_interpreter", "web_search",
)  # fmt: skip

_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
_DEFAULT_FAILURES: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model", "invalid_request_error", None),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error",
          "model_not_found"),
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: (_SERVER_ERROR, "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}  # fmt: skip


class _Invalid(Exception):
    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


@dataclass
class Failure:
    """One injected error answer."""

    status: int
    message: str
    type: str
    code: str | None
    headers: dict[str, str] | None = None


@dataclass
class StoredResponse:
    """A kept response: the object, its own input items, and its whole context."""

    response: Json
    input_items: list[Json]
    context: list[Json]


@dataclass
class _Turn:
    """A validated request and what answering it needs."""

    body: Json
    input_items: list[Json]
    context: list[Json]
    tools: list[Json]
    tool_choice: Any
    text: Json
    include: set[str]
    reasoning_model: bool
    effort: str | None
    summary: str | None
    conversation: str | None = None
    verified: int = 0


# -- checks ------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unknown value"


_ARTICLE = {
    "string": "a string", "boolean": "a boolean", "integer": "an integer",
    "number": "a decimal", "object": "an object", "array": "an array",
}  # fmt: skip


def _is(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    return isinstance(value, list)


def _check_type(value: Any, kind: str, where: str) -> None:
    if not _is(value, kind):
        raise _Invalid(
            f"Invalid type for '{where}': expected {_ARTICLE[kind]}, but got {_kind(value)} "
            "instead.",
            where,
            "invalid_type",
        )


def _listing(values: tuple[str, ...] | list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _check_enum(value: Any, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise _Invalid(
            f"Invalid value: '{value}'. Supported values are: {_listing(allowed)}.",
            where,
            "invalid_value",
        )


def _missing(where: str) -> _Invalid:
    return _Invalid(f"Missing required parameter: '{where}'.", where, "missing_required_parameter")


def _check_keys(obj: Json, allowed: set[str] | frozenset[str], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else key
            raise _Invalid(f"Unknown parameter: '{where}'.", where, "unknown_parameter")


def _require(obj: Json, key: str, kind: str, prefix: str) -> Any:
    where = f"{prefix}.{key}"
    if obj.get(key) is None:
        raise _missing(where)
    _check_type(obj[key], kind, where)
    return obj[key]


def _check_name(name: Any, where: str) -> None:
    _check_type(name, "string", where)
    if len(name) > 64:
        raise _Invalid(
            f"Invalid '{where}': string too long. Expected a string with maximum length 64, "
            f"but got a string with length {len(name)} instead.",
            where,
            "string_above_max_length",
        )
    if not _NAME.match(name):
        raise _Invalid(
            f"Invalid '{where}': string does not match pattern. Expected a string that matches "
            "the pattern '^[a-zA-Z0-9_-]+$'.",
            where,
            "invalid_value",
        )


def _check_range(
    value: Any,
    where: str,
    low: float | None = None,
    high: float | None = None,
    noun: str = "integer",
) -> None:
    if low is not None and value < low:
        raise _Invalid(
            f"Invalid '{where}': {noun} below minimum value. Expected a value >= {low:g}, "
            f"but got {value} instead.",
            where,
            f"{noun}_below_min_value",
        )
    if high is not None and value > high:
        raise _Invalid(
            f"Invalid '{where}': {noun} above maximum value. Expected a value <= {high:g}, "
            f"but got {value} instead.",
            where,
            f"{noun}_above_max_value",
        )


def _strict_schema_error(schema: Any, context: tuple[str, ...] = ()) -> str | None:
    """What the API's strict mode says of a JSON schema, or None when it complies."""
    if not isinstance(schema, dict):
        return None
    kinds = schema.get("type")
    is_object = kinds == "object" or (isinstance(kinds, list) and "object" in kinds)
    if is_object or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return (
                f"In context={context!r}, 'additionalProperties' is required to be supplied "
                "and to be false."
            )
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        absent = [k for k in properties if k not in required]
        if absent:
            return (
                f"In context={context!r}, 'required' is required to be supplied and to be an "
                f"array including every key in properties. Missing '{absent[0]}'."
            )
        for key, sub in properties.items():
            found = _strict_schema_error(sub, (*context, "properties", key))
            if found:
                return found
    subs: list[tuple[tuple[str, ...], Any]] = []
    if "items" in schema:
        subs.append(((*context, "items"), schema["items"]))
    for key in ("anyOf", "allOf", "oneOf"):
        for n, sub in enumerate(schema.get(key) or []):
            subs.append(((*context, key, str(n)), sub))
    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            subs.append(((*context, key, name), sub))
    for where, sub in subs:
        found = _strict_schema_error(sub, where)
        if found:
            return found
    return None


def _example(schema: Any, root: Json, text: str, depth: int = 0) -> Any:
    """A value that satisfies `schema`: strings are `text`, numbers their minimum or 1."""
    if not isinstance(schema, dict) or depth > 12:
        return text
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        target: Any = root
        for part in [p for p in ref[1:].split("/") if p]:
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _example(target, root, text, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [
            o
            for o in schema.get(key) or []
            if not (isinstance(o, dict) and o.get("type") == "null")
        ]
        if options:
            return _example(options[0], root, text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {
            key: _example(sub, root, text, depth + 1)
            for key, sub in (schema.get("properties") or {}).items()
        }
    if kind == "array":
        return [
            _example(schema.get("items", {}), root, text, depth + 1)
            for _ in range(max(schema.get("minItems", 1), 1))
        ]
    if kind in ("integer", "number"):
        value = schema.get("minimum", 1)
        if "maximum" in schema:
            value = min(value, schema["maximum"])
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if schema.get("format") == "date-time":
        return "2024-01-01T00:00:00Z"
    if schema.get("format") == "date":
        return "2024-01-01"
    return text[: schema["maxLength"]] if "maxLength" in schema else text


def _words(text: str) -> int:
    return len(text.split())


def _parts_text(content: Any, kinds: tuple[str, ...] = ("input_text", "output_text")) -> str:
    if isinstance(content, str):
        return content
    out = []
    for part in content or []:
        if part.get("type") in kinds:
            out.append(part.get("text", ""))
        elif part.get("type") == "refusal" and "refusal" in kinds:
            out.append(part.get("refusal", ""))
    return "".join(out)


def _item_text(item: Json) -> str:
    kind = item["type"]
    if kind == "message":
        return _parts_text(item["content"], ("input_text", "output_text", "refusal"))
    if kind == "function_call":
        return str(item["arguments"])
    if kind == "custom_tool_call":
        return str(item["input"])
    if kind in ("function_call_output", "custom_tool_call_output"):
        return _parts_text(item["output"], ("input_text",))
    if kind == "reasoning":
        return " ".join(s.get("text", "") for s in item.get("summary") or [])
    return ""


def _obfuscation(delta: str) -> str:
    return hashlib.sha256(delta.encode()).hexdigest()[: 16 - len(delta) % 16]


class FakeOpenAIResponses:
    """The fake as an ASGI app with knobs; see the module docstring."""

    def __init__(
        self,
        *,
        api_key: str = FAKE_RESPONSES_KEY,
        base_path: str = "/v1",
        parallel_calls: int = 1,
        cached_tokens: int = 0,
        signing_key: bytes | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_path = base_path.rstrip("/")
        # How many offered tools a non-forced call uses at once (1 when parallel_tool_calls
        # is false).
        self.parallel_calls = parallel_calls
        # Call the offered tools of these names (in this order) instead of the first ones;
        # `[]` calls none: a text answer whatever the tools.
        self.tool_names: list[str] | None = None
        # A function call's `arguments` (a JSON string) or a custom call's `input`, instead
        # of the last user text.
        self.tool_arguments: str | None = None
        # Reported as input_tokens_details.cached_tokens (at most input_tokens).
        self.cached_tokens = cached_tokens
        # Streams: end after this many events, or send an error then response.failed.
        self.cut_stream_after: int | None = None
        self.stream_error_after: int | None = None
        self.failures: list[Failure] = []
        self.requests: list[Any] = []  # every POST /responses body (None when not JSON)
        self.request_headers: list[dict[str, str]] = []
        self.answers: list[Json] = []  # every response object made
        self.responses: dict[str, StoredResponse] = {}  # the stored ones, by id
        self.conversations: dict[str, list[Json]] = {}
        # Encrypted reasoning contents are HMACs under this key, which only the fake holds.
        self.signing_key = signing_key if signing_key is not None else secrets.token_bytes(32)
        self.verified_reasoning = 0  # encrypted contents verified on replay
        self._items: dict[str, Json] = {}  # stored items, by id (for item_reference)
        self._needs_reasoning: dict[str, str] = {}  # stored call item id -> its reasoning id
        self._ids = itertools.count(1)
        base = self.base_path
        self.app = Starlette(
            routes=[
                Route(f"{base}/responses", self._create, methods=["POST"]),
                Route(f"{base}/responses/{{response_id}}", self._one, methods=["GET", "DELETE"]),
                Route(
                    f"{base}/responses/{{response_id}}/input_items",
                    self._input_items,
                    methods=["GET"],
                ),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @property
    def last_request(self) -> Any:
        """The last POST /responses body received, decoded."""
        return self.requests[-1]

    def fail_next(
        self,
        status: int,
        message: str | None = None,
        type: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next request (any route) with this error; defaults follow the status."""
        default = _DEFAULT_FAILURES.get(status, (_SERVER_ERROR, "server_error", None))
        self.failures.append(
            Failure(
                status,
                message if message is not None else default[0],
                type if type is not None else default[1],
                code if code is not None else default[2],
                headers,
            )
        )

    def create_conversation(self) -> str:
        """A new, empty conversation's id, for the `conversation` parameter."""
        conversation = self._id("conv")
        self.conversations[conversation] = []
        return conversation

    def encrypt(self, item_id: str) -> str:
        """The `encrypted_content` the fake gives (and accepts back) for reasoning `item_id`."""
        payload = json.dumps({"id": item_id, "v": 1}, separators=(",", ":")).encode()
        mac = hmac.new(self.signing_key, b"reasoning\0" + payload, hashlib.sha256).digest()
        return "gAAAAAB" + base64.urlsafe_b64encode(payload + mac).decode()

    def _decrypts(self, item_id: str, token: str) -> bool:
        if not token.startswith("gAAAAAB"):
            return False
        try:
            raw = base64.urlsafe_b64decode(token[7:].encode())
        except (binascii.Error, ValueError):
            return False
        payload, mac = raw[:-32], raw[-32:]
        good = hmac.new(self.signing_key, b"reasoning\0" + payload, hashlib.sha256).digest()
        if not payload or not hmac.compare_digest(good, mac):
            return False
        try:
            return bool(json.loads(payload).get("id") == item_id)
        except ValueError:
            return False

    def _id(self, prefix: str, size: int = 48) -> str:
        digest = hashlib.sha256(f"{prefix}:{next(self._ids)}".encode()).hexdigest()
        return f"{prefix}_{digest[:size]}"

    # -- HTTP ------------------------------------------------------------------------
    def _error(
        self,
        status: int,
        message: str,
        *,
        etype: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> JSONResponse:
        body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
        sent = {"x-request-id": self._id("req", 32), **(headers or {})}
        return JSONResponse(body, status_code=status, headers=sent)

    def _admit(self, request: Request) -> Response | None:
        """The error answer for a bad key or an injected failure, else None."""
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not bearer:
            return self._error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and password. You can "
                "obtain an API key from https://platform.openai.com/account/api-keys.",
            )
        if bearer != self.api_key:
            masked = bearer[:3] + "*" * max(0, len(bearer) - 7) + bearer[-4:]
            return self._error(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        if self.failures:
            failure = self.failures.pop(0)
            return self._error(
                failure.status,
                failure.message,
                etype=failure.type,
                code=failure.code,
                headers=failure.headers,
            )
        return None

    async def _create(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(body)
        self.request_headers.append({k.lower(): v for k, v in request.headers.items()})
        denied = self._admit(request)
        if denied is not None:
            return denied
        if body is None:
            return self._error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON. If you have trouble figuring "
                "out how to fix this, please contact us through our help center at "
                "help.openai.com.)",
            )
        try:
            turn = self._validate(body)
        except _Invalid as exc:
            return self._error(exc.status, exc.message, param=exc.param, code=exc.code)
        self.verified_reasoning += turn.verified
        response = self._respond(turn)
        self.answers.append(response)
        if body.get("stream"):
            obfuscate = (body.get("stream_options") or {}).get("include_obfuscation", True)
            events = self._event_list(response, obfuscate=obfuscate is not False)
            return StreamingResponse(
                self._sse(events, response),
                media_type="text/event-stream; charset=utf-8",
                headers={"x-request-id": self._id("req", 32)},
            )
        return JSONResponse(response, headers={"x-request-id": self._id("req", 32)})

    def _stored(self, response_id: str) -> StoredResponse:
        stored = self.responses.get(response_id)
        if stored is None:
            raise _Invalid(f"Response with id '{response_id}' not found.", status=404)
        return stored

    async def _one(self, request: Request) -> Response:
        denied = self._admit(request)
        if denied is not None:
            return denied
        response_id = request.path_params["response_id"]
        try:
            stored = self._stored(response_id)
        except _Invalid as exc:
            return self._error(exc.status, exc.message)
        if request.method == "DELETE":
            del self.responses[response_id]
            for item in stored.input_items + stored.response["output"]:
                self._items.pop(item.get("id", ""), None)
            return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})
        if request.query_params.get("stream") == "true":
            events = self._event_list(stored.response, obfuscate=False)
            start = request.query_params.get("starting_after", "-1")
            after = int(start) if start.lstrip("-").isdigit() else -1
            return StreamingResponse(
                self._sse(events[after + 1 :], None), media_type="text/event-stream; charset=utf-8"
            )
        return JSONResponse(stored.response)

    async def _input_items(self, request: Request) -> Response:
        denied = self._admit(request)
        if denied is not None:
            return denied
        try:
            stored = self._stored(request.path_params["response_id"])
            query = request.query_params
            order = query.get("order", "desc")
            _check_enum(order, ("asc", "desc"), "order")
            try:
                limit = int(query.get("limit", "20"))
            except ValueError:
                raise _Invalid(
                    "Invalid type for 'limit': expected an integer, but got a string instead.",
                    "limit",
                    "invalid_type",
                ) from None
            _check_range(limit, "limit", 1, 100)
        except _Invalid as exc:
            return self._error(exc.status, exc.message, param=exc.param, code=exc.code)
        items = list(stored.input_items)
        if order == "desc":
            items.reverse()
        after = query.get("after")
        if after:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )

    # -- validation ------------------------------------------------------------------
    def _validate(self, body: Any) -> _Turn:
        if not isinstance(body, dict):
            raise _Invalid(
                f"Invalid type for body: expected an object, but got {_kind(body)} instead.",
                None,
                "invalid_type",
            )
        for key in body:
            if key not in _TOP_LEVEL:
                raise _Invalid(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
        if body.get("model") is None:
            raise _missing("model")
        _check_type(body["model"], "string", "model")
        for name, kind in _SCALARS.items():
            if body.get(name) is not None:
                _check_type(body[name], kind, name)
        for name, allowed in _ENUMS.items():
            if body.get(name) is not None:
                _check_enum(body[name], allowed, name)
        if body.get("max_output_tokens") is not None:
            _check_range(body["max_output_tokens"], "max_output_tokens", 16)
        if body.get("max_tool_calls") is not None:
            _check_range(body["max_tool_calls"], "max_tool_calls", 1)
        if body.get("top_logprobs") is not None:
            _check_range(body["top_logprobs"], "top_logprobs", 0, 20)
        if body.get("temperature") is not None:
            _check_range(body["temperature"], "temperature", 0, 2, noun="decimal")
        if body.get("top_p") is not None:
            _check_range(body["top_p"], "top_p", 0, 1, noun="decimal")
        self._validate_metadata(body.get("metadata"))
        for key, value in (body.get("client_metadata") or {}).items():
            _check_type(value, "string", f"client_metadata.{key}")
        include = self._validate_include(body.get("include"))
        self._validate_stream_options(body)
        self._validate_prompt(body.get("prompt"))
        model: str = body["model"]
        reasoning_model = bool(_REASONING_MODEL.match(model))
        effort, summary = self._validate_reasoning(body, reasoning_model)
        text = self._validate_text(body.get("text"))
        tools = self._validate_tools(body.get("tools") or [])
        choice = self._validate_tool_choice(body.get("tool_choice"), tools)

        prior: list[Json] = []
        conversation = self._conversation_id(body.get("conversation"))
        previous = body.get("previous_response_id")
        if previous is not None and conversation is not None:
            raise _Invalid(
                "Mutually exclusive parameters: Ensure you are only providing one of: "
                "'previous_response_id' or 'conversation'.",
                None,
                "mutually_exclusive_parameters",
            )
        if previous is not None:
            stored = self.responses.get(previous)
            if stored is None:
                raise _Invalid(
                    f"Previous response with id '{previous}' not found.",
                    "previous_response_id",
                    "previous_response_not_found",
                )
            prior = list(stored.context)
        if conversation is not None:
            prior = list(self.conversations[conversation])
        turn = _Turn(body, [], [], tools, choice, text, include, reasoning_model, effort,
                     summary, conversation)  # fmt: skip
        if body.get("input") is None:
            if body.get("prompt") is None:
                raise _missing("input")
        else:
            turn.input_items = self._validate_input(body["input"], prior, turn)
        turn.context = prior + turn.input_items
        if not turn.context:
            raise _missing("input")
        self._check_pairing(turn.context)
        if text["format"]["type"] == "json_object":
            seen = " ".join(
                [body.get("instructions") or ""] + [_item_text(i) for i in turn.context]
            )
            if "json" not in seen.lower():
                raise _Invalid(
                    "Response input messages must contain the word 'json' in some form to use "
                    "'text.format' of type 'json_object'.",
                    "input",
                )
        return turn

    @staticmethod
    def _validate_metadata(metadata: Json | None) -> None:
        if metadata is None:
            return
        if len(metadata) > 16:
            raise _Invalid(
                "Invalid 'metadata': too many properties. Expected an object with at most 16 "
                f"properties, but got an object with {len(metadata)} properties instead.",
                "metadata",
                "object_above_max_properties",
            )
        for key, value in metadata.items():
            where = f"metadata.{key}"
            if len(key) > 64:
                raise _Invalid(
                    f"Invalid 'metadata': string too long. Expected a string with maximum "
                    f"length 64, but got a string with length {len(key)} instead.",
                    "metadata",
                    "string_above_max_length",
                )
            _check_type(value, "string", where)
            if len(value) > 512:
                raise _Invalid(
                    f"Invalid '{where}': string too long. Expected a string with maximum length "
                    f"512, but got a string with length {len(value)} instead.",
                    where,
                    "string_above_max_length",
                )

    @staticmethod
    def _validate_include(include: list[Any] | None) -> set[str]:
        for i, value in enumerate(include or []):
            _check_type(value, "string", f"include[{i}]")
            _check_enum(value, INCLUDABLE, f"include[{i}]")
        return set(include or [])

    @staticmethod
    def _validate_stream_options(body: Json) -> None:
        options = body.get("stream_options")
        if options is None:
            return
        _check_keys(options, {"include_obfuscation"}, "stream_options")
        if options.get("include_obfuscation") is not None:
            _check_type(
                options["include_obfuscation"], "boolean", "stream_options.include_obfuscation"
            )
        if not body.get("stream"):
            raise _Invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )

    @staticmethod
    def _validate_prompt(prompt: Json | None) -> None:
        if prompt is None:
            return
        _check_keys(prompt, {"id", "version", "variables"}, "prompt")
        _require(prompt, "id", "string", "prompt")
        if prompt.get("version") is not None:
            _check_type(prompt["version"], "string", "prompt.version")
        if prompt.get("variables") is not None:
            _check_type(prompt["variables"], "object", "prompt.variables")

    @staticmethod
    def _validate_reasoning(body: Json, reasoning_model: bool) -> tuple[str | None, str | None]:
        config = body.get("reasoning") or {}
        _check_keys(config, {"effort", "summary", "generate_summary"}, "reasoning")
        effort = config.get("effort")
        if effort is not None:
            _check_enum(effort, _EFFORTS, "reasoning.effort")
        summary = None
        for key in ("summary", "generate_summary"):
            if config.get(key) is not None:
                _check_enum(config[key], _SUMMARIES, f"reasoning.{key}")
                summary = summary or config[key]
        if not reasoning_model:
            for key, value in (("effort", effort), ("summary", summary)):
                if value is not None:
                    raise _Invalid(
                        f"Unsupported parameter: 'reasoning.{key}' is not supported with this "
                        "model.",
                        f"reasoning.{key}",
                        "unsupported_parameter",
                    )
            return None, None
        if effort != "none":
            for key in ("temperature", "top_p"):
                if body.get(key) is not None:
                    raise _Invalid(
                        f"Unsupported parameter: '{key}' is not supported with this model.",
                        key,
                        "unsupported_parameter",
                    )
        return effort, summary

    @staticmethod
    def _validate_text(text: Json | None) -> Json:
        text = text or {}
        _check_keys(text, {"format", "verbosity"}, "text")
        verbosity = text.get("verbosity")
        if verbosity is not None:
            _check_enum(verbosity, ("low", "medium", "high"), "text.verbosity")
        fmt = text.get("format")
        if fmt is None:
            fmt = {"type": "text"}
        _check_type(fmt, "object", "text.format")
        kind = fmt.get("type")
        if kind is None:
            raise _missing("text.format.type")
        _check_enum(kind, ("text", "json_object", "json_schema"), "text.format.type")
        if kind != "json_schema":
            _check_keys(fmt, {"type"}, "text.format")
            return {"format": {"type": kind}, "verbosity": verbosity or "medium"}
        _check_keys(fmt, {"type", "name", "schema", "description", "strict"}, "text.format")
        if fmt.get("name") is None:
            raise _missing("text.format.name")
        _check_name(fmt["name"], "text.format.name")
        schema = _require(fmt, "schema", "object", "text.format")
        if fmt.get("description") is not None:
            _check_type(fmt["description"], "string", "text.format.description")
        strict = fmt.get("strict")
        if strict is not None:
            _check_type(strict, "boolean", "text.format.strict")
        if strict:
            problem = _strict_schema_error(schema)
            if problem:
                raise _Invalid(
                    f"Invalid schema for response_format '{fmt['name']}': {problem}",
                    "text.format.schema",
                    "invalid_json_schema",
                )
        echoed = {
            "type": "json_schema",
            "description": fmt.get("description"),
            "name": fmt["name"],
            "schema": schema,
            "strict": bool(strict),
        }
        return {"format": echoed, "verbosity": verbosity or "medium"}

    @classmethod
    def _validate_tools(cls, tools: list[Any], prefix: str = "tools") -> list[Json]:
        out: list[Json] = []
        for i, tool in enumerate(tools):
            where = f"{prefix}[{i}]"
            _check_type(tool, "object", where)
            kind = tool.get("type")
            if kind is None:
                raise _missing(f"{where}.type")
            if kind == "namespace" and prefix == "tools":
                # Function and custom tools grouped under a name (their calls carry it
                # as `namespace`); the fake never calls them.
                _check_keys(tool, {"type", "name", "description", "tools"}, where)
                for key in ("name", "description"):
                    if tool.get(key) is None:
                        raise _missing(f"{where}.{key}")
                _check_name(tool["name"], f"{where}.name")
                _check_type(tool["description"], "string", f"{where}.description")
                inner = _require(tool, "tools", "array", where)
                for n, sub in enumerate(inner):
                    _check_type(sub, "object", f"{where}.tools[{n}]")
                    _check_enum(sub.get("type"), ("function", "custom"), f"{where}.tools[{n}].type")
                nested = cls._validate_tools(inner, f"{where}.tools")
                out.append({**tool, "tools": nested})
            elif kind == "function":
                _check_keys(tool, _FUNCTION_KEYS, where)
                if tool.get("name") is None:
                    raise _missing(f"{where}.name")
                _check_name(tool["name"], f"{where}.name")
                if "parameters" not in tool:
                    raise _missing(f"{where}.parameters")
                parameters = tool["parameters"]
                if parameters is not None:
                    _check_type(parameters, "object", f"{where}.parameters")
                for key, kind_of in (("strict", "boolean"), ("description", "string")):
                    if tool.get(key) is not None:
                        _check_type(tool[key], kind_of, f"{where}.{key}")
                if tool.get("strict") and parameters is not None:
                    problem = _strict_schema_error(parameters)
                    if problem:
                        raise _Invalid(
                            f"Invalid schema for function '{tool['name']}': {problem}",
                            f"{where}.parameters",
                            "invalid_function_parameters",
                        )
                out.append(
                    {
                        "type": "function",
                        "description": tool.get("description"),
                        "name": tool["name"],
                        "parameters": parameters,
                        "strict": tool["strict"] if tool.get("strict") is not None else True,
                    }
                )
            elif kind == "custom":
                _check_keys(tool, _CUSTOM_KEYS, where)
                if tool.get("name") is None:
                    raise _missing(f"{where}.name")
                _check_name(tool["name"], f"{where}.name")
                if tool.get("description") is not None:
                    _check_type(tool["description"], "string", f"{where}.description")
                fmt = tool.get("format")
                if fmt is not None:
                    _check_type(fmt, "object", f"{where}.format")
                    fkind = fmt.get("type")
                    _check_enum(fkind, ("text", "grammar"), f"{where}.format.type")
                    if fkind == "grammar":
                        _check_keys(fmt, {"type", "syntax", "definition"}, f"{where}.format")
                        syntax = _require(fmt, "syntax", "string", f"{where}.format")
                        _check_enum(syntax, ("lark", "regex"), f"{where}.format.syntax")
                        _require(fmt, "definition", "string", f"{where}.format")
                    else:
                        _check_keys(fmt, {"type"}, f"{where}.format")
                out.append(dict(tool))
            elif kind in _BUILTIN_TOOLS:
                for key in _BUILTIN_TOOLS[kind]:
                    if tool.get(key) is None:
                        raise _missing(f"{where}.{key}")
                if kind == "file_search":
                    _check_type(tool["vector_store_ids"], "array", f"{where}.vector_store_ids")
                if kind == "computer_use_preview":
                    for key in ("display_width", "display_height"):
                        _check_type(tool[key], "integer", f"{where}.{key}")
                    _check_enum(
                        tool["environment"],
                        ("windows", "mac", "linux", "ubuntu", "browser"),
                        f"{where}.environment",
                    )
                if kind == "mcp" and not (tool.get("server_url") or tool.get("connector_id")):
                    raise _missing(f"{where}.server_url")
                out.append(dict(tool))
            else:
                kinds = ("function", "custom", "namespace", *_BUILTIN_TOOLS)
                _check_enum(kind, kinds, f"{where}.type")
        return out

    @staticmethod
    def _validate_tool_choice(choice: Any, tools: list[Json]) -> Any:
        if choice is None:
            return "auto"
        if isinstance(choice, str):
            _check_enum(choice, ("auto", "none", "required"), "tool_choice")
            if choice == "required" and not tools:
                raise _Invalid(
                    "Tool choice 'required' must be specified with 'tools' parameter.",
                    "tool_choice",
                )
            return choice
        _check_type(choice, "object", "tool_choice")
        kind = choice.get("type")
        if kind is None:
            raise _missing("tool_choice.type")
        if kind in ("function", "custom"):
            _check_keys(choice, {"type", "name"}, "tool_choice")
            name = _require(choice, "name", "string", "tool_choice")
            if not any(t["type"] == kind and t["name"] == name for t in tools):
                raise _Invalid(
                    f"Tool choice '{kind}' not found in 'tools' parameter.", "tool_choice"
                )
        elif kind == "allowed_tools":
            _check_keys(choice, {"type", "mode", "tools"}, "tool_choice")
            _check_enum(choice.get("mode"), ("auto", "required"), "tool_choice.mode")
            allowed = _require(choice, "tools", "array", "tool_choice")
            for i, entry in enumerate(allowed):
                _check_type(entry, "object", f"tool_choice.tools[{i}]")
                if entry.get("type") is None:
                    raise _missing(f"tool_choice.tools[{i}].type")
        elif kind == "mcp":
            _check_keys(choice, {"type", "server_label", "name"}, "tool_choice")
            _require(choice, "server_label", "string", "tool_choice")
        elif kind in _CHOICE_BUILTINS:
            _check_keys(choice, {"type"}, "tool_choice")
        else:
            _check_enum(
                kind,
                ("function", "custom", "allowed_tools", "mcp", *_CHOICE_BUILTINS),
                "tool_choice.type",
            )
        return choice

    def _conversation_id(self, conversation: Any) -> str | None:
        if conversation is None:
            return None
        if isinstance(conversation, dict):
            _check_keys(conversation, {"id"}, "conversation")
            conversation = _require(conversation, "id", "string", "conversation")
        elif not isinstance(conversation, str):
            raise _Invalid(
                f"Invalid type for 'conversation': expected a string or an object, but got "
                f"{_kind(conversation)} instead.",
                "conversation",
                "invalid_type",
            )
        if conversation not in self.conversations:
            raise _Invalid(
                f"Conversation with id '{conversation}' not found.", "conversation", status=404
            )
        return str(conversation)

    def _validate_input(self, value: Any, prior: list[Json], turn: _Turn) -> list[Json]:
        if isinstance(value, str):
            return [self._message_item("user", [{"type": "input_text", "text": value}])]
        if not isinstance(value, list):
            raise _Invalid(
                "Invalid type for 'input': expected one of a string or array of input items, "
                f"but got {_kind(value)} instead.",
                "input",
                "invalid_type",
            )
        if not value:
            raise _Invalid(
                "Invalid 'input': empty array. Expected an array with minimum length 1, but got "
                "an empty array instead.",
                "input",
                "empty_array",
            )
        items: list[Json] = []
        for i, item in enumerate(value):
            where = f"input[{i}]"
            _check_type(item, "object", where)
            kind = item.get("type")
            if kind is None:
                kind = "message" if "role" in item else "item_reference" if "id" in item else None
            if kind is None:
                raise _missing(f"{where}.type")
            _check_enum(kind, _ITEM_TYPES, f"{where}.type")
            _check_keys(item, _ITEM_KEYS[kind], where)
            items.append(self._validate_item(kind, item, where, turn))
        self._check_reasoning_order(prior + items, len(prior))
        return items

    def _message_item(self, role: str, content: list[Json], item_id: str | None = None) -> Json:
        return {
            "id": item_id or self._id("msg"),
            "type": "message",
            "status": "completed",
            "role": role,
            "content": content,
        }

    def _validate_item(self, kind: str, item: Json, where: str, turn: _Turn) -> Json:
        given_id = item.get("id")
        if given_id is not None:
            _check_type(given_id, "string", f"{where}.id")
            prefix = _ID_PREFIX.get(kind)
            if kind == "message" and item.get("role") == "assistant":
                prefix = "msg"
            if prefix and not given_id.startswith(prefix):
                raise _Invalid(
                    f"Invalid '{where}.id': '{given_id}'. Expected an ID that begins with "
                    f"'{prefix}'.",
                    f"{where}.id",
                    "invalid_value",
                )
        if kind == "message":
            role = item.get("role")
            if role is None:
                raise _missing(f"{where}.role")
            _check_enum(role, _ROLES, f"{where}.role")
            if item.get("content") is None:
                raise _missing(f"{where}.content")
            content = self._validate_content(item["content"], role, f"{where}.content")
            return self._message_item(role, content, given_id)
        if kind == "item_reference":
            reference = _require(item, "id", "string", where)
            found = self._items.get(reference)
            if found is None:
                raise _Invalid(f"Item with id '{reference}' not found.", "input", status=404)
            return dict(found)
        if kind == "reasoning":
            item_id = _require(item, "id", "string", where)
            summary = item.get("summary")
            if summary is None:
                raise _missing(f"{where}.summary")
            _check_type(summary, "array", f"{where}.summary")
            for n, part in enumerate(summary):
                at = f"{where}.summary[{n}]"
                _check_type(part, "object", at)
                _check_keys(part, {"type", "text"}, at)
                _check_enum(part.get("type"), ("summary_text",), f"{at}.type")
                _require(part, "text", "string", at)
            encrypted = item.get("encrypted_content")
            if encrypted is not None:
                _check_type(encrypted, "string", f"{where}.encrypted_content")
                if not self._decrypts(item_id, encrypted):
                    raise _Invalid(
                        f"The encrypted content for item {item_id} could not be verified.",
                        None,
                        "invalid_encrypted_content",
                    )
                turn.verified += 1
            elif item_id not in self._items:
                raise _Invalid(
                    f"Item with id '{item_id}' not found. Items are not persisted when `store` "
                    "is set to false. Try again with `store` set to true, or remove this item "
                    "from your input.",
                    "input",
                    status=404,
                )
            return {k: v for k, v in item.items() if k != "status"}
        if kind in ("function_call", "custom_tool_call"):
            _require(item, "call_id", "string", where)
            _require(item, "name", "string", where)
            field_name = "arguments" if kind == "function_call" else "input"
            if item.get(field_name) is None:
                raise _missing(f"{where}.{field_name}")
            _check_type(item[field_name], "string", f"{where}.{field_name}")
            prefix = "fc" if kind == "function_call" else "ctc"
            out = {"id": given_id or self._id(prefix), "type": kind, "status": "completed"}
            out.update({k: item[k] for k in ("call_id", "name", field_name)})
            return out
        # function_call_output / custom_tool_call_output
        _require(item, "call_id", "string", where)
        output = item.get("output")
        if output is None:
            raise _missing(f"{where}.output")
        if isinstance(output, list):
            output = self._validate_content(output, "tool", f"{where}.output")
        else:
            _check_type(output, "string", f"{where}.output")
        prefix = "fco" if kind == "function_call_output" else "ctco"
        return {
            "id": given_id or self._id(prefix),
            "type": kind,
            "status": "completed",
            "call_id": item["call_id"],
            "output": output,
        }

    def _validate_content(self, content: Any, role: str, where: str) -> list[Json]:
        if isinstance(content, str):
            if role == "assistant":
                return [{"type": "output_text", "text": content, "annotations": []}]
            return [{"type": "input_text", "text": content}]
        if not isinstance(content, list):
            raise _Invalid(
                f"Invalid type for '{where}': expected one of a string or array of content "
                f"parts, but got {_kind(content)} instead.",
                where,
                "invalid_type",
            )
        allowed = _OUTPUT_PARTS if role == "assistant" else _INPUT_PARTS
        out: list[Json] = []
        for n, part in enumerate(content):
            at = f"{where}[{n}]"
            _check_type(part, "object", at)
            kind = part.get("type")
            if kind is None:
                raise _missing(f"{at}.type")
            _check_enum(kind, allowed, f"{at}.type")
            _check_keys(part, _PART_KEYS[kind], at)
            if kind in ("input_text", "output_text"):
                _require(part, "text", "string", at)
                if kind == "output_text":
                    annotations = part.get("annotations", [])
                    _check_type(annotations, "array", f"{at}.annotations")
                    part = {"annotations": [], **part}
            elif kind == "refusal":
                _require(part, "refusal", "string", at)
            elif kind == "input_image":
                self._validate_image(part, at)
            else:
                self._validate_file(part, at)
            out.append(dict(part))
        return out

    @staticmethod
    def _validate_image(part: Json, at: str) -> None:
        if part.get("detail") is not None:
            _check_enum(part["detail"], _DETAILS, f"{at}.detail")
        url, file_id = part.get("image_url"), part.get("file_id")
        if url is None and file_id is None:
            raise _missing(f"{at}.image_url")
        if file_id is not None:
            _check_type(file_id, "string", f"{at}.file_id")
        if url is None:
            return
        _check_type(url, "string", f"{at}.image_url")
        if url.startswith(("http://", "https://")):
            return
        match = re.match(r"^data:([^;,]*);base64,(.*)$", url, re.S)
        if match is None:
            raise _Invalid(
                f"Invalid '{at}.image_url'. Expected a valid URL, but got a value with an "
                "invalid format.",
                f"{at}.image_url",
                "invalid_value",
            )
        if match.group(1) not in _IMAGE_MIME:
            raise _Invalid(
                f"Invalid '{at}.image_url'. Expected a base64-encoded data URL with an image MIME "
                "type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got unsupported "
                f"MIME type '{match.group(1)}'.",
                f"{at}.image_url",
                "invalid_value",
            )
        try:
            base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(
                f"Invalid '{at}.image_url'. Expected a base64-encoded data URL with an image MIME "
                "type, but got a value with invalid base64 data.",
                f"{at}.image_url",
                "invalid_value",
            ) from None

    @staticmethod
    def _validate_file(part: Json, at: str) -> None:
        sources = [k for k in ("file_data", "file_id", "file_url") if part.get(k) is not None]
        if not sources:
            raise _missing(f"{at}.file_id")
        for key in [*sources, "filename"]:
            if part.get(key) is not None:
                _check_type(part[key], "string", f"{at}.{key}")
        data = part.get("file_data")
        if data is not None:
            match = re.match(r"^data:([^;,]+);base64,(.*)$", data, re.S)
            try:
                ok = match is not None and bool(base64.b64decode(match.group(2), validate=True))
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                raise _Invalid(
                    f"Invalid '{at}.file_data'. Expected a base64-encoded data URL "
                    "(e.g. 'data:application/pdf;base64,...').",
                    f"{at}.file_data",
                    "invalid_value",
                )
        url = part.get("file_url")
        if url is not None and not url.startswith(("http://", "https://")):
            raise _Invalid(
                f"Invalid '{at}.file_url'. Expected a valid URL, but got a value with an invalid "
                "format.",
                f"{at}.file_url",
                "invalid_value",
            )

    def _check_reasoning_order(self, context: list[Json], start: int) -> None:
        """Reasoning items come with their following item, and stored calls with their reasoning."""
        for n in range(start, len(context)):
            item = context[n]
            if item["type"] == "reasoning":
                following = context[n + 1] if n + 1 < len(context) else None
                if following is None or not (
                    following["type"] in ("function_call", "custom_tool_call", "reasoning")
                    or (following["type"] == "message" and following["role"] == "assistant")
                ):
                    raise _Invalid(
                        f"Item '{item['id']}' of type 'reasoning' was provided without its "
                        "required following item.",
                        "input",
                    )
            required = self._needs_reasoning.get(item.get("id", ""))
            if required is not None and not any(
                c["type"] == "reasoning" and c["id"] == required for c in context[:n]
            ):
                raise _Invalid(
                    f"Item '{item['id']}' of type '{item['type']}' was provided without its "
                    f"required 'reasoning' item: '{required}'.",
                    "input",
                )

    @staticmethod
    def _check_pairing(context: list[Json]) -> None:
        """Every tool output follows its call; every call gets its output."""
        calls: dict[str, set[str]] = {"function_call": set(), "custom_tool_call": set()}
        answered: set[tuple[str, str]] = set()
        labels = {"function_call": "function call", "custom_tool_call": "custom tool call"}
        for item in context:
            kind = item["type"]
            if kind in calls:
                calls[kind].add(item["call_id"])
            elif kind in ("function_call_output", "custom_tool_call_output"):
                call_kind = kind.removesuffix("_output")
                if item["call_id"] not in calls[call_kind]:
                    raise _Invalid(
                        f"No tool call found for {labels[call_kind]} output with call_id "
                        f"{item['call_id']}.",
                        "input",
                    )
                answered.add((call_kind, item["call_id"]))
        for kind, ids in calls.items():
            for call_id in sorted(ids):
                if (kind, call_id) not in answered:
                    raise _Invalid(f"No tool output found for {labels[kind]} {call_id}.", "input")

    # -- answers ---------------------------------------------------------------------
    def _respond(self, turn: _Turn) -> Json:
        """The response object for a valid turn, kept when `store` is on."""
        response_id = self._id("resp")
        output: list[Json] = []
        reasoning_tokens = 0
        thinks = turn.reasoning_model and turn.body.get("reasoning") is not None
        if thinks and turn.effort != "none":
            item_id = self._id("rs")
            reasoning: Json = {
                "id": item_id,
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": THOUGHT}] if turn.summary else [],
            }
            if "reasoning.encrypted_content" in turn.include:
                reasoning["encrypted_content"] = self.encrypt(item_id)
            output.append(reasoning)
            reasoning_tokens = _words(THOUGHT)
        status, incomplete = "completed", None
        calls = self._calls(turn)
        if calls:
            output.extend(calls)
            produced = sum(_words(_item_text(c)) for c in calls)
        else:
            text = self._text_answer(turn)
            pieces = _PIECE.findall(text)
            cap = turn.body.get("max_output_tokens")
            message_status = "completed"
            if cap is not None and len(pieces) > cap - reasoning_tokens:
                pieces = pieces[: max(cap - reasoning_tokens, 0)]
                status, message_status = "incomplete", "incomplete"
                incomplete = {"reason": "max_output_tokens"}
            text = "".join(pieces)
            part: Json = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
            if "message.output_text.logprobs" in turn.include:
                part["logprobs"] = self._logprobs(pieces, turn.body.get("top_logprobs") or 0)
            output.append(
                {
                    "id": self._id("msg"),
                    "type": "message",
                    "status": message_status,
                    "content": [part],
                    "role": "assistant",
                }
            )
            produced = _words(text)
        input_tokens = _words(turn.body.get("instructions") or "") + sum(
            _words(_item_text(i)) for i in turn.context
        )
        output_tokens = produced + reasoning_tokens
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": min(self.cached_tokens, input_tokens)},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
        }
        response = self._response_object(turn, response_id, output, status, incomplete, usage)
        self._keep(turn, response)
        return response

    def _keep(self, turn: _Turn, response: Json) -> None:
        context = turn.context + response["output"]
        if turn.conversation is not None:
            self.conversations[turn.conversation] = context
        if turn.body.get("store") is False:
            return
        self.responses[response["id"]] = StoredResponse(response, turn.input_items, context)
        for item in turn.input_items + response["output"]:
            self._items[item["id"]] = item
        last_reasoning = None
        for item in response["output"]:
            if item["type"] == "reasoning":
                last_reasoning = item["id"]
            elif item["type"] in ("function_call", "custom_tool_call") and last_reasoning:
                self._needs_reasoning[item["id"]] = last_reasoning

    def _calls(self, turn: _Turn) -> list[Json]:
        tools = [t for t in turn.tools if t["type"] in ("function", "custom")]
        choice = turn.tool_choice
        last = turn.context[-1]
        user_last = last["type"] == "message" and last["role"] == "user"
        forced: Json | None = None
        mode = "auto"
        if isinstance(choice, dict):
            if choice["type"] in ("function", "custom"):
                forced = next(
                    t for t in tools if t["type"] == choice["type"] and t["name"] == choice["name"]
                )
            elif choice["type"] == "allowed_tools":
                names = {(t.get("type"), t.get("name")) for t in choice["tools"]}
                tools = [t for t in tools if (t["type"], t["name"]) in names]
                mode = choice["mode"]
            else:  # a forced built-in or MCP tool: the fake does not run those
                tools = []
        elif choice == "none":
            tools = []
        elif choice == "required":
            mode = "required"
        if not tools or not (forced or mode == "required" or user_last):
            return []
        many = 1 if turn.body.get("parallel_tool_calls") is False else self.parallel_calls
        if not forced and self.tool_names is not None:
            tools = [t for name in self.tool_names for t in tools if t["name"] == name]
        chosen = [forced] if forced else tools[: max(many, 1)]
        if not chosen:
            return []
        text = self._user_text(turn.context)
        arguments = self.tool_arguments
        calls: list[Json] = []
        for tool in chosen:
            if tool["type"] == "function":
                calls.append(
                    {
                        "id": self._id("fc"),
                        "type": "function_call",
                        "status": "completed",
                        "arguments": (
                            json.dumps({"input": text}) if arguments is None else arguments
                        ),
                        "call_id": self._id("call", 24),
                        "name": tool["name"],
                    }
                )
            else:
                calls.append(
                    {
                        "id": self._id("ctc"),
                        "type": "custom_tool_call",
                        "status": "completed",
                        "call_id": self._id("call", 24),
                        "input": text if arguments is None else arguments,
                        "name": tool["name"],
                    }
                )
        return calls

    @staticmethod
    def _user_text(context: list[Json]) -> str:
        users = [i for i in context if i["type"] == "message" and i["role"] == "user"]
        if not users:
            return "Hello! How can I help?"
        content = users[-1]["content"]
        text = _parts_text(content, ("input_text",))
        if text:
            return text
        kinds = {p["type"] for p in content}
        return "I see the image." if "input_image" in kinds else "I see the file."

    def _text_answer(self, turn: _Turn) -> str:
        outputs: list[str] = []
        for item in reversed(turn.context):
            if item["type"] not in ("function_call_output", "custom_tool_call_output"):
                break
            outputs.insert(0, _item_text(item))
        text = f"The tool answered: {'; '.join(outputs)}" if outputs else None
        fmt = turn.text["format"]
        if fmt["type"] == "json_schema":
            value = _example(fmt["schema"], fmt["schema"], text or self._user_text(turn.context))
            return json.dumps(value)
        if fmt["type"] == "json_object":
            return json.dumps({"input": text or self._user_text(turn.context)})
        return text or self._user_text(turn.context)

    @staticmethod
    def _logprobs(pieces: list[str], top: int) -> list[Json]:
        out = []
        for piece in pieces:
            alternatives = [{"token": piece, "bytes": list(piece.encode()), "logprob": -0.001}]
            for k in range(1, top):
                token = f" alt{k}"
                alternatives.append(
                    {"token": token, "bytes": list(token.encode()), "logprob": -5.0 - k}
                )
            out.append(
                {
                    "token": piece,
                    "bytes": list(piece.encode()),
                    "logprob": -0.001,
                    "top_logprobs": alternatives[:top],
                }
            )
        return out

    def _response_object(
        self,
        turn: _Turn,
        response_id: str,
        output: list[Json],
        status: str,
        incomplete: Json | None,
        usage: Json,
    ) -> Json:
        body = turn.body
        created = CREATED + len(self.answers)

        def given(key: str, default: Any = None) -> Any:
            value = body.get(key)
            return default if value is None else value

        effort = (turn.effort or "medium") if turn.reasoning_model else None
        tier = given("service_tier", "auto")
        response: Json = {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": given("background", False),
            "completed_at": created if status == "completed" else None,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": given("instructions"),
            "max_output_tokens": given("max_output_tokens"),
            "max_tool_calls": given("max_tool_calls"),
            "model": body["model"],
            "output": output,
            "parallel_tool_calls": given("parallel_tool_calls", True),
            "previous_response_id": given("previous_response_id"),
            "prompt_cache_key": given("prompt_cache_key"),
            "prompt_cache_retention": given("prompt_cache_retention"),
            "reasoning": {"effort": effort, "summary": turn.summary},
            "safety_identifier": given("safety_identifier"),
            "service_tier": "default" if tier == "auto" else tier,
            "store": given("store", True),
            "temperature": float(given("temperature", 1.0)),
            "text": turn.text,
            "tool_choice": turn.tool_choice,
            "tools": turn.tools,
            "top_logprobs": given("top_logprobs", 0),
            "top_p": float(given("top_p", 1.0)),
            "truncation": given("truncation", "disabled"),
            "usage": usage,
            "user": given("user"),
            "metadata": given("metadata", {}),
        }
        if turn.conversation is not None:
            response["conversation"] = {"id": turn.conversation}
        if body.get("prompt") is not None:
            response["prompt"] = body["prompt"]
        return response

    # -- streaming -------------------------------------------------------------------
    def _event_list(self, response: Json, *, obfuscate: bool = True) -> list[Json]:
        """Every event of a response's stream, in the API's order, numbered."""
        head = {
            **response,
            "status": "in_progress",
            "completed_at": None,
            "incomplete_details": None,
            "output": [],
            "usage": None,
        }
        events: list[Json] = [
            {"type": "response.created", "response": head},
            {"type": "response.in_progress", "response": head},
        ]

        def add(kind: str, **fields: Any) -> None:
            if obfuscate and "delta" in fields:
                fields["obfuscation"] = _obfuscation(fields["delta"])
            events.append({"type": kind, **fields})

        for index, item in enumerate(response["output"]):
            kind = item["type"]
            at = {"item_id": item["id"], "output_index": index}
            if kind == "message":
                opening: Json = {**item, "status": "in_progress", "content": []}
            elif kind == "function_call":
                opening = {**item, "status": "in_progress", "arguments": ""}
            elif kind == "custom_tool_call":
                opening = {**item, "status": "in_progress", "input": ""}
            else:
                opening = {k: v for k, v in item.items() if k != "encrypted_content"} | {
                    "summary": []
                }
            events.append(
                {"type": "response.output_item.added", "output_index": index, "item": opening}
            )
            if kind == "message":
                for n, part in enumerate(item["content"]):
                    empty = {**part, "text": "", "logprobs": []}
                    add("response.content_part.added", **at, content_index=n, part=empty)
                    logprobs = part.get("logprobs") or []
                    pieces = _PIECE.findall(part["text"])
                    for k, piece in enumerate(pieces):
                        chosen = logprobs[k : k + 1] if logprobs else []
                        add(
                            "response.output_text.delta",
                            **at,
                            content_index=n,
                            delta=piece,
                            logprobs=[
                                {
                                    "token": lp["token"],
                                    "logprob": lp["logprob"],
                                    "top_logprobs": [
                                        {"token": t["token"], "logprob": t["logprob"]}
                                        for t in lp["top_logprobs"]
                                    ],
                                }
                                for lp in chosen
                            ],
                        )
                    add(
                        "response.output_text.done",
                        **at,
                        content_index=n,
                        text=part["text"],
                        logprobs=[],
                    )
                    add("response.content_part.done", **at, content_index=n, part=part)
            elif kind in ("function_call", "custom_tool_call"):
                name = (
                    "function_call_arguments"
                    if kind == "function_call"
                    else ("custom_tool_call_input")
                )
                whole = item["arguments"] if kind == "function_call" else item["input"]
                for piece in _PIECE.findall(whole):
                    add(f"response.{name}.delta", **at, delta=piece)
                done_field = "arguments" if kind == "function_call" else "input"
                add(f"response.{name}.done", **at, **{done_field: whole})
            else:
                for n, summary in enumerate(item["summary"]):
                    at_summary = {**at, "summary_index": n}
                    add(
                        "response.reasoning_summary_part.added",
                        **at_summary,
                        part={"type": "summary_text", "text": ""},
                    )
                    for piece in _PIECE.findall(summary["text"]):
                        add("response.reasoning_summary_text.delta", **at_summary, delta=piece)
                    add("response.reasoning_summary_text.done", **at_summary, text=summary["text"])
                    add("response.reasoning_summary_part.done", **at_summary, part=summary)
            events.append({"type": "response.output_item.done", "output_index": index,
                           "item": item})  # fmt: skip
        terminal = {
            "completed": "response.completed",
            "incomplete": "response.incomplete",
        }.get(response["status"], "response.failed")
        events.append({"type": terminal, "response": response})
        return [
            {"type": e["type"], "sequence_number": n, **{k: v for k, v in e.items() if k != "type"}}
            for n, e in enumerate(events)
        ]

    async def _sse(self, events: list[Json], response: Json | None) -> AsyncIterator[bytes]:
        done: list[Json] = []
        for n, event in enumerate(events):
            if self.cut_stream_after is not None and n >= self.cut_stream_after:
                return
            if (
                response is not None
                and self.stream_error_after is not None
                and n >= self.stream_error_after
            ):
                error = {
                    "type": "error",
                    "sequence_number": n,
                    "code": "server_error",
                    "message": _SERVER_ERROR,
                    "param": None,
                }
                yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
                failed = {
                    **response,
                    "status": "failed",
                    "completed_at": None,
                    "error": {"code": "server_error", "message": _SERVER_ERROR},
                    "incomplete_details": None,
                    "output": done,
                    "usage": None,
                }
                stored = self.responses.get(response["id"])
                if stored is not None:
                    stored.response = failed
                event = {"type": "response.failed", "sequence_number": n + 1, "response": failed}
                yield f"event: response.failed\ndata: {json.dumps(event)}\n\n".encode()
                return
            if event["type"] == "response.output_item.done":
                done.append(event["item"])
            yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            await anyio.sleep(0)
