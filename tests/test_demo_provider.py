"""The offline demo provider: deterministic answers, caps, stops, tools, its own token counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from axione_asgi.errors import ModelNotFound
from axione_asgi.openai_types import ChatCompletionChunk, ChatCompletionRequest
from axione_asgi.providers.demo import DemoProvider, count_tokens

pytestmark = pytest.mark.anyio

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
OTHER_TOOL = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}


def request(text: str = "the quick brown fox", **fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "demo/echo", "messages": [{"role": "user", "content": text}], **fields}
    )


async def collect(req: ChatCompletionRequest, model: str = "echo") -> list[ChatCompletionChunk]:
    return [c async for c in DemoProvider().stream(req, model)]


async def test_echo_answers_the_last_user_message() -> None:
    completion = await DemoProvider().chat(request("hello world"), "echo")
    assert completion.choices[0].message.content == "hello world"
    assert completion.choices[0].finish_reason == "stop"


async def test_same_request_gives_the_same_answer() -> None:
    first = await DemoProvider().chat(request(), "echo")
    second = await DemoProvider().chat(request(), "echo")
    assert first.choices == second.choices
    assert first.usage == second.usage


async def test_lorem_answers_fixed_text_whatever_the_input() -> None:
    a = await DemoProvider().chat(request("one"), "lorem")
    b = await DemoProvider().chat(request("two"), "lorem")
    assert a.choices[0].message.content == b.choices[0].message.content
    assert "demo" in (a.choices[0].message.content or "").lower()


async def test_usage_counts_come_from_its_own_text() -> None:
    completion = await DemoProvider().chat(request("a b, c!"), "echo")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == count_tokens("a b, c!") == 5
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


async def test_max_tokens_cuts_the_answer_with_finish_length() -> None:
    completion = await DemoProvider().chat(request("one two three four", max_tokens=2), "echo")
    assert completion.choices[0].message.content == "one two "
    assert completion.choices[0].finish_reason == "length"


async def test_max_completion_tokens_cuts_like_max_tokens() -> None:
    completion = await DemoProvider().chat(
        request("one two three", max_completion_tokens=1), "echo"
    )
    assert completion.choices[0].finish_reason == "length"


async def test_stop_sequence_cuts_the_answer() -> None:
    completion = await DemoProvider().chat(request("alpha beta STOP gamma", stop=["STOP"]), "echo")
    assert completion.choices[0].message.content == "alpha beta "
    assert completion.choices[0].finish_reason == "stop"


async def test_tools_make_the_model_call_the_first_tool() -> None:
    completion = await DemoProvider().chat(request("find it", tools=[TOOL, OTHER_TOOL]), "echo")
    calls = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert calls is not None and calls[0].function.name == "lookup"
    assert json.loads(calls[0].function.arguments) == {"input": "find it"}


async def test_named_tool_choice_picks_that_tool() -> None:
    choice = {"type": "function", "function": {"name": "other"}}
    completion = await DemoProvider().chat(
        request("x", tools=[TOOL, OTHER_TOOL], tool_choice=choice), "echo"
    )
    assert completion.choices[0].message.tool_calls[0].function.name == "other"  # type: ignore[index]


async def test_tool_choice_none_answers_with_text() -> None:
    completion = await DemoProvider().chat(request("x", tools=[TOOL], tool_choice="none"), "echo")
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content == "x"


async def test_after_a_tool_result_the_model_answers_with_it() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "demo/echo",
            "tools": [TOOL],
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
        }
    )
    completion = await DemoProvider().chat(req, "echo")
    assert completion.choices[0].message.content == "The tool answered: sunny"


async def test_tool_call_id_is_stable_across_processes() -> None:
    # "Deterministic" must hold across server restarts, not only within one process.
    code = (
        "import asyncio; from axione_asgi.providers.demo import DemoProvider; "
        "from axione_asgi.openai_types import ChatCompletionRequest as R; "
        "r = R.model_validate({'model': 'demo/echo', 'messages': [{'role': 'user', "
        "'content': 'x'}], 'tools': [{'type': 'function', 'function': {'name': 'f'}}]}); "
        "print(asyncio.run(DemoProvider().chat(r, 'echo')).choices[0].message.tool_calls[0].id)"
    )
    ids = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(ids) == 1, ids


async def test_n_gives_that_many_choices() -> None:
    completion = await DemoProvider().chat(request("hi", n=3), "echo")
    assert [c.index for c in completion.choices] == [0, 1, 2]


async def test_unknown_model_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound):
        await DemoProvider().chat(request(), "nope")


async def test_stream_joins_to_the_unstreamed_answer() -> None:
    req = request("streaming word by word")
    whole = await DemoProvider().chat(req, "echo")
    chunks = await collect(req)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


async def test_stream_goes_word_by_word() -> None:
    chunks = await collect(request("one two three"))
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert pieces == ["one ", "two ", "three"]


async def test_stream_ends_with_finish_then_a_usage_only_chunk() -> None:
    req = request("one two three", max_tokens=2)
    chunks = await collect(req)
    whole = await DemoProvider().chat(req, "echo")
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage


async def test_stream_tool_call_reassembles_to_the_unstreamed_call() -> None:
    req = request("find", tools=[TOOL])
    whole = await DemoProvider().chat(req, "echo")
    chunks = await collect(req)
    args = "".join(
        d.function.arguments or ""
        for c in chunks
        for choice in c.choices
        for d in choice.delta.tool_calls or []
        if d.function is not None
    )
    assert args == whole.choices[0].message.tool_calls[0].function.arguments  # type: ignore[index]
    assert any(c.choices and c.choices[0].finish_reason == "tool_calls" for c in chunks)


def test_demo_models_are_echo_and_lorem() -> None:
    assert {"echo", "lorem"} <= set(DemoProvider().models())
