"""A fake of OpenAI's chat completions API: its wire format, its errors, and failure knobs.

Use it in-process with `httpx.ASGITransport(app=fake)` (`httpx2.ASGITransport`
for the official SDK), or serve it on 127.0.0.1 with uvicorn when a test needs
real sockets (timeouts, a connection cut mid-stream).

It serves `POST {base_path}/chat/completions` and `GET {base_path}/models`,
checks `Authorization: Bearer`, validates like the real API (model required,
messages non-empty, known roles, tool messages need `tool_call_id`) and answers
deterministically:

- with tools offered, `tool_choice` not `none` and a user message last, it
  calls the forced tool (or the first one) with `{"input": <user text>}`;
- after a tool message, it answers `The tool answered: <tool content>`;
- otherwise it echoes the last user text; `stop` and `max_tokens` cut the echo.

`usage` counts words and punctuation marks. Streams are `data: {chunk}` events,
the usage chunk (empty `choices`) when `stream_options.include_usage` is true,
then `data: [DONE]`.

`POST {base_path}/embeddings` answers like OpenAI's: `input` as a string, a
list of strings, a token array or a list of token arrays (empty ones refused),
`encoding_format` float or base64, `dimensions` only for `text-embedding-3-*`
and within the model's size, unknown fields refused; vectors are deterministic
unit vectors, usage counts tokens as above (a token array's length). The
failure knob `fail_status` applies to it too.

`flavor="mistral"` makes it behave like Mistral's OpenAI-like API where the
two differ. Mistral validates with pydantic and forbids extra fields: an
unknown top-level field, a message field its schema lacks for that role
(`refusal`, `annotations`, `name` on a user message, ...), a content part or
tool-call field beyond its own, is a 422 whose `message.detail` lists each
one (`extra_forbidden`, with its `loc`). Tool-call ids that are not 9 of
a-z, A-Z, 0-9, and tool results that do not answer the calls before them,
are a 400 in Mistral's words. Its answers carry Mistral's own shape: 9-character
call ids, `prefix: false` on the message, `index` on tool calls, no
`refusal`; a streamed call comes whole in one delta without `type`; the last
streamed chunk always carries `usage`.

Knobs (attributes, reset with `reset()`): `fail_status`, `retry_after`,
`delay_s`, `malformed`, `cut_stream_after`, `stream_error_after`,
`echo_key_in_errors`. The last request is kept in `last_body`, `last_headers`
and `last_path`; every body in `requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = [
    "EMBEDDING_MODELS",
    "FAKE_OPENAI_KEY",
    "FakeOpenAI",
    "count_tokens",
    "create_fake_openai",
    "unit_vector",
]

FAKE_OPENAI_KEY = "sk-upstream-secret-0123456789abcdef"

Json = dict[str, Any]

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_PIECE = re.compile(r"\S+\s*")
_KNOWN_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "stop", "stream", "stream_options", "tools", "tool_choice", "response_format", "seed",
        "user", "n", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
        "top_logprobs", "parallel_tool_calls", "metadata", "store", "service_tier",
        "reasoning_effort", "modalities", "audio", "prediction", "web_search_options",
    }
)  # fmt: skip
_MISTRAL_FIELDS = frozenset(
    {
        "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
        "random_seed", "response_format", "tools", "tool_choice", "presence_penalty",
        "frequency_penalty", "n", "parallel_tool_calls", "prediction", "safe_prompt",
    }
)  # fmt: skip
# Mistral's message schema: the fields of each role, of content parts and of tool calls.
_MISTRAL_MESSAGE_FIELDS = {
    "system": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "tool_calls", "prefix"}),
    "tool": frozenset({"role", "content", "tool_call_id", "name"}),
}
_MISTRAL_PART_FIELDS = {
    "text": frozenset({"type", "text"}),
    "image_url": frozenset({"type", "image_url"}),
    "document_url": frozenset({"type", "document_url", "document_name"}),
    "input_audio": frozenset({"type", "input_audio"}),
}
_MISTRAL_CALL_FIELDS = frozenset({"id", "type", "function", "index"})
_MISTRAL_FUNCTION_CALL_FIELDS = frozenset({"name", "arguments"})
_MISTRAL_TOOL_FIELDS = frozenset({"type", "function"})
_MISTRAL_FUNCTION_FIELDS = frozenset({"name", "description", "parameters", "strict"})
_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
_EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
# Embedding models: full size, and whether `dimensions` may shorten it.
EMBEDDING_MODELS = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}
CREATED = 1_700_000_000
FINGERPRINT = "fp_fake0001"


def count_tokens(text: str) -> int:
    """The fake's token count: words and punctuation marks."""
    return len(_TOKEN.findall(text))


class _Invalid(Exception):
    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        *,
        detail: list[Json] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.detail = detail  # Mistral's 422: pydantic's list of what was wrong


def _extra(loc: list[Any], value: Any) -> Json:
    return {
        "type": "extra_forbidden",
        "loc": ["body", *loc],
        "msg": "Extra inputs are not permitted",
        "input": value,
    }


def _mistral_details(body: Json) -> list[Json]:
    """What Mistral's pydantic schema refuses in `body`, as its 422 lists it."""
    details = [_extra([k], v) for k, v in body.items() if k not in _MISTRAL_FIELDS]
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        allowed = _MISTRAL_MESSAGE_FIELDS.get(role) if isinstance(role, str) else None
        if allowed is None:
            details.append(
                {
                    "type": "union_tag_invalid",
                    "loc": ["body", "messages", i],
                    "msg": f"Input tag '{role}' found using 'role' does not match any of the "
                    "expected tags: 'assistant', 'system', 'tool', 'user'",
                    "input": message,
                }
            )
            continue
        where: list[Any] = ["messages", i, role]
        details += [_extra([*where, k], v) for k, v in message.items() if k not in allowed]
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            fields = _MISTRAL_PART_FIELDS.get(kind) if isinstance(kind, str) else None
            if fields is None or not isinstance(part, dict):
                details.append(
                    {
                        "type": "union_tag_invalid",
                        "loc": ["body", *where, "content", j],
                        "msg": f"Input tag '{kind}' found using 'type' does not match any of "
                        "the expected tags",
                        "input": part,
                    }
                )
                continue
            details += [
                _extra([*where, "content", j, kind, k], v)
                for k, v in part.items()
                if k not in fields
            ]
            image = part.get("image_url")
            if kind == "image_url" and isinstance(image, dict):
                details += [
                    _extra([*where, "content", j, kind, "image_url", k], v)
                    for k, v in image.items()
                    if k not in ("url", "detail")
                ]
        calls = message.get("tool_calls")
        for j, call in enumerate(calls if isinstance(calls, list) else []):
            if not isinstance(call, dict):
                continue
            at = [*where, "tool_calls", j]
            details += [
                _extra([*at, k], v) for k, v in call.items() if k not in _MISTRAL_CALL_FIELDS
            ]
            function = call.get("function")
            if isinstance(function, dict):
                details += [
                    _extra([*at, "function", k], v)
                    for k, v in function.items()
                    if k not in _MISTRAL_FUNCTION_CALL_FIELDS
                ]
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict):
            continue
        details += [
            _extra(["tools", i, k], v) for k, v in tool.items() if k not in _MISTRAL_TOOL_FIELDS
        ]
        function = tool.get("function")
        if isinstance(function, dict):
            details += [
                _extra(["tools", i, "function", k], v)
                for k, v in function.items()
                if k not in _MISTRAL_FUNCTION_FIELDS
            ]
    return details


def _mistral_tool_turns(messages: list[Any]) -> None:
    """Mistral's checks of tool calls and their results, in its words (a 400)."""
    pending: list[str] | None = None
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        ids = [c.get("id") for c in message.get("tool_calls") or () if isinstance(c, dict)]
        if role == "tool":
            ids = [message.get("tool_call_id")]
        for call_id in ids:
            if not isinstance(call_id, str) or not _MISTRAL_ID.fullmatch(call_id):
                raise _Invalid(
                    f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length of 9."
                )
        if role == "tool":
            if not pending or ids[0] not in pending:
                raise _Invalid(f"Unexpected tool call id {ids[0]} in tool results")
            pending.remove(ids[0])
            continue
        if pending:
            raise _Invalid("Not the same number of function calls and responses")
        pending = list(ids) if role == "assistant" else None
    if pending:
        raise _Invalid("Not the same number of function calls and responses")


def mistral_call_id(*parts: str) -> str:
    """A call id as Mistral makes them: 9 of a-z, A-Z, 0-9 (deterministic here)."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    number = int(hashlib.sha256("\0".join(parts).encode()).hexdigest(), 16)
    return "".join(alphabet[(number >> (6 * i)) % 62] for i in range(9))


def _text(message: Json) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


class FakeOpenAI:
    """The fake upstream; an ASGI app. See the module docstring for its behaviour."""

    def __init__(
        self,
        *,
        api_key: str = FAKE_OPENAI_KEY,
        base_path: str = "/v1",
        flavor: Literal["openai", "mistral"] = "openai",
    ) -> None:
        self.api_key = api_key
        self.base_path = base_path.rstrip("/")
        self.flavor = flavor
        self.requests: list[Json] = []
        self.reset()
        self.app = Starlette(
            routes=[
                Route(f"{self.base_path}/chat/completions", self._chat, methods=["POST"]),
                Route(f"{self.base_path}/models", self._models, methods=["GET"]),
                Route(f"{self.base_path}/embeddings", self._embeddings, methods=["POST"]),
            ]
        )

    def reset(self) -> None:
        """Back to a healthy upstream with no record."""
        self.fail_status: int | None = None  # answer every chat request with this status
        self.retry_after: str | None = None  # Retry-After on a failure answer
        self.delay_s: float = 0.0  # wait before the answer's headers
        self.malformed: bool = False  # 200 with a body that is not JSON
        self.cut_stream_after: int | None = None  # break the connection after N chunks
        self.stream_error_after: int | None = None  # send an error event after N chunks
        self.echo_key_in_errors: bool = False  # a careless upstream that quotes the key
        self.last_body: Json | None = None
        self.last_headers: dict[str, str] = {}
        self.last_path: str | None = None
        self.requests = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # -- errors ----------------------------------------------------------------
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
        return JSONResponse(body, status_code=status, headers=headers)

    @staticmethod
    def _mistral_error(exc: _Invalid) -> JSONResponse:
        """Mistral's error body: a 422 lists pydantic's details, a 400 says one thing."""
        message: Any = {"detail": exc.detail} if exc.detail else exc.message
        body = {
            "object": "error",
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        return JSONResponse(body, status_code=422 if exc.detail else 400)

    def _failure(self, status: int, bearer: str) -> JSONResponse:
        quoted = f" (request made with key {bearer})" if self.echo_key_in_errors else ""
        headers = {"retry-after": self.retry_after} if self.retry_after else None
        if status == 429:
            return self._error(
                429,
                f"Rate limit reached for requests{quoted}",
                etype="requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        if status == 401:
            return self._error(401, f"Incorrect API key provided{quoted}", code="invalid_api_key")
        if status == 503:
            return self._error(
                503, f"The engine is currently overloaded{quoted}", etype="server_error",
                headers=headers,
            )  # fmt: skip
        if status == 400:
            return self._error(400, f"Invalid request{quoted}", code="invalid_value")
        return self._error(
            status, f"The server had an error processing your request{quoted}",
            etype="server_error",
        )  # fmt: skip

    # -- validation ------------------------------------------------------------
    def _validate(self, body: Any) -> Json:
        if not isinstance(body, dict):
            raise _Invalid("The request body must be a JSON object")
        if self.flavor == "mistral":
            details = _mistral_details(body)
            if details:
                raise _Invalid("Extra inputs are not permitted", detail=details)
            if isinstance(body.get("messages"), list):
                _mistral_tool_turns(body["messages"])
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Invalid("you must provide a model parameter")
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise _Invalid(
                "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
            )
        if not messages:
            raise _Invalid("[] is too short - 'messages'", "messages", "empty_array")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise _Invalid(
                    f"Invalid type for 'messages[{i}]'", f"messages[{i}]", "invalid_type"
                )
            role = message.get("role")
            if role not in _ROLES:
                raise _Invalid(
                    f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', "
                    "'user', 'function', 'tool', and 'developer'.",
                    f"messages[{i}].role",
                    "invalid_value",
                )
            if role == "tool" and not message.get("tool_call_id"):
                raise _Invalid(
                    "Missing parameter 'tool_call_id': messages with role 'tool' must have "
                    "a 'tool_call_id'.",
                    f"messages[{i}].tool_call_id",
                    "missing_required_parameter",
                )
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise _Invalid(
                    f"Invalid '{name}': must be a positive integer", name, "invalid_value"
                )
        return body

    # -- the deterministic model -------------------------------------------------
    def _tool_call(self, body: Json) -> Json | None:
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if not tools or choice == "none" or body["messages"][-1].get("role") != "user":
            return None
        tool = tools[0]
        if isinstance(choice, dict):
            wanted = choice.get("function", {}).get("name")
            tool = next((t for t in tools if t["function"]["name"] == wanted), tool)
        name = tool["function"]["name"]
        user_text = _text(body["messages"][-1])
        if self.flavor == "mistral":
            return {
                "id": mistral_call_id(name, user_text),
                "type": "function",
                "function": {"name": name, "arguments": json.dumps({"input": user_text})},
                "index": 0,
            }
        return {
            "id": f"call_fake_{count_tokens(user_text):04d}_{name}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps({"input": user_text})},
        }

    def _answer(self, body: Json) -> tuple[list[str], str]:
        messages = body["messages"]
        if messages[-1].get("role") == "tool":
            text = f"The tool answered: {_text(messages[-1])}"
        else:
            users = [m for m in messages if m.get("role") == "user"]
            text = _text(users[-1]) if users else "Hello! How can I help?"
        stop = body.get("stop")
        for s in [stop] if isinstance(stop, str) else stop or []:
            if s and s in text:
                text = text[: text.index(s)]
        pieces = _PIECE.findall(text)
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        if cap is not None and len(pieces) > cap:
            return pieces[:cap], "length"
        return pieces, "stop"

    def _usage(self, body: Json, completion: int) -> Json:
        prompt = sum(count_tokens(_text(m)) + 3 for m in body["messages"]) + 3
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    def completion(self, body: Json) -> Json:
        """The whole completion the fake answers to a valid `body`."""
        call = self._tool_call(body)
        if call is not None:
            message: Json = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
            completion_tokens = count_tokens(call["function"]["arguments"])
        else:
            pieces, finish = self._answer(body)
            text = "".join(pieces)
            message = {"role": "assistant", "content": text}
            completion_tokens = count_tokens(text)
        if self.flavor == "mistral":
            message.setdefault("tool_calls", None)
            message["prefix"] = False
            return {
                "id": "cmpl-fake0001",
                "object": "chat.completion",
                "created": CREATED,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {
                    k: v
                    for k, v in self._usage(body, completion_tokens).items()
                    if k in ("prompt_tokens", "completion_tokens", "total_tokens")
                },
            }
        message.update({"refusal": None, "annotations": []})
        return {
            "id": "chatcmpl-fake0001",
            "object": "chat.completion",
            "created": CREATED,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": self._usage(body, completion_tokens),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }

    def chunks(self, body: Json) -> list[Json]:
        """Every chunk the fake streams for a valid `body`, usage chunk included."""
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        mistral = self.flavor == "mistral"

        def chunk(delta: Json, finish: str | None = None) -> Json:
            out: Json = {
                "id": "chatcmpl-fake0001",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": body["model"],
                "system_fingerprint": FINGERPRINT,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                out["usage"] = None
            return out

        out: list[Json] = []
        call = self._tool_call(body)
        if call is not None and mistral:
            # Mistral: the whole call in one delta, with its index and without `type`.
            whole = {k: v for k, v in call.items() if k != "type"}
            out.append(chunk({"role": "assistant", "content": ""}))
            out.append(chunk({"content": "", "tool_calls": [whole]}))
            out.append(chunk({}, "tool_calls"))
            completion_tokens = count_tokens(call["function"]["arguments"])
        elif call is not None:
            head = {
                **call,
                "index": 0,
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            out.append(
                chunk({"role": "assistant", "content": None, "tool_calls": [head], "refusal": None})
            )
            args = call["function"]["arguments"]
            for i in range(0, len(args), 7):
                out.append(
                    chunk(
                        {"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 7]}}]}
                    )
                )
            out.append(chunk({}, "tool_calls"))
            completion_tokens = count_tokens(args)
        else:
            pieces, finish = self._answer(body)
            first: Json = {"role": "assistant", "content": ""}
            out.append(chunk(first if mistral else {**first, "refusal": None}))
            out.extend(chunk({"content": piece}) for piece in pieces)
            out.append(chunk({}, finish))
            completion_tokens = count_tokens("".join(pieces))
        usage = self._usage(body, completion_tokens)
        if mistral:
            out[-1]["usage"] = usage
        elif include_usage:
            out.append(
                {
                    "id": "chatcmpl-fake0001",
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": body["model"],
                    "system_fingerprint": FINGERPRINT,
                    "choices": [],
                    "usage": usage,
                }
            )
        return out

    # -- endpoints ---------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": "gpt-4o-2024-08-06", "object": "model",
                                         "created": CREATED, "owned_by": "system"}]}
        )  # fmt: skip

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        self.last_headers = {k.lower(): v for k, v in request.headers.items()}
        self.last_path = request.url.path
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
            self.last_body = None
        else:
            self.last_body = parsed if isinstance(parsed, dict) else None
        if isinstance(parsed, dict):
            self.requests.append(parsed)

        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not bearer:
            return self._error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if bearer != self.api_key:
            masked = bearer[:3] + "*" * max(0, len(bearer) - 7) + bearer[-4:]
            return self._error(
                401, f"Incorrect API key provided: {masked}.", code="invalid_api_key"
            )
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        if self.fail_status is not None:
            return self._failure(self.fail_status, bearer)
        if parsed is None:
            return self._error(
                400,
                "We could not parse the JSON body of your request.",
                code=None,
            )
        try:
            body = self._validate(parsed)
        except _Invalid as exc:
            if self.flavor == "mistral":
                return self._mistral_error(exc)
            return self._error(400, exc.message, param=exc.param, code=exc.code)
        if self.malformed:
            return Response(b'{"id": "chatcmpl-x", "choices": [', media_type="application/json")
        if body.get("stream"):
            return StreamingResponse(self._sse(body), media_type="text/event-stream")
        return JSONResponse(self.completion(body))

    async def _embeddings(self, request: Request) -> Response:
        raw = await request.body()
        self.last_headers = {k.lower(): v for k, v in request.headers.items()}
        self.last_path = request.url.path
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        self.last_body = parsed if isinstance(parsed, dict) else None
        if isinstance(parsed, dict):
            self.requests.append(parsed)
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or bearer != self.api_key:
            return self._error(401, "Incorrect API key provided.", code="invalid_api_key")
        if self.fail_status is not None:
            return self._failure(self.fail_status, bearer)
        if not isinstance(parsed, dict):
            return self._error(400, "We could not parse the JSON body of your request.")
        try:
            return JSONResponse(self.embeddings(parsed))
        except _Invalid as exc:
            status = 404 if exc.code == "model_not_found" else 400
            return self._error(status, exc.message, param=exc.param, code=exc.code)

    def embeddings(self, body: Json) -> Json:
        """The answer to an embeddings request, or `_Invalid` as OpenAI says it."""
        extra = sorted(set(body) - _EMBEDDING_FIELDS)
        if extra:
            raise _Invalid(f"Unrecognized request argument supplied: {extra[0]}")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Invalid("you must provide a model parameter")
        if model not in EMBEDDING_MODELS:
            raise _Invalid(
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        full, shortens = EMBEDDING_MODELS[model]
        items = _embedding_items(body.get("input"))
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _Invalid(
                f"Invalid value: '{encoding}'. Supported values are: 'float' and 'base64'.",
                "encoding_format",
                "invalid_value",
            )
        size = body.get("dimensions")
        if size is not None:
            if not shortens:
                raise _Invalid("This model does not support specifying dimensions.", "dimensions")
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= full:
                raise _Invalid(
                    f"Invalid value for 'dimensions': must be between 1 and {full}.",
                    "dimensions",
                    "invalid_value",
                )
        data = []
        for index, item in enumerate(items):
            vector = unit_vector(json.dumps(item), size or full)
            embedding: Any = vector
            if encoding == "base64":
                packed = struct.pack(f"<{len(vector)}f", *vector)
                embedding = base64.b64encode(packed).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(i) if isinstance(i, list) else count_tokens(i) for i in items)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _sse(self, body: Json) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.chunks(body)):
            if self.stream_error_after is not None and i == self.stream_error_after:
                quoted = f" (key {self.api_key})" if self.echo_key_in_errors else ""
                message = "The server had an error while processing your request."
                error = {
                    "error": {
                        "message": message + quoted,
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
                yield f"data: {json.dumps(error)}\n\n".encode()
                return
            if self.cut_stream_after is not None and i == self.cut_stream_after:
                # The server drops the connection without ending the chunked body.
                raise RuntimeError("fake upstream: connection cut mid-stream")
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            await anyio.sleep(0)
        yield b"data: [DONE]\n\n"


def _embedding_items(value: Any) -> list[Any]:
    """The inputs to embed, one per vector; OpenAI's refusals of empty ones."""
    invalid = _Invalid(
        "'$.input' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference.",
        "input",
    )
    if isinstance(value, str):
        if not value:
            raise invalid
        return [value]
    if not isinstance(value, list) or not value:
        raise invalid
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value]
    for item in value:
        if isinstance(item, str) and item:
            continue
        if isinstance(item, list) and item and all(isinstance(v, int) for v in item):
            continue
        raise invalid
    return list(value)


def unit_vector(text: str, size: int) -> list[float]:
    """A deterministic unit vector of `size` floats for `text`."""
    raw: list[float] = []
    block = 0
    while len(raw) < size:
        raw += [b / 128 - 1 for b in hashlib.sha256(f"{block}:{text}".encode()).digest()]
        block += 1
    norm = math.sqrt(sum(v * v for v in raw[:size])) or 1.0
    return [v / norm for v in raw[:size]]


def create_fake_openai(**kwargs: Any) -> FakeOpenAI:
    """A new fake OpenAI upstream (an ASGI app); keyword arguments as `FakeOpenAI`."""
    return FakeOpenAI(**kwargs)
