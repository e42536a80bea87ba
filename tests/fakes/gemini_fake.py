"""A strict fake of Google's Gemini API (`generateContent`, `streamGenerateContent`,
`batchEmbedContents`).

It speaks the documented v1beta wire format and refuses what the real service
refuses, with Google-shaped errors (`{"error": {code, message, status,
details}}`): a missing or wrong API key, an unknown model, fields the proto
JSON parser does not know (it accepts a field's camelCase JSON name and its
snake_case proto name, like the real parser, and nothing else), roles other
than `user`/`model`, empty `contents` or `parts`, empty text, function
responses without a name, out-of-range sampling values, OBJECT parameter
schemas without properties, ARRAY schemas without items, function-call turns
in the wrong place or answered by the wrong number of responses, built-in
tools (`googleSearch`, `codeExecution`...) offered with function declarations
(which `gemini-3*` models take only with `includeServerSideToolInvocations`),
and (for `gemini-3*` models) a replayed function call without its thought
signature.

`batchEmbedContents` serves the `embedding_models` only (and they serve nothing
else), and refuses unknown fields, an empty or over-long batch, a request item
whose `model` is missing or differs from the URL's, content without parts or
with a non-text or empty part, an unknown `taskType` and an
`outputDimensionality` out of the model's range. Its vectors are deterministic
(a hash of the text) and a smaller `outputDimensionality` gives a prefix of the
full vector, as Gemini's Matryoshka embeddings do. Like the real service it
reports no token counts, unless `embedding_usage` is set.

Its "model" is deterministic: with function declarations offered, a calling
mode other than NONE and a last turn of user text, it calls the first allowed
function (or the first allowed of those named in `tool_names` when set, none
for `[]`; with `tool_args` as its args when set); after function responses it
reports them; otherwise it echoes the last user text. It honours
`maxOutputTokens` (one token per word), stop sequences, `candidateCount` and
JSON mode. Tests set knobs to make it fail and read `requests` to see what the
gateway sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["FAKE_KEY", "GeminiFake", "RecordedRequest", "embedding_vector"]

FAKE_KEY = "AIzaFAKE-gemini-test-key-0123456789abcdef"
SKIP_SIGNATURE = "skip_thought_signature_validator"
IMAGE_TOKENS = 258  # what Gemini counts for a small image

# -- the proto messages, by camelCase JSON name ------------------------------------
# A value is a message name, a scalar kind, or a one-element list for repeated.
ANY = "any"
_MESSAGES: dict[str, dict[str, Any]] = {
    "GenerateContentRequest": {
        "model": "string",
        "contents": ["Content"],
        "systemInstruction": "Content",
        "tools": ["Tool"],
        "toolConfig": "ToolConfig",
        "safetySettings": ["SafetySetting"],
        "generationConfig": "GenerationConfig",
        "cachedContent": "string",
        "serviceTier": "string",
        "store": "bool",
    },
    "Content": {"role": "string", "parts": ["Part"]},
    "Part": {
        "text": "string",
        "inlineData": "Blob",
        "fileData": "FileData",
        "functionCall": "FunctionCall",
        "functionResponse": "FunctionResponse",
        "executableCode": ANY,
        "codeExecutionResult": ANY,
        "thought": "bool",
        "thoughtSignature": "bytes",
        "videoMetadata": ANY,
        "partMetadata": ANY,
        "mediaResolution": ANY,
    },
    "Blob": {"mimeType": "string", "data": "bytes"},
    "FileData": {"mimeType": "string", "fileUri": "string"},
    "FunctionCall": {"id": "string", "name": "string", "args": "struct"},
    "FunctionResponse": {
        "id": "string",
        "name": "string",
        "response": "struct",
        "parts": [ANY],
        "willContinue": "bool",
        "scheduling": "string",
    },
    "Tool": {
        "functionDeclarations": ["FunctionDeclaration"],
        "googleSearch": ANY,
        "googleSearchRetrieval": ANY,
        "codeExecution": ANY,
        "urlContext": ANY,
        "fileSearch": ANY,
        "googleMaps": ANY,
        "computerUse": ANY,
    },
    "FunctionDeclaration": {
        "name": "string",
        "description": "string",
        "behavior": "string",
        "parameters": "Schema",
        "parametersJsonSchema": ANY,
        "response": "Schema",
        "responseJsonSchema": ANY,
    },
    "Schema": {
        "type": "type",
        "format": "string",
        "title": "string",
        "description": "string",
        "nullable": "bool",
        "enum": ["string"],
        "maxItems": "int",
        "minItems": "int",
        "properties": {"map": "Schema"},
        "required": ["string"],
        "minProperties": "int",
        "maxProperties": "int",
        "minLength": "int",
        "maxLength": "int",
        "pattern": "string",
        "example": ANY,
        "anyOf": ["Schema"],
        "propertyOrdering": ["string"],
        "default": ANY,
        "items": "Schema",
        "minimum": "number",
        "maximum": "number",
    },
    "ToolConfig": {
        "functionCallingConfig": "FunctionCallingConfig",
        "retrievalConfig": ANY,
        "includeServerSideToolInvocations": "bool",
    },
    "FunctionCallingConfig": {"mode": "mode", "allowedFunctionNames": ["string"]},
    "SafetySetting": {"category": "string", "threshold": "string"},
    "GenerationConfig": {
        "stopSequences": ["string"],
        "responseMimeType": "string",
        "responseSchema": "Schema",
        "responseJsonSchema": ANY,
        "responseModalities": ["string"],
        "candidateCount": "int",
        "maxOutputTokens": "int",
        "temperature": "number",
        "topP": "number",
        "topK": "int",
        "seed": "int",
        "presencePenalty": "number",
        "frequencyPenalty": "number",
        "responseLogprobs": "bool",
        "logprobs": "int",
        "enableEnhancedCivicAnswers": "bool",
        "speechConfig": ANY,
        "thinkingConfig": "ThinkingConfig",
        "imageConfig": ANY,
        "mediaResolution": "string",
    },
    "ThinkingConfig": {
        "includeThoughts": "bool",
        "thinkingBudget": "int",
        "thinkingLevel": "string",
    },
    "BatchEmbedContentsRequest": {"requests": ["EmbedContentRequest"]},
    "EmbedContentRequest": {
        "model": "string",
        "content": "Content",
        "taskType": "string",
        "title": "string",
        "outputDimensionality": "int",
    },
}
_TASK_TYPES = {
    "TASK_TYPE_UNSPECIFIED",
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
}
MAX_EMBED_BATCH = 100
_TYPES = {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
_MODES = {"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"}
_DATA_FIELDS = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,63}")
# Built-in tools that Gemini 2.x will not take with function declarations, and
# Gemini 3 only with `toolConfig.includeServerSideToolInvocations`.
_BUILT_IN_TOOLS = (
    "googleSearch",
    "googleSearchRetrieval",
    "codeExecution",
    "urlContext",
    "fileSearch",
    "googleMaps",
)


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


class BadRequest(Exception):
    """A 400 INVALID_ARGUMENT, with the real service's wording where known."""


def _fail(path: str, message: str) -> BadRequest:
    return BadRequest(f"* GenerateContentRequest.{path}: {message}" if path else message)


def _check(value: Any, kind: Any, path: str) -> Any:
    """Validate one value against a proto type; return it with camelCase keys."""
    if kind == ANY:
        return value
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise _fail(path, f"Invalid value (TYPE_MESSAGE), {json.dumps(value)[:40]}")
        return [_check(v, kind[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(kind, dict):  # map<string, X>
        if not isinstance(value, dict):
            raise _fail(path, "Invalid value, expected an object")
        return {k: _check(v, kind["map"], f"{path}[{k!r}]") for k, v in value.items()}
    if kind in _MESSAGES:
        if not isinstance(value, dict):
            raise BadRequest(
                f"Invalid JSON payload received. Invalid value at '{path}' (type.googleapis.com/"
                f"google.ai.generativelanguage.v1beta.{kind}), {json.dumps(value)[:40]}"
            )
        fields = _MESSAGES[kind]
        by_name = {**{_snake(f): f for f in fields}, **{f: f for f in fields}}
        out: dict[str, Any] = {}
        for key, item in value.items():
            camel = by_name.get(key)
            if camel is None:
                where = f" at '{path}'" if path else ""
                raise BadRequest(
                    f'Invalid JSON payload received. Unknown name "{key}"{where}: '
                    "Cannot find field."
                )
            if camel in out:
                raise BadRequest(f"Invalid JSON payload received. Duplicate field {key}.")
            sub = f"{path}.{_snake(camel)}" if path else _snake(camel)
            out[camel] = _check(item, fields[camel], sub)
        return out
    ok = {
        "string": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, str) and value.lstrip("-").isdigit()),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "struct": isinstance(value, dict),
        "bytes": isinstance(value, str) and _is_base64(value),
        "type": isinstance(value, str) and value.upper() in _TYPES,
        "mode": isinstance(value, str) and value in _MODES,
    }[kind]
    if not ok:
        raise BadRequest(
            f"Invalid JSON payload received. Invalid value at '{path}' ({kind.upper()}), "
            f"{json.dumps(value)[:40]}"
        )
    return value


def _is_base64(value: str) -> bool:
    # Proto JSON takes standard and URL-safe base64, padded or not.
    text = value.replace("-", "+").replace("_", "/")
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


@dataclass
class RecordedRequest:
    """One request as the fake saw it."""

    method: str
    path: str
    model: str
    action: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class GeminiFake:
    """The fake service; an ASGI app (`httpx.ASGITransport(app=fake)`)."""

    api_key: str = FAKE_KEY
    models: tuple[str, ...] = (
        "gemini-2.5-flash-lite",
        "gemini-2.5-flash",
        "gemini-3-flash-preview",
    )
    # Knobs: an error status for every call (429, 500, 503, ...), a stream that
    # ends before its finishReason, an `error` event mid-stream, a safety block
    # ("prompt" or "response"), thinking tokens to report, and echoing the key
    # in error messages (as some Google errors quote the request URL).
    fail_status: int | None = None
    retry_delay: str | None = "7s"
    cut_stream: bool = False
    error_mid_stream: bool = False
    block: str | None = None
    thoughts_tokens: int = 0
    leak_key_in_errors: bool = False
    # Which declared functions it may call: all allowed ones (None), those of the
    # allowed ones named here, in this order (the first is called), or none ([]:
    # it answers with text). And the call's args, instead of ones made from the
    # schema and the last user text.
    tool_names: list[str] | None = None
    tool_args: dict[str, Any] | None = None
    # Embedding models and their full vector sizes.
    embedding_models: dict[str, int] = field(
        default_factory=lambda: {"gemini-embedding-001": 3072, "text-embedding-004": 768}
    )
    # Report `usageMetadata.promptTokenCount` on embeddings (the real API does not).
    embedding_usage: bool = False
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route(f"/{version}/models/{{rest:path}}", self._handle, methods=["POST"])
                for version in ("v1beta", "v1")
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @property
    def last(self) -> RecordedRequest:
        """The last request received."""
        return self.requests[-1]

    @property
    def last_body(self) -> dict[str, Any]:
        """The last request's JSON body."""
        body: dict[str, Any] = self.last.body
        return body

    # -- errors ----------------------------------------------------------------
    def _error(
        self,
        code: int,
        status: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        key: str = "",
    ) -> JSONResponse:
        if self.leak_key_in_errors and key:
            message += f" (request: https://generativelanguage.googleapis.com/v1beta?key={key})"
        error: dict[str, Any] = {"code": code, "message": message, "status": status}
        if details:
            error["details"] = details
        return JSONResponse({"error": error}, status_code=code)

    def _knob_error(self, key: str) -> JSONResponse | None:
        if self.fail_status is None:
            return None
        if self.fail_status == 429:
            details: list[dict[str, Any]] = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
            ]
            if self.retry_delay:
                details.append(
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": self.retry_delay,
                    }
                )
            return self._error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details.",
                details,
                key,
            )
        statuses = {
            400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
            403: ("PERMISSION_DENIED", "The caller does not have permission"),
            500: (
                "INTERNAL",
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting",
            ),
            503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
            504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
        }
        status, message = statuses.get(self.fail_status, ("UNKNOWN", "Unknown error."))
        return self._error(self.fail_status, status, message, key=key)

    # -- the endpoint ------------------------------------------------------------
    async def _handle(self, request: Request) -> Response:
        rest = request.path_params["rest"]
        model, _, action = rest.partition(":")
        version = request.url.path.split("/")[1]
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        self.requests.append(
            RecordedRequest(
                request.method,
                request.url.path,
                model,
                action,
                dict(request.query_params),
                dict(request.headers),
                body,
            )
        )
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key") or ""
        if not key:
            return self._error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if key != self.api_key:
            return self._error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
                key,
            )
        if action not in (
            "generateContent", "streamGenerateContent", "batchEmbedContents", "countTokens"
        ):  # fmt: skip
            return self._error(404, "NOT_FOUND", f"Method not found: {action}")
        serves = self.embedding_models if action == "batchEmbedContents" else self.models
        if model not in serves:
            return self._error(
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version {version}, or is not supported for "
                f"{action}. Call ListModels to see the list of available models and their "
                "supported methods.",
            )
        knob = self._knob_error(key)
        if knob is not None:
            return knob
        if body is None:
            return self._error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.", key=key)
        if action == "batchEmbedContents":
            try:
                requests = self.validate_embeddings(body, model)
            except BadRequest as exc:
                return self._error(400, "INVALID_ARGUMENT", str(exc), key=key)
            return JSONResponse(self.embed(requests, model))
        if action == "countTokens":
            # Either bare `contents` or a whole `generateContentRequest`, as the API takes.
            inner = body.get("generateContentRequest") if isinstance(body, dict) else None
            if isinstance(inner, dict):
                if inner.get("model") != f"models/{model}":
                    return self._error(
                        400, "INVALID_ARGUMENT", "generateContentRequest.model: must name the "
                        "model of the URL", key=key,
                    )  # fmt: skip
                inner = {k: v for k, v in inner.items() if k != "model"}
            try:
                checked = self.validate(inner if isinstance(inner, dict) else body, model)
            except BadRequest as exc:
                return self._error(400, "INVALID_ARGUMENT", str(exc), key=key)
            return JSONResponse({"totalTokens": max(1, _count_prompt(checked))})
        try:
            checked = self.validate(body, model)
            self._check_tool_combination(checked, model)
        except BadRequest as exc:
            return self._error(400, "INVALID_ARGUMENT", str(exc), key=key)
        responses = self.answer(checked, model)
        if action == "generateContent":
            return JSONResponse(_merge(responses))
        if request.query_params.get("alt") != "sse":
            # Without alt=sse Google streams one JSON array.
            return JSONResponse(responses)
        return StreamingResponse(self._sse(responses), media_type="text/event-stream")

    async def _sse(self, responses: list[dict[str, Any]]) -> AsyncIterator[bytes]:
        for i, response in enumerate(responses):
            last = i == len(responses) - 1
            if last and self.error_mid_stream:
                error = {
                    "code": 500,
                    "message": "Internal error encountered.",
                    "status": "INTERNAL",
                }
                yield b"data: " + json.dumps({"error": error}).encode() + b"\r\n\r\n"
                return
            if last and self.cut_stream:
                return
            yield b"data: " + json.dumps(response, separators=(",", ":")).encode() + b"\r\n\r\n"

    # -- validation ----------------------------------------------------------------
    def validate(self, body: Any, model: str) -> dict[str, Any]:
        """The body with camelCase keys, or `BadRequest` as the real service says it."""
        checked: dict[str, Any] = _check(body, "GenerateContentRequest", "")
        contents = checked.get("contents")
        if not contents:
            raise _fail("contents", "contents is not specified")
        for i, content in enumerate(contents):
            role = content.get("role", "user")
            if role not in ("user", "model"):
                raise BadRequest(
                    f"Please use a valid role: user, model. (got '{role}' in contents[{i}])"
                )
            self._check_parts(content.get("parts"), f"contents[{i}]")
        system = checked.get("systemInstruction")
        if system is not None:
            self._check_parts(system.get("parts"), "system_instruction")
        self._check_turns(contents, model)
        for t, tool in enumerate(checked.get("tools", [])):
            for d, decl in enumerate(tool.get("functionDeclarations", [])):
                where = f"tools[{t}].function_declarations[{d}]"
                if not _FUNCTION_NAME.fullmatch(decl.get("name", "")):
                    raise _fail(
                        f"{where}.name",
                        "Invalid function name. Must start with a letter or an underscore. "
                        "Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), "
                        "colons (:), or dashes (-), with a maximum length of 64.",
                    )
                if "parameters" in decl:
                    _check_schema(decl["parameters"], f"{where}.parameters", top=True)
        config = checked.get("generationConfig", {})
        self._check_config(config)
        calling = checked.get("toolConfig", {}).get("functionCallingConfig", {})
        if calling.get("allowedFunctionNames") and calling.get("mode") not in ("ANY", "VALIDATED"):
            raise _fail(
                "tool_config.function_calling_config.allowed_function_names",
                "allowed_function_names can only be set when mode is ANY",
            )
        return checked

    def validate_embeddings(self, body: Any, model: str) -> list[dict[str, Any]]:
        """The batch's requests with camelCase keys, or `BadRequest` as the service says it."""
        checked: dict[str, Any] = _check(body, "BatchEmbedContentsRequest", "")
        requests: list[dict[str, Any]] = checked.get("requests", [])
        where = "* BatchEmbedContentsRequest.requests"
        if not requests:
            raise BadRequest(f"{where}: requests must not be empty")
        if len(requests) > MAX_EMBED_BATCH:
            raise BadRequest(f"{where}: at most {MAX_EMBED_BATCH} requests can be in one batch")
        full = self.embedding_models[model]
        for i, item in enumerate(requests):
            name = item.get("model")
            if not name:
                raise BadRequest(f"{where}[{i}].model: Field is required")
            if name != f"models/{model}":
                raise BadRequest(
                    f"{where}[{i}].model: Model names should match: models/{model} vs {name}"
                )
            parts = (item.get("content") or {}).get("parts")
            if not parts:
                raise BadRequest(f"{where}[{i}].content.parts: contents.parts must not be empty.")
            for j, part in enumerate(parts):
                if set(part) != {"text"}:
                    raise BadRequest(
                        f"{where}[{i}].content.parts[{j}]: only text parts can be embedded "
                        f"by {model}"
                    )
                if not part["text"]:
                    raise BadRequest(
                        f"{where}[{i}].content.parts[{j}].text: text must not be empty"
                    )
            task = item.get("taskType")
            if task is not None and task not in _TASK_TYPES:
                raise BadRequest(
                    f"Invalid JSON payload received. Invalid value at 'requests[{i}].task_type' "
                    f"(type.googleapis.com/google.ai.generativelanguage.v1beta.TaskType), "
                    f"{json.dumps(task)}"
                )
            size = item.get("outputDimensionality")
            if size is not None and not 1 <= int(size) <= full:
                raise BadRequest(
                    f"{where}[{i}].output_dimensionality: must be between 1 and {full} for {model}"
                )
        return requests

    def embed(self, requests: list[dict[str, Any]], model: str) -> dict[str, Any]:
        """The `batchEmbedContents` answer for validated requests."""
        full = self.embedding_models[model]
        answer: dict[str, Any] = {"embeddings": []}
        words = 0
        for item in requests:
            text = " ".join(p["text"] for p in item["content"]["parts"])
            words += len(text.split())
            size = int(item.get("outputDimensionality") or full)
            answer["embeddings"].append({"values": embedding_vector(text, full)[:size]})
        if self.embedding_usage:
            answer["usageMetadata"] = {"promptTokenCount": words}
        return answer

    @staticmethod
    def _check_parts(parts: Any, where: str) -> None:
        if not parts:
            raise _fail(f"{where}.parts", "contents.parts must not be empty.")
        for j, part in enumerate(parts):
            present = [f for f in _DATA_FIELDS if f in part]
            if len(present) != 1:
                raise _fail(
                    f"{where}.parts[{j}].data",
                    "required oneof field 'data' must have one initialized field",
                )
            if "text" in part and not part["text"]:
                raise BadRequest(
                    "Unable to submit request because it has an empty text parameter. Add a "
                    "value to the parameter and try again."
                )
            blob = part.get("inlineData")
            if blob is not None and not (blob.get("mimeType") and blob.get("data")):
                raise _fail(f"{where}.parts[{j}].inline_data", "mime_type and data are required")
            file = part.get("fileData")
            if file is not None and not file.get("fileUri"):
                raise _fail(f"{where}.parts[{j}].file_data.file_uri", "file_uri is required")
            for name in ("functionCall", "functionResponse"):
                if name in part and not part[name].get("name"):
                    raise _fail(f"{where}.parts[{j}].{_snake(name)}.name", "Name cannot be empty.")

    @staticmethod
    def _check_turns(contents: list[dict[str, Any]], model: str) -> None:
        # Function-calling turn rules of the real service, and Gemini 3's demand
        # for thought signatures on the current turn's function calls.
        def kinds(content: dict[str, Any], kind: str) -> list[dict[str, Any]]:
            return [p for p in content["parts"] if kind in p]

        current = 0
        for i, content in enumerate(contents):
            if content.get("role", "user") == "user" and any("text" in p for p in content["parts"]):
                current = i
        for i, content in enumerate(contents):
            calls = kinds(content, "functionCall")
            if not calls:
                continue
            previous = contents[i - 1] if i else None
            if previous is None or previous.get("role", "user") != "user":
                raise BadRequest(
                    "Please ensure that function call turn comes immediately after a user turn "
                    "or after a function response turn."
                )
            following = contents[i + 1] if i + 1 < len(contents) else None
            if following is not None and len(kinds(following, "functionResponse")) != len(calls):
                raise BadRequest(
                    "Please ensure that the number of function response parts is equal to the "
                    "number of function call parts of the function call turn."
                )
            if model.startswith("gemini-3") and i > current and "thoughtSignature" not in calls[0]:
                raise BadRequest(
                    f"Function call `{calls[0]['functionCall']['name']}` in the {i}. content "
                    "block is missing a `thought_signature`."
                )

    @staticmethod
    def _check_tool_combination(body: dict[str, Any], model: str) -> None:
        # Generation refuses built-in tools beside function declarations: Gemini 2.x
        # always, Gemini 3 unless server-side tool invocations are included.
        tools = body.get("tools", [])
        if not any(tool.get("functionDeclarations") for tool in tools):
            return
        if not any(name in tool for tool in tools for name in _BUILT_IN_TOOLS):
            return
        if not model.startswith("gemini-3"):
            raise BadRequest("Tool use with function calling is unsupported by the model.")
        if not body.get("toolConfig", {}).get("includeServerSideToolInvocations"):
            raise BadRequest(
                "Please enable tool_config.include_server_side_tool_invocations to use Built-in "
                "tools with Function calling."
            )

    @staticmethod
    def _check_config(config: dict[str, Any]) -> None:
        path = "generation_config"
        temperature = config.get("temperature")
        if temperature is not None and not 0 <= temperature <= 2:
            raise _fail(f"{path}.temperature", "temperature must be in the range [0.0, 2.0]")
        top_p = config.get("topP")
        if top_p is not None and not 0 <= top_p <= 1:
            raise _fail(f"{path}.top_p", "top_p must be in the range [0.0, 1.0]")
        count = config.get("candidateCount")
        if count is not None and not 1 <= int(count) <= 8:
            raise _fail(f"{path}.candidate_count", "candidate_count must be in [1, 8]")
        if len(config.get("stopSequences", [])) > 5:
            raise _fail(f"{path}.stop_sequences", "at most 5 stop sequences are allowed")
        if "maxOutputTokens" in config and int(config["maxOutputTokens"]) < 1:
            raise _fail(f"{path}.max_output_tokens", "max_output_tokens must be positive")
        schema = config.get("responseSchema")
        if schema is not None:
            if config.get("responseMimeType") != "application/json":
                raise _fail(
                    f"{path}.response_mime_type",
                    "response_schema requires response_mime_type application/json",
                )
            _check_schema(schema, f"{path}.response_schema", top=False)

    # -- the deterministic model -----------------------------------------------------
    def answer(self, body: dict[str, Any], model: str) -> list[dict[str, Any]]:
        """The answer as the chunks a stream would carry (one call merges them)."""
        config = body.get("generationConfig", {})
        prompt_tokens = max(1, _count_prompt(body))
        response_id = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:22]
        meta = {"modelVersion": model, "responseId": response_id}
        if self.block == "prompt":
            return [
                {
                    "promptFeedback": {
                        "blockReason": "SAFETY",
                        "safetyRatings": [
                            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}
                        ],
                    },
                    "usageMetadata": {
                        "promptTokenCount": prompt_tokens,
                        "totalTokenCount": prompt_tokens,
                    },
                    **meta,
                }
            ]
        n = int(config.get("candidateCount", 1))
        call = self._function_call(body)
        chunks: list[list[dict[str, Any]]]  # per chunk, the parts of each candidate
        finish = "STOP"
        if self.block == "response":
            chunks, finish = [[]], "SAFETY"
            output_tokens = 0
        elif call is not None:
            part: dict[str, Any] = {"functionCall": call}
            if model.startswith("gemini-3"):
                part["thoughtSignature"] = base64.b64encode(
                    b"sig:" + call["name"].encode()
                ).decode()
            chunks = [[part]]
            output_tokens = len(json.dumps(call["args"]).split()) + 1
        else:
            text = self._text(body)
            words = re.findall(r"\S+\s*", text) or [text]
            cap = config.get("maxOutputTokens")
            if cap is not None and len(words) > int(cap):
                words, finish = words[: int(cap)], "MAX_TOKENS"
            text = "".join(words)
            for stop in config.get("stopSequences", []):
                if stop in text:
                    text, finish = text[: text.index(stop)], "STOP"
                    words = re.findall(r"\S+\s*", text)
            output_tokens = len(words)
            # Several text chunks, split between words, as the real stream does.
            size = max(1, -(-len(words) // 3))
            pieces = ["".join(words[k : k + size]) for k in range(0, len(words), size)]
            chunks = [[{"text": p}] for p in pieces if p] or [[]]
            if config.get("thinkingConfig", {}).get("includeThoughts"):
                # A thinking model's thought summary comes first, marked `thought`.
                chunks.insert(0, [{"text": "Thinking it over.", "thought": True}])
        candidates_tokens = output_tokens * n
        total = prompt_tokens + candidates_tokens + self.thoughts_tokens
        final_usage: dict[str, Any] = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": candidates_tokens,
            "totalTokenCount": total,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
        }
        if self.thoughts_tokens:
            final_usage["thoughtsTokenCount"] = self.thoughts_tokens
        responses = []
        for c, parts in enumerate(chunks):
            last = c == len(chunks) - 1
            candidates = []
            for index in range(n):
                candidate: dict[str, Any] = {}
                if parts:
                    candidate["content"] = {"parts": parts, "role": "model"}
                if last:
                    candidate["finishReason"] = finish
                    if finish == "SAFETY":
                        candidate["safetyRatings"] = [
                            {
                                "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                                "probability": "HIGH",
                                "blocked": True,
                            }
                        ]
                if index:  # proto JSON leaves out a zero index
                    candidate["index"] = index
                candidates.append(candidate)
            usage = (
                final_usage
                if last
                else {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}
            )
            responses.append({"candidates": candidates, "usageMetadata": usage, **meta})
        return responses

    def _function_call(self, body: dict[str, Any]) -> dict[str, Any] | None:
        declarations = [
            d for tool in body.get("tools", []) for d in tool.get("functionDeclarations", [])
        ]
        calling = body.get("toolConfig", {}).get("functionCallingConfig", {})
        mode = calling.get("mode", "AUTO")
        last = body["contents"][-1]
        last_is_text = last.get("role", "user") == "user" and any(
            "text" in p or "inlineData" in p or "fileData" in p for p in last["parts"]
        )
        if not declarations or mode == "NONE" or (mode != "ANY" and not last_is_text):
            return None
        allowed = calling.get("allowedFunctionNames") or [d["name"] for d in declarations]
        names = allowed if self.tool_names is None else self.tool_names
        chosen = next(
            (d for name in names if name in allowed for d in declarations if d["name"] == name),
            None,
        )
        if chosen is None:
            return None
        if self.tool_args is not None:
            return {"name": chosen["name"], "args": dict(self.tool_args)}
        text = " ".join(p["text"] for p in last["parts"] if "text" in p) or "input"
        schema = chosen.get("parameters") or chosen.get("parametersJsonSchema") or {}
        args = _value_for(schema, text)
        return {"name": chosen["name"], "args": args if isinstance(args, dict) else {}}

    @staticmethod
    def _text(body: dict[str, Any]) -> str:
        last = body["contents"][-1]
        responses = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
        if responses:
            text = " ".join(
                f"{r['name']} returned {json.dumps(r.get('response', {}), sort_keys=True)}."
                for r in responses
            )
        else:
            users = [c for c in body["contents"] if c.get("role", "user") == "user"]
            parts = users[-1]["parts"] if users else []
            texts = [p["text"] for p in parts if "text" in p]
            media = [
                (p.get("inlineData") or p.get("fileData") or {}).get("mimeType", "file")
                for p in parts
                if "inlineData" in p or "fileData" in p
            ]
            text = " ".join(texts) or "(no text)"
            if media:
                text += " [seen: " + ", ".join(media) + "]"
        config = body.get("generationConfig", {})
        if config.get("responseMimeType") == "application/json":
            schema = config.get("responseSchema")
            value = _value_for(schema, text) if schema else {"echo": text}
            text = json.dumps(value)
        return text


def embedding_vector(text: str, size: int) -> list[float]:
    """The fake's full-size embedding of `text`: deterministic values in [-1, 1)."""
    out: list[float] = []
    block = 0
    while len(out) < size:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        out += [round(b / 128 - 1, 6) for b in digest]
        block += 1
    return out[:size]


def _check_schema(schema: dict[str, Any], path: str, *, top: bool) -> None:
    kind = str(schema.get("type", "")).upper()
    if kind in ("", "TYPE_UNSPECIFIED") and "anyOf" not in schema:
        raise BadRequest(
            f"Unable to submit request because `{path}` schema didn't specify the schema type "
            "field."
        )
    if kind == "OBJECT" and top and not schema.get("properties"):
        raise _fail(f"{path}.properties", "should be non-empty for OBJECT type")
    if kind == "ARRAY" and "items" not in schema:
        raise _fail(f"{path}.items", "missing field.")
    if "enum" in schema and kind not in ("STRING", ""):
        raise _fail(f"{path}.enum", "only allowed for STRING type")
    for name, sub in schema.get("properties", {}).items():
        _check_schema(sub, f"{path}.properties[{name}]", top=False)
    for name in schema.get("required", []):
        if name not in schema.get("properties", {}):
            raise _fail(f"{path}.required[{name}]", "property is not defined")
    if "items" in schema:
        _check_schema(schema["items"], f"{path}.items", top=False)
    for i, sub in enumerate(schema.get("anyOf", [])):
        _check_schema(sub, f"{path}.any_of[{i}]", top=False)


def _value_for(schema: dict[str, Any], text: str) -> Any:
    """A value that fits a Gemini schema, made from `text`."""
    kind = str(schema.get("type", "")).upper()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "OBJECT" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: _value_for(sub, text) for name, sub in props.items()}
    if kind == "ARRAY":
        return [_value_for(schema.get("items", {}), text)]
    if kind == "INTEGER":
        return 1
    if kind == "NUMBER":
        return 1.5
    if kind == "BOOLEAN":
        return True
    if schema.get("anyOf"):
        return _value_for(schema["anyOf"][0], text)
    return text


def _count_prompt(body: dict[str, Any]) -> int:
    def parts(contents: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        for content in contents:
            yield from content.get("parts", [])

    everything = list(parts(body["contents"]))
    if "systemInstruction" in body:
        everything += list(parts([body["systemInstruction"]]))
    tokens = 0
    for part in everything:
        if "text" in part:
            tokens += len(part["text"].split())
        elif "inlineData" in part or "fileData" in part:
            tokens += IMAGE_TOKENS
        else:
            tokens += len(json.dumps(part).split())
    for tool in body.get("tools", []):
        tokens += len(json.dumps(tool).split())
    return tokens


def _merge(responses: list[dict[str, Any]]) -> dict[str, Any]:
    """The one response `generateContent` gives for what a stream would carry."""
    merged: dict[str, Any] = json.loads(json.dumps(responses[-1]))
    by_index: dict[int, list[dict[str, Any]]] = {}
    for response in responses:
        for candidate in response.get("candidates", []):
            by_index.setdefault(candidate.get("index", 0), []).extend(
                candidate.get("content", {}).get("parts", [])
            )
    for candidate in merged.get("candidates", []):
        parts = by_index.get(candidate.get("index", 0), [])
        thought = "".join(p["text"] for p in parts if "text" in p and p.get("thought"))
        text = "".join(p["text"] for p in parts if "text" in p and not p.get("thought"))
        others = [p for p in parts if "text" not in p]
        joined = (
            ([{"text": thought, "thought": True}] if thought else [])
            + ([{"text": text}] if text else [])
            + others
        )
        if joined:
            candidate["content"] = {"parts": joined, "role": "model"}
    return merged
