"""Gemini schema conversion does bounded work, whatever schema a client sends (issue: a 2.2 KB
schema took 30 s on the event loop; a 976-byte one ran into a 504)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from axione_asgi.errors import InvalidRequest
from axione_asgi.openai_types import ChatCompletionRequest
from axione_asgi.providers import gemini
from axione_asgi.providers.gemini import MAX_SCHEMA_NODES, gemini_schema, to_gemini


def doubling_refs(levels: int) -> dict[str, Any]:
    """Each level references the next one twice: 2**levels nodes once expanded."""
    defs: dict[str, Any] = {
        f"L{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/L{i + 1}"}, "b": {"$ref": f"#/$defs/L{i + 1}"}},
        }
        for i in range(levels)
    }
    defs[f"L{levels}"] = {"type": "string"}
    return {"$ref": "#/$defs/L0", "$defs": defs}


def type_lists(levels: int) -> dict[str, Any]:
    """Six types at every level, nested: 6**levels nodes once expanded."""
    node: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        node = {
            "type": ["object", "string", "number", "integer", "boolean", "array"],
            "properties": {"x": node},
            "items": {"type": "string"},
        }
    return node


class CountingWriter(gemini._SchemaWriter):
    calls = 0

    def convert(self, raw: Any, depth: int) -> dict[str, Any]:
        CountingWriter.calls += 1
        return super().convert(raw, depth)


@pytest.mark.parametrize("schema", [doubling_refs(20), type_lists(8)], ids=["refs", "types"])
def test_an_exploding_schema_is_refused_after_bounded_work(
    schema: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(json.dumps(schema)) < 3000  # small on the wire
    CountingWriter.calls = 0
    monkeypatch.setattr(gemini, "_SchemaWriter", CountingWriter)
    with pytest.raises(InvalidRequest) as refused:
        gemini_schema(schema, param="tools[0].function.parameters")
    assert refused.value.param == "tools[0].function.parameters"
    assert "too large" in refused.value.message
    assert CountingWriter.calls <= MAX_SCHEMA_NODES + 1


def test_the_refusal_names_the_tool_parameter_through_the_translation() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "google/g",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
                {"type": "function", "function": {"name": "bomb", "parameters": doubling_refs(20)}},
            ],
        }
    )
    with pytest.raises(InvalidRequest) as refused:
        to_gemini(request, "gemini-2.5-flash")
    assert refused.value.param == "tools[1].function.parameters"


def test_an_ordinary_schema_with_shared_refs_still_converts() -> None:
    converted = gemini_schema(doubling_refs(6))
    assert converted["type"] == "OBJECT"
    assert converted["properties"]["a"]["properties"]["b"]["type"] == "OBJECT"
