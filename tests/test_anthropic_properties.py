"""Property: any valid OpenAI chat request translates into one the strict Anthropic fake accepts."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axione_asgi.config import ProviderConfig
from axione_asgi.openai_types import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from axione_asgi.providers.anthropic import AnthropicProvider
from tests.fakes.anthropic_fake import FAKE_API_KEY, FakeAnthropic

MODEL = "claude-3.5-sonnet"
_IMAGES = {
    "image/png": b"\x89PNG\r\n\x1a\n\x00\x00",
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF",
    "image/gif": b"GIF89a\x01\x00\x01\x00",
    "image/webp": b"RIFF\x10\x00\x00\x00WEBPVP8 ",
}

texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24
) | st.sampled_from(["", " ", "\n\t", "hello world", "END", "ends in space "])
names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_-]{0,20}", fullmatch=True)


@st.composite
def image_parts(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        url = "https://example.com/" + draw(st.from_regex(r"[a-z]{1,8}\.png", fullmatch=True))
    else:
        media = draw(st.sampled_from(sorted(_IMAGES)))
        label = draw(st.sampled_from([media, "image/jpeg", "image/jpg"]))  # mislabels happen
        url = f"data:{label};base64,{base64.b64encode(_IMAGES[media]).decode()}"
    return {"type": "image_url", "image_url": {"url": url}}


def text_parts() -> st.SearchStrategy[dict[str, Any]]:
    return texts.map(lambda t: {"type": "text", "text": t})


def contents(images: bool) -> st.SearchStrategy[Any]:
    parts = st.one_of(text_parts(), image_parts()) if images else text_parts()
    return st.one_of(texts, st.lists(parts, max_size=3))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(texts, inner, max_size=2),
    max_leaves=4,
)


@st.composite
def conversations(draw: st.DrawFn, tool_names: list[str]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    calls = 0
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["system", "developer", "user", "assistant", "tools"]))
        if kind in ("system", "developer"):
            messages.append({"role": kind, "content": draw(contents(images=False))})
        elif kind == "user":
            messages.append({"role": "user", "content": draw(contents(images=True))})
        elif kind == "assistant":
            messages.append({"role": "assistant", "content": draw(contents(images=False))})
        else:
            batch = []
            for _ in range(draw(st.integers(1, 3))):
                calls += 1
                separator = draw(st.sampled_from(["_", ".", ":", "-"]))
                arguments = json.dumps(draw(st.dictionaries(texts, json_values, max_size=3)))
                name = draw(st.sampled_from(tool_names)) if tool_names else draw(names)
                batch.append(
                    {
                        "id": f"call{separator}{calls}",
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                )
            content = draw(st.none() | texts)
            messages.append({"role": "assistant", "content": content, "tool_calls": batch})
            for call in batch:
                result = draw(st.one_of(texts, st.lists(text_parts(), max_size=2)))
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    return messages


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    tool_names = draw(st.lists(names, max_size=3, unique=True))
    tools = [
        {
            "type": "function",
            "function": {
                "name": name,
                **draw(st.fixed_dictionaries({}, optional={"description": texts})),
                **draw(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "parameters": st.just(
                                {"type": "object", "properties": {"q": {"type": "string"}}}
                            )
                        },
                    )
                ),
            },
        }
        for name in tool_names
    ]
    body: dict[str, Any] = {
        "model": f"anthropic/{MODEL}",
        "messages": draw(conversations(tool_names)),
    }
    optional = {
        "max_tokens": st.integers(1, 64),
        "max_completion_tokens": st.integers(1, 64),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "stop": st.one_of(texts, st.lists(texts, max_size=4)),
        "user": st.from_regex(r"[a-z0-9-]{1,40}", fullmatch=True),
        "seed": st.integers(0, 2**31),
        "n": st.just(1),
        "response_format": st.sampled_from(
            [
                {"type": "text"},
                {"type": "json_object"},
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            ]
        ),
    }
    body.update(draw(st.fixed_dictionaries({}, optional=optional)))
    if tools:
        body["tools"] = tools
        choices = ["auto", "required", "none"]
        body.update(
            draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "tool_choice": st.sampled_from(choices)
                        | st.sampled_from(tool_names).map(
                            lambda n: {"type": "function", "function": {"name": n}}
                        ),
                        "parallel_tool_calls": st.booleans(),
                    },
                )
            )
        )
    return body


async def _chat(body: dict[str, Any]) -> tuple[ChatCompletion, FakeAnthropic]:
    fake = FakeAnthropic(cache_read_input_tokens=3)
    config = ProviderConfig(kind="anthropic", base_url="http://anthropic.test", models={MODEL: "m"})
    provider = AnthropicProvider(
        "anthropic", config, api_key=FAKE_API_KEY, transport=httpx.ASGITransport(app=fake)
    )
    await provider.open()
    try:
        return await provider.chat(ChatCompletionRequest.model_validate(body), MODEL), fake
    finally:
        await provider.aclose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_requests())
def test_any_valid_chat_request_is_accepted_and_answered(body: dict[str, Any]) -> None:
    answer, fake = anyio.run(_chat, body)
    ChatCompletion.model_validate(answer.model_dump())
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls", "content_filter")
    assert (choice.finish_reason == "tool_calls") == bool(choice.message.tool_calls)
    for call in choice.message.tool_calls or []:
        assert isinstance(json.loads(call.function.arguments), dict)
    reported = fake.answers[-1]["usage"]
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == reported["input_tokens"] + 3
    assert answer.usage.completion_tokens == reported["output_tokens"]


async def _whole_and_streamed(
    body: dict[str, Any],
) -> tuple[ChatCompletion, list[ChatCompletionChunk]]:
    fake = FakeAnthropic(cache_creation_input_tokens=5)
    fake.tool_calls_per_turn = 2
    config = ProviderConfig(kind="anthropic", base_url="http://anthropic.test", models={MODEL: "m"})
    provider = AnthropicProvider(
        "anthropic", config, api_key=FAKE_API_KEY, transport=httpx.ASGITransport(app=fake)
    )
    request = ChatCompletionRequest.model_validate(body)
    await provider.open()
    try:
        whole = await provider.chat(request, MODEL)
        chunks = [chunk async for chunk in provider.stream(request, MODEL)]
    finally:
        await provider.aclose()
    return whole, chunks


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_requests())
def test_streamed_answer_reassembles_to_the_whole_answer(body: dict[str, Any]) -> None:
    whole, chunks = anyio.run(_whole_and_streamed, body)
    *deltas, finish, usage = chunks
    assert deltas[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in deltas)
    calls: dict[int, dict[str, str]] = {}
    for chunk in deltas:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    message = whole.choices[0].message
    assert text == (message.content or "")
    assert sorted(calls) == list(range(len(calls)))
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []
    ]
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason
    assert usage.choices == [] and usage.usage == whole.usage
