"""Google's Gemini API (`generateContent`): requests, answers, streams and errors.

All knowledge of Gemini's wire format lives here. Decisions worth knowing:

- System and developer messages, wherever they appear, join (in order) into the
  one `systemInstruction` Gemini has.
- Gemini's function calls carry no id (newer models send an optional one). Ours
  are synthesized as `call_` + 24 hex digits of a hash of the answer's
  `responseId`, the call's position, its name and arguments: the same answer
  gives the same ids streamed or not, and distinct answers distinct ids.
  Synthesized ids are never sent back to Gemini; ids Gemini gave are.
- Thinking models sign their function calls (`thoughtSignature`) and Gemini 3
  refuses a replayed call without its signature. The signature travels to the
  client on the tool call as `extra_content.google.thought_signature` (the
  shape of Google's own OpenAI-compatible endpoint) and comes back from there;
  where a client dropped it, Google's documented placeholder
  `skip_thought_signature_validator` is sent instead (not for Gemini 1.x/2.x,
  which never require one).
- Tool parameters and `json_schema` response formats are JSON Schema; Gemini
  takes an OpenAPI subset (`Schema`). Local `$ref`s are inlined, `oneOf`
  becomes `anyOf`, `type: [X, "null"]` and null members of `anyOf` become
  `nullable`, string `const` becomes `enum`, and every key Gemini's `Schema`
  does not know is dropped (`additionalProperties`, `$schema`, `strict`,
  `$defs`, `examples`, `patternProperties`, ...), as are formats it rejects.
  A function whose parameters have no properties is declared without
  `parameters`, because Gemini rejects an OBJECT schema with no properties;
  a schema with no type (JSON Schema's "anything") is declared a STRING and
  an array without `items` an array of strings, because Gemini rejects both.
- `image_url` parts: `data:` URLs become `inlineData`; `http(s)://` and
  `gs://` URLs become `fileData` (Gemini fetches public and signed URLs itself;
  the gateway never fetches a client's URL), with a MIME type guessed from the
  path's extension when it has one. Other schemes are a 400. Gemini reads
  `gs://` objects and Files-API URLs (on `generativelanguage.googleapis.com`)
  with the gateway's own credentials, so those are a 400 too unless the
  provider table sets `allow_file_uris = true`.
- Tool results: a JSON-object result is sent as the `functionResponse`'s
  `response`; anything else as `{"content": text}`.
- Embeddings use `:batchEmbedContents`, up to 100 texts a call (Gemini's
  limit; longer inputs take several calls, in order). Gemini embeds text only:
  token arrays and empty strings are a 400. `dimensions` becomes
  `outputDimensionality`. Gemini's answer carries no token counts, so usage
  is reported as 0 unless a `usageMetadata.promptTokenCount` comes back; the
  router then counts its own estimate (4 characters a token) against the
  key's quota and marks it estimated in the ledger.
- `user` and other fields Gemini has no equivalent for are ignored. Errors:
  a bad key (even Gemini's 400 `API_KEY_INVALID`) is 502
  `upstream_auth_failed`; `FAILED_PRECONDITION` (unsupported region, billing)
  is 502 too, since no client request could succeed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import mimetypes
import re
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from axione_asgi.errors import (
    AxioneError,
    InvalidRequest,
    RateLimited,
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
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ImagePart,
    ResponseMessage,
    TextPart,
    ToolCall,
    ToolChoiceNamed,
    Usage,
    new_id,
    now,
)
from axione_asgi.providers.base import HTTPProvider

__all__ = [
    "SKIP_SIGNATURE",
    "GeminiProvider",
    "from_gemini",
    "gemini_schema",
    "to_gemini",
    "tool_call_id",
]

JSON = dict[str, Any]

# Gemini's `batchEmbedContents` takes at most this many requests a call.
EMBED_BATCH = 100

# Google's documented placeholder for a function call replayed without the
# signature the model gave it (see the thought-signatures guide).
SKIP_SIGNATURE = "skip_thought_signature_validator"

_SYNTHETIC_ID = re.compile(r"call_[0-9a-f]{24}")
# Families that never demand a thought signature on replayed calls.
_UNSIGNED_FAMILIES = re.compile(r"(models/)?(gemini-[12][.-]|gemma)")

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}

# The keys of Gemini's `Schema` message; everything else is JSON Schema that
# Gemini answers 400 to ("Unknown name ...").
_SCHEMA_SCALARS = (
    "title",
    "description",
    "nullable",
    "maxItems",
    "minItems",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "default",
    "minimum",
    "maximum",
)
_SCHEMA_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"}
_SCHEMA_FORMATS = {
    "STRING": {"enum", "date-time"},
    "NUMBER": {"float", "double"},
    "INTEGER": {"int32", "int64"},
}
_MAX_SCHEMA_DEPTH = 24
# Schema nodes one conversion may write: `$ref`s and type lists multiply a
# small input (a 2 KB schema grew past 10**9 nodes), so the work is bounded.
MAX_SCHEMA_NODES = 5_000

# ErrorInfo reasons that mean the gateway's key is bad, whatever the status says.
_KEY_REASONS = {
    "API_KEY_INVALID",
    "API_KEY_EXPIRED",
    "API_KEY_SERVICE_BLOCKED",
    "API_KEY_HTTP_REFERRER_BLOCKED",
    "API_KEY_IP_ADDRESS_BLOCKED",
}
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mp3"}


# -- ids ----------------------------------------------------------------------
def tool_call_id(response_id: str, position: int, name: str, args: Any) -> str:
    """The id of a function call Gemini gave none: stable for the same answer."""
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{response_id}\x00{position}\x00{name}\x00{canonical}".encode())
    return "call_" + digest.hexdigest()[:24]


# -- request ------------------------------------------------------------------
def to_gemini(
    request: ChatCompletionRequest, upstream_model: str = "", *, allow_file_uris: bool = False
) -> JSON:
    """The `generateContent` body for an OpenAI chat request.

    `upstream_model` decides whether replayed function calls need a signature;
    `allow_file_uris` lets images name `gs://` and Files-API URLs.
    Raises `InvalidRequest` for what Gemini cannot express or would reject.
    """
    sign_calls = not _UNSIGNED_FAMILIES.match(upstream_model)
    system: list[str] = []
    contents: list[JSON] = []
    call_names: dict[str, str] = {}

    def add(role: str, parts: list[JSON]) -> None:
        # Gemini wants turns to alternate; OpenAI allows runs of one role.
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.role in ("system", "developer"):
            text = message.text()
            if text:
                system.append(text)
        elif message.role == "user":
            add("user", _content_parts(message.content, where, allow_file_uris))
        elif message.role == "assistant":
            parts = _content_parts(message.content, where, allow_file_uris)
            parts.extend(_call_parts(message, where, call_names, sign_calls))
            add("model", parts)
        else:  # tool, or the legacy function role
            add("user", [_response_part(message, where, call_names)])

    if not contents:
        raise InvalidRequest(
            "Gemini needs at least one user or assistant message with content",
            param="messages",
            code="invalid_value",
        )
    body: JSON = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    if request.tools:
        body["tools"] = [
            {
                "functionDeclarations": [
                    _declaration(t.function.model_dump(), f"tools[{i}].function")
                    for i, t in enumerate(request.tools)
                ]
            }
        ]
        if request.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": _calling_config(request.tool_choice)}
    if request.web_search and searches_web_with(request, upstream_model):
        # Gemini's own Google Search grounding serves a client's web search.
        body.setdefault("tools", []).append({"googleSearch": {}})
        if request.tools:
            # Gemini 3 takes it beside functions only when told so.
            body.setdefault("toolConfig", {})["includeServerSideToolInvocations"] = True
    config = _generation_config(request)
    if config:
        body["generationConfig"] = config
    return body


def searches_web_with(request: ChatCompletionRequest, upstream_model: str) -> bool:
    """Whether Google Search can join this request: Gemini before 3 refuses it beside
    function declarations ("Tool use with function calling is unsupported")."""
    return not request.tools or upstream_model.startswith("gemini-3")


def _content_parts(
    content: str | list[ContentPart] | None, where: str, allow_file_uris: bool = False
) -> list[JSON]:
    # Gemini answers 400 to an empty text part, so empty text is left out.
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[JSON] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            param = f"{where}.content[{j}].image_url.url"
            parts.append(_image_part(part.image_url.url, param, allow_file_uris))
        elif part.type == "refusal":
            # An earlier answer's refusal, replayed by the client: it was text.
            refusal = (part.model_extra or {}).get("refusal")
            if isinstance(refusal, str) and refusal:
                parts.append({"text": refusal})
        else:
            parts.append(_other_part(part.type, part.model_extra or {}, f"{where}.content[{j}]"))
    return parts


# Where Gemini reads a `fileUri` with the caller's (the gateway's) own credentials.
_FILES_API_HOST = "generativelanguage.googleapis.com"


def _image_part(url: str, param: str, allow_file_uris: bool = False) -> JSON:
    if url.startswith("data:"):
        mime, data = _parse_data_url(url, param)
        return {"inlineData": {"mimeType": mime, "data": data}}
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if not allow_file_uris and (
        scheme == "gs" or (parsed.hostname or "").rstrip(".") == _FILES_API_HOST
    ):
        raise InvalidRequest(
            "Images from gs:// or the Gemini Files API are read with the gateway's own "
            "credentials and are not accepted here (the provider's allow_file_uris is off): "
            "send a data: URL or a public http(s):// URL",
            param=param,
        )
    if scheme in ("http", "https", "gs"):
        guessed = mimetypes.guess_type(urllib.parse.urlsplit(url).path)[0]
        file_data = {"mimeType": guessed, "fileUri": url} if guessed else {"fileUri": url}
        return {"fileData": file_data}
    raise InvalidRequest(
        "Gemini accepts images as data: URLs or http(s):// or gs:// URLs only",
        param=param,
    )


def _parse_data_url(url: str, param: str) -> tuple[str, str]:
    """(MIME type, base64 data) of a `data:` URL."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise InvalidRequest("Malformed data: URL (no comma)", param=param)
    fields = header.split(";")
    mime = fields[0].strip() or "text/plain"
    if "base64" in (f.strip().lower() for f in fields[1:]):
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("The data: URL's base64 is invalid", param=param) from None
    else:
        raw = urllib.parse.unquote_to_bytes(payload)
    if not raw:
        raise InvalidRequest("The data: URL is empty", param=param)
    # Re-encoded so Gemini gets canonical base64 whatever padding the client used.
    return mime, base64.b64encode(raw).decode("ascii")


def _other_part(kind: str, extra: Mapping[str, Any], param: str) -> JSON:
    if kind == "input_audio":
        audio = extra.get("input_audio")
        if isinstance(audio, dict) and isinstance(audio.get("data"), str):
            fmt = str(audio.get("format", "wav")).lower()
            mime = _AUDIO_FORMATS.get(fmt, f"audio/{fmt}")
            _, data = _parse_data_url(f"data:{mime};base64,{audio['data']}", param)
            return {"inlineData": {"mimeType": mime, "data": data}}
    if kind == "file":
        file = extra.get("file")
        if isinstance(file, dict) and isinstance(file.get("file_data"), str):
            mime, data = _parse_data_url(file["file_data"], param)
            return {"inlineData": {"mimeType": mime, "data": data}}
    raise InvalidRequest(f"Content parts of type '{kind}' are not supported by Gemini", param=param)


def _call_parts(
    message: ChatMessage, where: str, call_names: dict[str, str], sign_calls: bool
) -> list[JSON]:
    parts: list[JSON] = []
    for j, call in enumerate(message.tool_calls or []):
        name = call.function.name
        args = _parse_arguments(
            call.function.arguments, f"{where}.tool_calls[{j}].function.arguments"
        )
        call_names[call.id] = name
        function_call: JSON = {"name": name, "args": args}
        if not _SYNTHETIC_ID.fullmatch(call.id):
            function_call["id"] = call.id
        part: JSON = {"functionCall": function_call}
        signature = _signature_of(call)
        if signature:
            part["thoughtSignature"] = signature
        elif sign_calls and j == 0:
            # Gemini 3 checks the first call of each step; parallel calls after
            # it carry no signature of their own.
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def _parse_arguments(arguments: str, param: str) -> JSON:
    if not arguments.strip():
        return {}
    try:
        args = json.loads(arguments)
    except ValueError:
        raise InvalidRequest("Tool call arguments are not valid JSON", param=param) from None
    if not isinstance(args, dict):
        raise InvalidRequest("Tool call arguments must be a JSON object", param=param)
    return args


def _signature_of(call: ToolCall) -> str | None:
    extra = (call.model_extra or {}).get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _response_part(message: ChatMessage, where: str, call_names: Mapping[str, str]) -> JSON:
    call_id = message.tool_call_id
    name = call_names.get(call_id or "") or message.name
    if not name:
        raise InvalidRequest(
            f"Tool result '{call_id}' answers no earlier tool call, and Gemini needs the "
            "function's name",
            param=f"{where}.tool_call_id",
        )
    text = message.text()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    response: JSON = parsed if isinstance(parsed, dict) else {"content": text}
    function_response: JSON = {"name": name, "response": response}
    if call_id and not _SYNTHETIC_ID.fullmatch(call_id):
        function_response["id"] = call_id
    return {"functionResponse": function_response}


def _declaration(function: Mapping[str, Any], param: str = "tools") -> JSON:
    declaration: JSON = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    parameters = function.get("parameters")
    if isinstance(parameters, dict) and parameters:
        schema = gemini_schema(parameters, param=f"{param}.parameters")
        if schema.get("type") != "OBJECT" or schema.get("properties"):
            declaration["parameters"] = schema
    return declaration


def _calling_config(choice: str | ToolChoiceNamed) -> JSON:
    if isinstance(choice, ToolChoiceNamed):
        return {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}
    return {"mode": _TOOL_MODES[choice]}


# Thinking budgets for a reasoning effort asked without one (Anthropic's `adaptive`).
_THINKING_BUDGETS = {"minimal": 0, "low": 1024, "medium": 8192, "high": 24576}


def _generation_config(request: ChatCompletionRequest) -> JSON:
    config: JSON = {}
    if request.output_cap is not None:
        config["maxOutputTokens"] = request.output_cap
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    stops = [s for s in request.stop_sequences if s]
    if stops:
        config["stopSequences"] = stops
    if request.n is not None:
        config["candidateCount"] = request.n
    if request.seed is not None:
        config["seed"] = request.seed
    reasoning = request.reasoning
    if reasoning is not None:
        budget = reasoning.budget_tokens
        if budget is None:
            budget = _THINKING_BUDGETS.get(reasoning.effort or "medium", 8192)
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": True}
    response_format = request.response_format
    if response_format is not None and response_format.type != "text":
        config["responseMimeType"] = "application/json"
        spec = response_format.json_schema or {}
        schema = spec.get("schema")
        if response_format.type == "json_schema" and isinstance(schema, dict) and schema:
            config["responseSchema"] = gemini_schema(
                schema, order_properties=True, param="response_format.json_schema.schema"
            )
    return config


# -- JSON Schema -> Gemini Schema ----------------------------------------------
def gemini_schema(
    schema: Mapping[str, Any], *, order_properties: bool = False, param: str | None = None
) -> JSON:
    """A JSON Schema rewritten into the subset Gemini's `Schema` accepts.

    `order_properties` adds `propertyOrdering`, so a structured answer keeps
    the client's property order instead of Gemini's alphabetical one. A
    schema whose rewrite passes `MAX_SCHEMA_NODES` nodes is refused (400
    naming `param`): references and type lists can make it exponential.
    """
    return _SchemaWriter(schema, order_properties, param).convert(schema, 0)


@dataclass
class _SchemaWriter:
    root: Mapping[str, Any]
    order_properties: bool
    param: str | None = None
    nodes_left: int = MAX_SCHEMA_NODES

    def resolve(self, node: Mapping[str, Any], depth: int) -> Mapping[str, Any]:
        ref = node.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#") or depth > _MAX_SCHEMA_DEPTH:
            return node
        target: Any = self.root
        for key in filter(None, ref[1:].split("/")):
            key = key.replace("~1", "/").replace("~0", "~")
            target = target.get(key) if isinstance(target, Mapping) else None
        if not isinstance(target, Mapping):
            return {k: v for k, v in node.items() if k != "$ref"}
        # Keys beside a $ref (a description, say) win over the referenced ones.
        merged = {**self.resolve(target, depth + 1), **node}
        merged.pop("$ref", None)
        return merged

    def merge_all_of(self, node: Mapping[str, Any], depth: int) -> Mapping[str, Any]:
        """`allOf` (pydantic's way to describe a referenced model) folded into one."""
        merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
        for member in node["allOf"]:
            if not isinstance(member, Mapping):
                continue
            resolved = self.resolve(member, depth + 1)
            props = {**resolved.get("properties", {}), **merged.get("properties", {})}
            required = [*resolved.get("required", []), *merged.get("required", [])]
            merged = {**resolved, **merged}
            if props:
                merged["properties"] = props
            if required:
                merged["required"] = required
        return merged

    def convert(self, raw: Any, depth: int) -> JSON:
        self.nodes_left -= 1
        if self.nodes_left < 0:
            raise InvalidRequest(
                f"The JSON Schema is too large once its references and type lists are "
                f"expanded for Gemini (more than {MAX_SCHEMA_NODES} nodes)",
                param=self.param,
            )
        if not isinstance(raw, Mapping) or depth > _MAX_SCHEMA_DEPTH:
            # Recursion deeper than this is cut to a free-form object.
            return {"type": "OBJECT"}
        node = self.resolve(raw, depth)
        if "$ref" in node:  # unresolvable, or a reference cycle at the depth limit
            return {"type": "OBJECT"}
        out: JSON = {}
        nullable = False

        if isinstance(node.get("allOf"), list):
            node = self.merge_all_of(node, depth)

        kind = node.get("type")
        if isinstance(kind, list):
            names = [str(k).upper() for k in kind]
            nullable = "NULL" in names
            names = [k for k in names if k in _SCHEMA_TYPES]
            if len(names) == 1:
                out["type"] = names[0]
            elif names:
                others = {k: v for k, v in node.items() if k != "type"}
                out["anyOf"] = [
                    self.convert({**others, "type": k.lower()}, depth + 1) for k in names
                ]
        elif isinstance(kind, str) and kind.upper() in _SCHEMA_TYPES:
            out["type"] = kind.upper()
        elif isinstance(kind, str) and kind.upper() == "NULL":
            nullable = True

        members = node.get("anyOf", node.get("oneOf"))
        if isinstance(members, list) and "anyOf" not in out:
            kept = []
            for member in members:
                if isinstance(member, Mapping) and self.resolve(member, depth + 1).get("type") in (
                    "null",
                    "NULL",
                ):
                    nullable = True
                else:
                    kept.append(self.convert(member, depth + 1))
            if len(kept) == 1:
                out = {**kept[0], **out}
            elif kept:
                out["anyOf"] = kept

        if "const" in node and isinstance(node["const"], str):
            out["enum"] = [node["const"]]
        enum = node.get("enum")
        if isinstance(enum, list):
            nullable = nullable or None in enum
            values = [v for v in enum if v is not None]
            # Gemini enums are strings only; numeric enums stay unconstrained.
            if values and all(isinstance(v, str) for v in values):
                out["enum"] = values
        if "enum" in out:
            out.setdefault("type", "STRING")
            if out["type"] != "STRING":
                del out["enum"]

        for key in _SCHEMA_SCALARS:
            if key in node:
                out[key] = node[key]
        if "example" not in out and isinstance(node.get("examples"), list) and node["examples"]:
            out["example"] = node["examples"][0]
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt in _SCHEMA_FORMATS.get(out.get("type", ""), set()):
            out["format"] = fmt

        properties = node.get("properties")
        if isinstance(properties, Mapping) and properties:
            out["properties"] = {str(k): self.convert(v, depth + 1) for k, v in properties.items()}
            out.setdefault("type", "OBJECT")
            required = node.get("required")
            if isinstance(required, list):
                kept_required = [r for r in required if r in out["properties"]]
                if kept_required:
                    out["required"] = kept_required
            if self.order_properties:
                out["propertyOrdering"] = list(out["properties"])
        items = node.get("items")
        if isinstance(items, Mapping):
            out["items"] = self.convert(items, depth + 1)
        elif isinstance(items, list) and items:
            out["items"] = self.convert(items[0], depth + 1)
        if "type" not in out and "anyOf" not in out:
            # Gemini refuses a schema without a type; a free-form value is
            # described to the model as a string, the least surprising guess.
            out["type"] = "ARRAY" if "items" in out else "STRING"
        if out.get("type") == "ARRAY" and "items" not in out:
            # Gemini rejects an ARRAY without `items`; untyped arrays become strings.
            out["items"] = {"type": "STRING"}
        if nullable:
            out["nullable"] = True
        return out


# -- response -------------------------------------------------------------------
def _usage(metadata: Any) -> Usage:
    """OpenAI usage from `usageMetadata`; thinking tokens count as completion."""
    if not isinstance(metadata, Mapping):
        return Usage()
    prompt = _int(metadata.get("promptTokenCount")) + _int(metadata.get("toolUsePromptTokenCount"))
    completion = _int(metadata.get("candidatesTokenCount")) + _int(
        metadata.get("thoughtsTokenCount")
    )
    total = max(_int(metadata.get("totalTokenCount")), prompt + completion)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


def _int(value: Any) -> int:
    # Proto JSON may write int64 as a string; counts are never negative.
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def _finish(reason: Any, called: bool) -> str:
    mapped = _FINISH_REASONS.get(str(reason), "stop")
    return "tool_calls" if called and mapped == "stop" else mapped


@dataclass
class _Reading:
    """What one candidate's parts say, read part by part."""

    response_id: str
    text: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)

    def read(self, parts: Iterable[Any]) -> tuple[str, list[ToolCall]]:
        """Feed parts; return the new text and the new tool calls."""
        text: list[str] = []
        calls: list[ToolCall] = []
        for part in parts:
            if not isinstance(part, Mapping):
                continue
            call = part.get("functionCall")
            if isinstance(call, Mapping):
                calls.append(self._tool_call(call, part.get("thoughtSignature")))
                self.calls.append(calls[-1])
            elif isinstance(part.get("text"), str):
                # Thought summaries are the model's notes, not its answer: they
                # travel as reasoning text (`includeThoughts` asks for them).
                (self.thoughts if part.get("thought") else text).append(part["text"])
        self.text.extend(text)
        return "".join(text), calls

    def new_thoughts(self, seen: int) -> str:
        """The thought text read since `seen` thoughts."""
        return "".join(self.thoughts[seen:])

    def _tool_call(self, call: Mapping[str, Any], signature: Any) -> ToolCall:
        name = str(call.get("name", ""))
        args = call.get("args")
        args = args if isinstance(args, dict) else {}
        given = call.get("id")
        call_id = given if isinstance(given, str) and given else None
        data: JSON = {
            "id": call_id or tool_call_id(self.response_id, len(self.calls), name, args),
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
        }
        if isinstance(signature, str) and signature:
            data["extra_content"] = {"google": {"thought_signature": signature}}
        return ToolCall.model_validate(data)


def _parts_of(candidate: Mapping[str, Any]) -> list[Any]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, Mapping) else None
    return parts if isinstance(parts, list) else []


def from_gemini(data: Any, provider: str = "gemini") -> ChatCompletion:
    """A ChatCompletion from a `GenerateContentResponse`."""
    if not isinstance(data, Mapping):
        raise UpstreamError(f"Provider '{provider}' answered with a malformed response")
    response_id = str(data.get("responseId", ""))
    choices: list[Choice] = []
    for position, candidate in enumerate(data.get("candidates") or []):
        if not isinstance(candidate, Mapping):
            raise UpstreamError(f"Provider '{provider}' answered with a malformed candidate")
        reading = _Reading(response_id)
        reading.read(_parts_of(candidate))
        text = "".join(reading.text)
        choices.append(
            Choice(
                index=_int(candidate.get("index", position)),
                message=ResponseMessage(
                    content=text if text or not reading.calls else None,
                    tool_calls=reading.calls or None,
                    reasoning_content="".join(reading.thoughts) or None,
                ),
                finish_reason=_finish(candidate.get("finishReason"), bool(reading.calls)),
            )
        )
    if not choices:
        if not _blocked(data):
            raise UpstreamError(f"Provider '{provider}' answered with no candidates")
        choices.append(Choice(message=ResponseMessage(content=""), finish_reason="content_filter"))
    return ChatCompletion(
        id=_completion_id(response_id),
        choices=choices,
        usage=_usage(data.get("usageMetadata")),
    )


def _completion_id(response_id: Any) -> str:
    """Gemini's `responseId` in OpenAI's id style, so logs on both sides match."""
    return f"chatcmpl-{response_id}" if isinstance(response_id, str) and response_id else new_id()


def _blocked(data: Mapping[str, Any]) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, Mapping) and bool(feedback.get("blockReason"))


@dataclass
class _CandidateStream:
    reading: _Reading
    calls: int = 0
    finish: str | None = None


# -- the provider ----------------------------------------------------------------
class GeminiProvider(HTTPProvider):
    """The `gemini` kind: Google's Gemini API, authenticated with `x-goog-api-key`.

    The key travels in a header only, never in a URL, so it cannot appear in
    httpx's error messages or logs of URLs.
    """

    def searches_web(self, request: ChatCompletionRequest, model: str) -> bool:
        """Whether Google Search serves this request's web search (see `searches_web_with`)."""
        return searches_web_with(request, self.upstream_model(model))

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.api_key} if self.api_key else {}

    def _path(self, model: str, method: str) -> str:
        return self._method_path(self.upstream_model(model), method)

    def _method_path(self, upstream: str, method: str) -> str:
        upstream = upstream.removeprefix("models/")
        base = self.config.resolved_base_url()
        # A base URL that already names the API version is used as it is.
        version = "" if re.search(r"/v1(beta|alpha)?\d*$", base) else "/v1beta"
        return f"{version}/models/{upstream}:{method}"

    def payload(self, request: ChatCompletionRequest, model: str) -> JSON:
        """The upstream body for a request to the public model `model`."""
        return to_gemini(
            request, self.upstream_model(model), allow_file_uris=self.config.allow_file_uris
        )

    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        body = self.payload(request, model)
        answer = await self.post_json(self._path(model, "generateContent"), body)
        return from_gemini(answer, self.name)

    async def count_tokens(self, request: ChatCompletionRequest, model: str) -> int:
        """The prompt's tokens by `models/{model}:countTokens` (the whole request counted)."""
        upstream = self.upstream_model(model)
        body = {
            "generateContentRequest": {
                "model": f"models/{upstream}",
                **to_gemini(request, upstream, allow_file_uris=self.config.allow_file_uris),
            }
        }
        answer = await self.post_json(self._path(model, "countTokens"), body)
        total = answer.get("totalTokens") if isinstance(answer, dict) else None
        if not isinstance(total, int) or total < 0:
            raise UpstreamError(f"Provider '{self.name}' answered countTokens without a count")
        return total

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        body = self.payload(request, model)
        chunk_id = ""
        created = now()
        candidates: dict[int, _CandidateStream] = {}
        usage = Usage()
        blocked = False

        def chunk(index: int, delta: Delta, finish: str | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=chunk_id,
                created=created,
                choices=[ChunkChoice(index=index, delta=delta, finish_reason=finish)],
            )

        path = self._path(model, "streamGenerateContent")
        async with self.post_events(path, body, params={"alt": "sse"}) as events:
            async for event in events:
                data = self._event(event.data)
                # Every chunk of one answer shares Gemini's responseId.
                chunk_id = chunk_id or _completion_id(data.get("responseId"))
                if "usageMetadata" in data:
                    usage = _usage(data["usageMetadata"])
                blocked = blocked or _blocked(data)
                response_id = str(data.get("responseId", ""))
                for position, candidate in enumerate(data.get("candidates") or []):
                    if not isinstance(candidate, Mapping):
                        raise UpstreamError(f"Provider '{self.name}' sent a malformed candidate")
                    index = _int(candidate.get("index", position))
                    state = candidates.get(index)
                    first = state is None
                    if state is None:
                        state = candidates[index] = _CandidateStream(_Reading(response_id))
                    seen = len(state.reading.thoughts)
                    text, calls = state.reading.read(_parts_of(candidate))
                    thought = state.reading.new_thoughts(seen)
                    deltas = [
                        self._call_delta(state.calls + k, call) for k, call in enumerate(calls)
                    ]
                    state.calls += len(calls)
                    if candidate.get("finishReason"):
                        state.finish = str(candidate["finishReason"])
                    if first or text or deltas or thought:
                        yield chunk(
                            index,
                            Delta(
                                role="assistant" if first else None,
                                content=text if text or (first and not deltas) else None,
                                tool_calls=deltas or None,
                                reasoning_content=thought or None,
                            ),
                        )

        chunk_id = chunk_id or new_id()
        if not candidates and blocked:
            yield chunk(0, Delta(role="assistant", content=""))
            yield chunk(0, Delta(), "content_filter")
        elif not candidates or any(s.finish is None for s in candidates.values()):
            raise UpstreamError(
                f"Provider '{self.name}' ended the stream before the answer was complete"
            )
        for index in sorted(candidates):
            state = candidates[index]
            yield chunk(index, Delta(), _finish(state.finish, state.calls > 0))
        yield ChatCompletionChunk(id=chunk_id, created=created, choices=[], usage=usage)

    # -- embeddings --------------------------------------------------------------
    def embedding_payloads(self, request: EmbeddingRequest, model: str) -> list[JSON]:
        """The `batchEmbedContents` bodies for a request, at most `EMBED_BATCH` texts each."""
        texts = request.texts()
        if texts is None:
            raise InvalidRequest(
                f"Provider '{self.name}' embeds text only, not token arrays", param="input"
            )
        for i, text in enumerate(texts):
            if not text:
                where = "input" if isinstance(request.input, str) else f"input[{i}]"
                raise InvalidRequest(f"'{where}' must not be an empty string", param=where)
        name = "models/" + self.upstream_embedding_model(model).removeprefix("models/")
        items: list[JSON] = []
        for text in texts:
            item: JSON = {"model": name, "content": {"parts": [{"text": text}]}}
            if request.dimensions is not None:
                item["outputDimensionality"] = request.dimensions
            items.append(item)
        return [
            {"requests": items[start : start + EMBED_BATCH]}
            for start in range(0, len(items), EMBED_BATCH)
        ]

    async def embed(self, request: EmbeddingRequest, model: str) -> EmbeddingResponse:
        path = self._method_path(self.upstream_embedding_model(model), "batchEmbedContents")
        vectors: list[list[float]] = []
        tokens = 0
        for body in self.embedding_payloads(request, model):
            answer = await self.post_json(path, body)
            vectors += self._vectors(answer, len(body["requests"]))
            metadata = answer.get("usageMetadata")
            if isinstance(metadata, Mapping):
                tokens += _int(metadata.get("promptTokenCount"))
        return EmbeddingResponse(
            data=[Embedding(index=i, embedding=v) for i, v in enumerate(vectors)],
            model=model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    def _vectors(self, answer: Any, expected: int) -> list[list[float]]:
        """The `values` of each of the answer's `embeddings`, checked."""
        embeddings = answer.get("embeddings") if isinstance(answer, Mapping) else None
        if not isinstance(embeddings, list) or len(embeddings) != expected:
            raise UpstreamError(f"Provider '{self.name}' answered with malformed embeddings")
        vectors: list[list[float]] = []
        for item in embeddings:
            values = item.get("values") if isinstance(item, Mapping) else None
            if not isinstance(values, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            ):
                raise UpstreamError(f"Provider '{self.name}' answered with malformed embeddings")
            vectors.append([float(v) for v in values])
        return vectors

    def _event(self, data: str) -> JSON:
        try:
            parsed = json.loads(data)
        except ValueError:
            raise UpstreamError(f"Provider '{self.name}' sent a malformed stream chunk") from None
        if not isinstance(parsed, dict):
            raise UpstreamError(f"Provider '{self.name}' sent a malformed stream chunk")
        if "error" in parsed:
            detail = self.scrub(self.upstream_message(data.encode()))
            raise UpstreamError(
                f"Provider '{self.name}' reported an error mid-stream"
                + (f": {detail}" if detail else "")
            )
        return parsed

    @staticmethod
    def _call_delta(index: int, call: ToolCall) -> DeltaToolCall:
        data: JSON = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": DeltaFunction(name=call.function.name, arguments=call.function.arguments),
        }
        signature = (call.model_extra or {}).get("extra_content")
        if signature:
            data["extra_content"] = signature
        return DeltaToolCall.model_validate(data)

    # -- errors ------------------------------------------------------------------
    def error_for_status(self, status: int, body: bytes, headers: Mapping[str, str]) -> AxioneError:
        """Gemini's `{"error": {code, message, status, details}}` mapped to SPEC errors.

        Gemini reports a bad API key as 400 `INVALID_ARGUMENT` with reason
        `API_KEY_INVALID`: that is the gateway's fault, not the client's, so it
        is a 502 `upstream_auth_failed` like 401 and 403.
        """
        error = _error_object(body)
        grpc_status = str(error.get("status", ""))
        detail = self.scrub(self.upstream_message(body))
        said = f": {detail}" if detail else ""
        who = f"Provider '{self.name}'"
        if (
            status in (401, 403)
            or grpc_status in ("UNAUTHENTICATED", "PERMISSION_DENIED")
            or _reasons(error) & _KEY_REASONS
        ):
            return UpstreamError(
                f"{who} rejected the gateway's credentials (upstream status {status})",
                code="upstream_auth_failed",
            )
        if status == 429 or grpc_status == "RESOURCE_EXHAUSTED":
            retry = headers.get("retry-after") or _retry_delay(error)
            return RateLimited(
                f"{who} is rate limiting requests{said}",
                code="upstream_rate_limited",
                headers={"retry-after": retry} if retry else None,
            )
        if status == 504 or grpc_status == "DEADLINE_EXCEEDED":
            return UpstreamTimeout(f"{who} timed out (upstream status {status}){said}")
        if grpc_status == "FAILED_PRECONDITION":
            # "User location is not supported", "enable billing": the gateway's
            # account cannot serve anyone, whatever the client sends.
            return UpstreamError(f"{who} cannot serve requests{said}")
        if status == 400 or grpc_status == "INVALID_ARGUMENT":
            return InvalidRequest(
                f"{who} rejected the request{said}", code="upstream_invalid_request"
            )
        return super().error_for_status(status, body, headers)


def _reasons(error: Mapping[str, Any]) -> set[str]:
    """The `ErrorInfo.reason`s among an error's details."""
    details = error.get("details")
    if not isinstance(details, list):
        return set()
    return {str(d["reason"]) for d in details if isinstance(d, Mapping) and "reason" in d}


def _error_object(body: bytes) -> Mapping[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    # The JSON-array form of streamGenerateContent wraps errors in a list.
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, Mapping) else {}


def _retry_delay(error: Mapping[str, Any]) -> str | None:
    """`RetryInfo.retryDelay` ("23s", "1.5s") as whole seconds for `Retry-After`."""
    for detail in error.get("details") or []:
        if isinstance(detail, Mapping) and isinstance(detail.get("retryDelay"), str):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)s", detail["retryDelay"])
            if match:
                return str(max(1, math.ceil(float(match.group(1)))))
    return None
