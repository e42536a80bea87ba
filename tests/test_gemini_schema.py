"""JSON Schema to Gemini `Schema`: what Gemini would reject is rewritten or dropped."""

from __future__ import annotations

from typing import Any

import pytest

from axione_asgi.errors import InvalidRequest
from axione_asgi.openai_types import ChatCompletionRequest
from axione_asgi.providers.gemini import from_gemini, gemini_schema, to_gemini, tool_call_id


def test_rejected_keys_are_dropped() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"q": {"type": "string", "examples": ["cats"]}},
        "additionalProperties": False,
        "strict": True,
    }
    assert gemini_schema(schema) == {
        "type": "OBJECT",
        "properties": {"q": {"type": "STRING", "example": "cats"}},
    }


def test_local_refs_are_inlined() -> None:
    schema = {
        "type": "object",
        "properties": {"home": {"$ref": "#/$defs/Place", "description": "Where they live"}},
        "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}}},
    }
    assert gemini_schema(schema)["properties"]["home"] == {
        "type": "OBJECT",
        "description": "Where they live",
        "properties": {"city": {"type": "STRING"}},
    }


def test_recursive_refs_are_cut_to_a_free_object() -> None:
    schema = {
        "type": "object",
        "properties": {"child": {"$ref": "#"}},
    }
    converted = gemini_schema(schema)
    node = converted
    while "properties" in node:
        node = node["properties"]["child"]
    assert node == {"type": "OBJECT"}


def test_optional_types_become_nullable() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "b": {"type": ["integer", "null"]},
        },
    }
    assert gemini_schema(schema)["properties"] == {
        "a": {"type": "STRING", "nullable": True, "default": None},
        "b": {"type": "INTEGER", "nullable": True},
    }


def test_one_of_becomes_any_of() -> None:
    schema = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    assert gemini_schema(schema) == {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]}


def test_string_const_becomes_enum_and_numeric_enums_are_dropped() -> None:
    assert gemini_schema({"const": "on"}) == {"type": "STRING", "enum": ["on"]}
    assert gemini_schema({"type": "integer", "enum": [1, 2]}) == {"type": "INTEGER"}


def test_formats_gemini_rejects_are_dropped() -> None:
    assert gemini_schema({"type": "string", "format": "uri"}) == {"type": "STRING"}
    assert gemini_schema({"type": "string", "format": "date-time"}) == {
        "type": "STRING",
        "format": "date-time",
    }


def test_arrays_without_items_get_string_items() -> None:
    assert gemini_schema({"type": "array"}) == {"type": "ARRAY", "items": {"type": "STRING"}}


def test_all_of_is_merged() -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "number"}}},
        ]
    }
    assert gemini_schema(schema) == {
        "type": "OBJECT",
        "properties": {"a": {"type": "STRING"}, "b": {"type": "NUMBER"}},
        "required": ["a"],
    }


def test_required_names_without_properties_are_dropped() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "zz"]}
    assert gemini_schema(schema)["required"] == ["a"]


def test_tool_call_id_is_deterministic_and_distinct_per_position() -> None:
    first = tool_call_id("r1", 0, "f", {"x": 1})
    assert first == tool_call_id("r1", 0, "f", {"x": 1})
    assert first != tool_call_id("r1", 1, "f", {"x": 1})
    assert first != tool_call_id("r2", 0, "f", {"x": 1})


def test_parallel_calls_in_one_answer_get_distinct_ids() -> None:
    call: dict[str, Any] = {"functionCall": {"name": "f", "args": {"x": 1}}}
    answer = from_gemini(
        {
            "candidates": [
                {"content": {"role": "model", "parts": [call, call]}, "finishReason": "STOP"}
            ],
            "responseId": "r",
        }
    )
    calls = answer.choices[0].message.tool_calls
    assert calls is not None
    assert len({c.id for c in calls}) == 2


def test_thought_parts_are_not_part_of_the_answer() -> None:
    answer = from_gemini(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [{"text": "thinking...", "thought": True}, {"text": "42"}],
                    },
                    "finishReason": "STOP",
                }
            ]
        }
    )
    assert answer.choices[0].message.content == "42"


def test_every_content_filter_reason_maps_to_content_filter() -> None:
    for reason in ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"):
        answer = from_gemini({"candidates": [{"finishReason": reason}]})
        assert answer.choices[0].finish_reason == "content_filter"


def test_audio_and_file_parts_become_inline_data() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}},
                        {
                            "type": "file",
                            "file": {"file_data": "data:application/pdf;base64,JVBERg=="},
                        },
                    ],
                }
            ],
        }
    )
    assert to_gemini(request)["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/mp3", "data": "AAAA"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERg=="}},
    ]


def test_replayed_refusal_part_is_sent_as_text() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
                {"role": "user", "content": "y"},
            ],
        }
    )
    assert to_gemini(request)["contents"][1] == {"role": "model", "parts": [{"text": "No."}]}


def test_unknown_part_type_is_an_invalid_request() -> None:
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "video", "v": 1}]}]}
    )
    with pytest.raises(InvalidRequest):
        to_gemini(request)
