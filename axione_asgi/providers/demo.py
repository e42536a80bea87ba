"""The offline demo model family: deterministic answers for quick starts and tests."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import random
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from axione_asgi.errors import ModelNotFound
from axione_asgi.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    FunctionCall,
    ResponseMessage,
    ToolCall,
    ToolChoiceNamed,
    Usage,
    new_id,
)

__all__ = ["DemoProvider", "count_tokens", "sample_json"]

_TOKEN = re.compile(r"\w+|[^\w\s]")
_PIECE = re.compile(r"\S+\s*")

# A valid value of each string `format` JSON Schema names.
_FORMATS = {
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "time": "12:00:00Z",
    "duration": "P1D",
    "email": "demo@example.com",
    "idn-email": "demo@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "iri": "https://example.com/",
    "iri-reference": "https://example.com/",
    "url": "https://example.com/",
    "uri-template": "https://example.com/{id}",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "json-pointer": "/demo",
    "relative-json-pointer": "0",
    "regex": "^demo$",
}
# Strings tried, after the answer's own text, to meet a `pattern`.
_PATTERN_TRIES = ("demo", "a", "A", "0", "abc", "ABC", "123", "a1", "A1", "x-1", "")
# Below this depth optional properties and one array item are filled in; deeper,
# only what the schema requires, so recursive schemas end.
_FULL_DEPTH = 3
_MAX_DEPTH = 24


def sample_json(schema: Any, text: str, *, tool_arguments: bool = False) -> Any:
    """A value valid against a JSON Schema, the same every time, strings filled with `text`.

    Covers what tool parameters and structured outputs use: `type` (or a
    list of types), `properties`/`required`/`additionalProperties`,
    `items`/`prefixItems`/`minItems`/`maxItems`, `enum`, `const`, `anyOf`,
    `oneOf`, `allOf`, `$ref` to `$defs` or `definitions`, nullable types,
    numeric bounds and `multipleOf`, string lengths, `format`, and `pattern`
    (a string built from the pattern's own parts when `text` does not match).
    With `tool_arguments`, an object schema that declares no properties gets
    `{"input": text}`, the demo's tool input.
    """
    return _Sampler(schema, text or "demo", tool_arguments).value(schema, 0, 0)


class _Sampler:
    def __init__(self, root: Any, text: str, tool_arguments: bool) -> None:
        self.root = root
        self.text = text
        self.tool_arguments = tool_arguments

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part) if isinstance(node, dict) else None
        return node if node is not None else {}

    def value(self, schema: Any, depth: int, salt: int) -> Any:
        if schema is True or schema == {}:
            return self.text
        if not isinstance(schema, dict) or depth > _MAX_DEPTH:
            return None
        if isinstance(schema.get("$ref"), str):
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            target = self.resolve(schema["$ref"])
            merged = {**target, **rest} if isinstance(target, dict) else rest
            return self.value(merged, depth + 1, salt)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[salt % len(enum)]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in schema.items() if k != key}
                return self.value(_merge(rest, self.pick(options, depth)), depth + 1, salt)
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, dict) and isinstance(part.get("$ref"), str):
                    part = self.resolve(part["$ref"])
                merged = _merge(merged, part)
            return self.value(merged, depth + 1, salt)
        kind = _kind(schema)
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, depth)
        if kind in ("integer", "number"):
            return _number(schema, kind == "integer", salt)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.string(schema, salt)

    def pick(self, options: list[Any], depth: int) -> Any:
        """The first option that is not null, or null itself once deep (recursion ends)."""
        nulls = [o for o in options if isinstance(o, dict) and o.get("type") == "null"]
        others = [o for o in options if o not in nulls]
        if nulls and (depth >= _FULL_DEPTH or not others):
            return nulls[0]
        return others[0]

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = [r for r in schema.get("required") or () if isinstance(r, str)]
        extra = schema.get("additionalProperties", True)
        if self.tool_arguments and depth == 0 and not properties and extra is not False:
            return {"input": self.text}
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in required or depth < _FULL_DEPTH:
                out[name] = self.value(sub, depth + 1, 0)
        for name in required:
            if name not in out:
                out[name] = self.value(extra if isinstance(extra, dict) else True, depth + 1, 0)
        wanted = schema.get("minProperties")
        while isinstance(wanted, int) and len(out) < wanted and extra is not False:
            out[f"property{len(out)}"] = self.value(
                extra if isinstance(extra, dict) else True, depth + 1, len(out)
            )
        return out

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        if isinstance(items, list):  # the draft-4 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        prefix = prefix if isinstance(prefix, list) else []
        least, most = schema.get("minItems"), schema.get("maxItems")
        count = max(least if isinstance(least, int) else 0, len(prefix))
        count = max(count, 1 if depth < _FULL_DEPTH else 0)
        if isinstance(most, int):
            count = min(count, most)
        item_schema = items if isinstance(items, dict | bool) and items is not False else True
        return [
            self.value(prefix[i] if i < len(prefix) else item_schema, depth + 1, i)
            for i in range(count)
        ]

    def string(self, schema: dict[str, Any], salt: int) -> str:
        fmt = schema.get("format")
        text = _FORMATS.get(fmt, self.text) if isinstance(fmt, str) else self.text
        if salt:
            text = f"{text} {salt}" if fmt not in _FORMATS else text
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            text = _matching(pattern, text)
        least = schema.get("minLength")
        most = schema.get("maxLength")
        if isinstance(most, int) and len(text) > most:
            text = text[:most]
        if isinstance(least, int) and len(text) < least:
            text += "x" * (least - len(text))
        return text


def _matching(pattern: str, text: str) -> str:
    """`text` if `pattern` finds it, else a string built from the pattern itself."""
    try:
        compiled = re.compile(pattern)
        if compiled.search(text):
            return text
        built = _example(_re_parser.parse(pattern))
    except (re.error, RecursionError, ValueError, TypeError, IndexError):
        return text
    for candidate in (built, *_PATTERN_TRIES):
        if compiled.search(candidate):
            return candidate
    return text


# Python's own regular-expression parser (re._parser): a pattern's parts, to build
# a string it matches. Private, hence looked up by name; only its parse() is used.
_re_parser: Any = importlib.import_module("re._parser")
_CATEGORY_CHARS = {
    "CATEGORY_DIGIT": "0",
    "CATEGORY_NOT_DIGIT": "a",
    "CATEGORY_WORD": "a",
    "CATEGORY_NOT_WORD": "-",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": "a",
}
_CLASS_TRIES = "aA0_- .x~"


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


_CATEGORY_TESTS: dict[str, Callable[[str], bool]] = {
    "CATEGORY_DIGIT": str.isdigit,
    "CATEGORY_NOT_DIGIT": lambda c: not c.isdigit(),
    "CATEGORY_WORD": _is_word,
    "CATEGORY_NOT_WORD": lambda c: not _is_word(c),
    "CATEGORY_SPACE": str.isspace,
    "CATEGORY_NOT_SPACE": lambda c: not c.isspace(),
}


def _in_class(char: str, items: Any) -> bool:
    code = ord(char)
    for op, arg in items:
        name = str(op)
        if name == "LITERAL" and arg == code:
            return True
        if name == "RANGE" and arg[0] <= code <= arg[1]:
            return True
        test = _CATEGORY_TESTS.get(str(arg)) if name == "CATEGORY" else None
        if test is not None and test(char):
            return True
    return False


def _class_char(items: Any) -> str:
    negate = bool(items) and str(items[0][0]) == "NEGATE"
    members = list(items[1:] if negate else items)
    tries = list(_CLASS_TRIES)
    if not negate and members:
        op, arg = members[0]
        name = str(op)
        first = (
            chr(arg)
            if name == "LITERAL"
            else chr(arg[0])
            if name == "RANGE"
            else _CATEGORY_CHARS.get(str(arg), "a")
        )
        tries.insert(0, first)
    return next((c for c in tries if _in_class(c, members) != negate), "a")


def _example(parts: Any) -> str:
    """A string the parsed pattern `parts` matches: the first branch, the fewest repeats."""
    out: list[str] = []
    for op, arg in parts:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "NOT_LITERAL":
            out.append("a" if arg != ord("a") else "b")
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            out.append(_class_char(arg))
        elif name == "CATEGORY":
            out.append(_CATEGORY_CHARS.get(str(arg), "a"))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            least, most, inner = arg
            out.append(_example(inner) * max(least, min(1, most)))
        elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
            out.append(_example(arg[-1]))
        elif name == "BRANCH":
            out.append(_example(arg[1][0]))
    return "".join(out)


def _kind(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        real = [k for k in kind if k != "null"]
        return real[0] if real else ("null" if kind else None)
    if isinstance(kind, str):
        return kind
    if any(k in schema for k in ("properties", "required", "additionalProperties")):
        return "object"
    if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
        return "number"
    return None


def _merge(base: dict[str, Any], extra: Any) -> dict[str, Any]:
    """Two schemas as one: properties and required lists joined, other keywords overlaid."""
    if not isinstance(extra, dict):
        return base
    merged = {**base, **extra}
    if isinstance(base.get("properties"), dict) and isinstance(extra.get("properties"), dict):
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if isinstance(base.get("required"), list) and isinstance(extra.get("required"), list):
        merged["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return merged


def _bound(value: Any) -> float | None:
    """A numeric keyword's number (a bool is not one, though Python says it is an int)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(schema: dict[str, Any], integer: bool, salt: int) -> int | float:
    """The number nearest 0 (moved by `salt`) within the bounds and `multipleOf`."""
    low, high = _bound(schema.get("minimum")), _bound(schema.get("maximum"))
    low_open, high_open = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    # Draft 4 says exclusiveness as a flag on minimum and maximum.
    if low_open is True:
        low_open, low = low, None
    if high_open is True:
        high_open, high = high, None
    low_open, high_open = _bound(low_open), _bound(high_open)
    step = _bound(schema.get("multipleOf"))
    numbers = [v for v in (low, high, low_open, high_open) if v is not None]

    def fits(v: float) -> bool:
        if (low is not None and v < low) or (high is not None and v > high):
            return False
        if (low_open is not None and v <= low_open) or (high_open is not None and v >= high_open):
            return False
        if integer and not float(v).is_integer():
            return False
        return step is None or step <= 0 or abs(v / step - round(v / step)) < 1e-9

    tries: list[float] = [float(salt)]
    for bound in numbers:
        tries += [bound, bound + 1, bound - 1, math.ceil(bound), math.floor(bound)]
        if step is not None and step > 0:
            tries += [math.ceil(bound / step) * step, math.floor(bound / step) * step]
    if len(numbers) >= 2:
        tries.append((min(numbers) + max(numbers)) / 2)
    for value in tries:
        if fits(value):
            return int(value) if integer else value
    return int(tries[-1]) if integer else tries[-1]


def _unit_vector(seed: str, dims: int) -> list[float]:
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _digest(*parts: str) -> str:
    # hashlib, not hash(): str hashes change with every process (PYTHONHASHSEED).
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def count_tokens(text: str) -> int:
    """The demo's token count: words and punctuation marks."""
    return len(_TOKEN.findall(text))


class DemoProvider:
    """`demo/echo` answers with the last user message; `demo/lorem` with fixed text;
    `demo/embed` makes deterministic unit vectors.

    Both honour `max_tokens` (finish `length`), `stop`, tools and
    `response_format`. With tools offered and `tool_choice` not `none`, the
    model calls a tool once (the named one, else the first) with arguments
    made from the tool's JSON schema (`sample_json`), then answers with the
    tool's result. A `json_schema` format makes the answer JSON valid against
    that schema, `json_object` an object; strings hold the answer's text.
    Token counts come from its own text.
    """

    _LOREM = (
        "Axione demo model. This answer is generated offline and is the same "
        "every time, so it is useful for trying the API without a provider key."
    )

    EMBEDDING_DIMENSIONS = 256

    def __init__(self, name: str = "demo") -> None:
        self.name = name

    def models(self) -> Sequence[str]:
        return ["echo", "lorem"]

    def embedding_models(self) -> Sequence[str]:
        return ["embed"]

    async def embed(self, request: EmbeddingRequest, model: str) -> EmbeddingResponse:
        """Unit vectors drawn from a generator seeded by each input: same text, same vector."""
        if model not in self.embedding_models():
            raise ModelNotFound(f"{self.name}/{model}")
        items: list[str | list[int]]
        if isinstance(request.input, str):
            items = [request.input]
        elif all(isinstance(i, int) for i in request.input):
            items = [[i for i in request.input if isinstance(i, int)]]
        else:
            items = [i for i in request.input if isinstance(i, str | list)]
        dims = request.dimensions or self.EMBEDDING_DIMENSIONS
        data = [
            Embedding(index=i, embedding=_unit_vector(json.dumps(item), dims))
            for i, item in enumerate(items)
        ]
        tokens = sum(count_tokens(i) if isinstance(i, str) else len(i) for i in items)
        return EmbeddingResponse(
            data=data, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        )

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # -- the deterministic "model" -------------------------------------------
    def _answer(self, request: ChatCompletionRequest, model: str) -> tuple[list[str], str]:
        if model not in self.models():
            raise ModelNotFound(f"{self.name}/{model}")
        last = request.messages[-1]
        if model == "lorem":
            text = self._LOREM
        elif last.role == "tool":
            text = f"The tool answered: {last.text()}"
        else:
            users = [m for m in request.messages if m.role == "user"]
            text = users[-1].text() if users else ""
            text = text or "(empty message)"
        text = self._formatted(request, text)
        for stop in request.stop_sequences:
            if stop and stop in text:
                text = text[: text.index(stop)]
                break
        pieces = _PIECE.findall(text)
        cap = request.output_cap
        if cap is not None and len(pieces) > cap:
            return pieces[:cap], "length"
        return pieces, "stop"

    def _formatted(self, request: ChatCompletionRequest, text: str) -> str:
        """The answer's text in the format the request asks for."""
        fmt = request.response_format
        if fmt is None or fmt.type == "text":
            return text
        schema = (fmt.json_schema or {}).get("schema") if fmt.type == "json_schema" else None
        if not isinstance(schema, dict | bool):
            return json.dumps({"answer": text}, ensure_ascii=False)
        return json.dumps(sample_json(schema, text), ensure_ascii=False)

    def _tool_call(self, request: ChatCompletionRequest) -> ToolCall | None:
        if not request.tools or request.tool_choice == "none":
            return None
        if request.messages[-1].role == "tool":
            return None
        tool = request.tools[0]
        if isinstance(request.tool_choice, ToolChoiceNamed):
            wanted = request.tool_choice.function.name
            tool = next((t for t in request.tools if t.function.name == wanted), tool)
        user_text = request.messages[-1].text()
        return ToolCall(
            id=f"call_{int(_digest(tool.function.name, user_text)[:15], 16) % 10**12:012d}",
            function=FunctionCall(
                name=tool.function.name,
                arguments=json.dumps(
                    sample_json(
                        tool.function.parameters or {"type": "object"},
                        user_text,
                        tool_arguments=True,
                    ),
                    ensure_ascii=False,
                ),
            ),
        )

    def _usage(self, request: ChatCompletionRequest, completion: int) -> Usage:
        prompt = sum(count_tokens(m.text()) for m in request.messages)
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )

    # -- Provider ------------------------------------------------------------
    async def chat(self, request: ChatCompletionRequest, model: str) -> ChatCompletion:
        call = self._tool_call(request)
        if call is not None:
            if model not in self.models():
                raise ModelNotFound(f"{self.name}/{model}")
            message = ResponseMessage(content=None, tool_calls=[call])
            return ChatCompletion(
                choices=[Choice(message=message, finish_reason="tool_calls")],
                usage=self._usage(request, count_tokens(call.function.arguments)),
            )
        pieces, finish = self._answer(request, model)
        text = "".join(pieces)
        choices = [
            Choice(index=i, message=ResponseMessage(content=text), finish_reason=finish)
            for i in range(request.n or 1)
        ]
        return ChatCompletion(
            choices=choices, usage=self._usage(request, count_tokens(text) * (request.n or 1))
        )

    async def stream(
        self, request: ChatCompletionRequest, model: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        cid = new_id()
        call = self._tool_call(request)
        if call is not None:
            if model not in self.models():
                raise ModelNotFound(f"{self.name}/{model}")
            first = DeltaToolCall(
                index=0,
                id=call.id,
                type="function",
                function=DeltaFunction(name=call.function.name, arguments=""),
            )
            yield ChatCompletionChunk(
                id=cid, choices=[ChunkChoice(delta=Delta(role="assistant", tool_calls=[first]))]
            )
            args = DeltaToolCall(index=0, function=DeltaFunction(arguments=call.function.arguments))
            yield ChatCompletionChunk(id=cid, choices=[ChunkChoice(delta=Delta(tool_calls=[args]))])
            yield ChatCompletionChunk(
                id=cid, choices=[ChunkChoice(delta=Delta(), finish_reason="tool_calls")]
            )
            yield ChatCompletionChunk(
                id=cid, usage=self._usage(request, count_tokens(call.function.arguments))
            )
            return
        pieces, finish = self._answer(request, model)
        yield ChatCompletionChunk(
            id=cid, choices=[ChunkChoice(delta=Delta(role="assistant", content=""))]
        )
        produced = 0
        for piece in pieces:
            produced += count_tokens(piece)
            yield ChatCompletionChunk(id=cid, choices=[ChunkChoice(delta=Delta(content=piece))])
        yield ChatCompletionChunk(
            id=cid, choices=[ChunkChoice(delta=Delta(), finish_reason=finish)]
        )
        yield ChatCompletionChunk(id=cid, usage=self._usage(request, produced))
