"""The fake Gemini is checked against Google's own SDK and against what the real API refuses."""

from __future__ import annotations

from typing import Any

import httpx
import httpx2
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.fakes.gemini_fake import FAKE_KEY, GeminiFake

pytestmark = pytest.mark.anyio

MODEL = "gemini-2.5-flash"
URL = f"/v1beta/models/{MODEL}:generateContent"
HELLO = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


def sdk(fake: GeminiFake, api_key: str = FAKE_KEY) -> genai.Client:
    """Google's SDK, served in-process by the fake through an httpx2 ASGI transport."""
    return genai.Client(
        api_key=api_key,
        http_options=types.HttpOptions(
            base_url="http://fake",
            api_version="v1beta",
            async_client_args={"transport": httpx2.ASGITransport(app=fake)},
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


async def post(fake: GeminiFake, body: Any, *, url: str = URL, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url="http://fake"
    ) as client:
        return await client.post(url, json=body, headers={"x-goog-api-key": FAKE_KEY, **headers})


# -- the SDK accepts the fake ------------------------------------------------------
async def test_sdk_generate_content_reads_text_finish_and_usage() -> None:
    fake = GeminiFake()
    response = await sdk(fake).aio.models.generate_content(
        model=MODEL,
        contents="one two three four",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=3),
    )
    assert response.text == "one two three "
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert response.usage_metadata is not None
    assert response.usage_metadata.candidates_token_count == 3
    assert response.model_version == MODEL


async def test_sdk_stream_gets_several_chunks_and_a_finish() -> None:
    fake = GeminiFake()
    stream = await sdk(fake).aio.models.generate_content_stream(
        model=MODEL, contents="one two three four five six"
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) >= 3
    assert "".join(c.text or "" for c in chunks) == "one two three four five six"
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert fake.last.query == {"alt": "sse"}


async def test_sdk_function_declaration_gets_a_function_call() -> None:
    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    fake = GeminiFake()
    response = await sdk(fake).aio.models.generate_content(
        model=MODEL,
        contents="Paris",
        config=types.GenerateContentConfig(
            tools=[get_weather],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        ),
    )
    assert response.function_calls is not None
    assert response.function_calls[0].name == "get_weather"
    assert response.function_calls[0].args == {"city": "Paris"}


async def test_sdk_sees_rate_limit_as_429_client_error() -> None:
    with pytest.raises(genai_errors.ClientError) as caught:
        await sdk(GeminiFake(fail_status=429)).aio.models.generate_content(
            model=MODEL, contents="hi"
        )
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"


async def test_sdk_sees_a_wrong_key_as_api_key_invalid() -> None:
    with pytest.raises(genai_errors.ClientError) as caught:
        await sdk(GeminiFake(), api_key="AIzaWRONG").aio.models.generate_content(
            model=MODEL, contents="hi"
        )
    assert caught.value.code == 400
    assert "API key not valid" in (caught.value.message or "")


# -- what the fake refuses, as the real API does --------------------------------------
async def test_missing_key_is_403_permission_denied() -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=GeminiFake()), base_url="http://fake"
    ) as client:
        response = await client.post(URL, json=HELLO)
    assert response.status_code == 403
    assert response.json()["error"]["status"] == "PERMISSION_DENIED"


async def test_key_as_query_parameter_is_accepted() -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=GeminiFake()), base_url="http://fake"
    ) as client:
        response = await client.post(URL, params={"key": FAKE_KEY}, json=HELLO)
    assert response.status_code == 200


async def test_wrong_key_is_400_api_key_invalid() -> None:
    response = await post(GeminiFake(), HELLO, **{"x-goog-api-key": "AIzaWRONG"})
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


async def test_unknown_model_is_404_not_found() -> None:
    response = await post(GeminiFake(), HELLO, url="/v1beta/models/gpt-4o:generateContent")
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "body",
    [
        {**HELLO, "max_tokens": 5},
        {**HELLO, "generationConfig": {"max_tokens": 5}},
        {**HELLO, "generationConfig": {"temperature": 2.5}},
        {**HELLO, "generationConfig": {"temperature": "hot"}},
        {"contents": []},
        {"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]},
        {"contents": [{"role": "system", "parts": [{"text": "hi"}]}]},
        {"contents": [{"role": "user", "parts": []}]},
        {"contents": [{"role": "user", "parts": [{"text": ""}]}]},
        {"contents": [{"role": "user", "parts": [{"functionResponse": {"response": {}}}]}]},
        {"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {}}]}]},
        {
            **HELLO,
            "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT"}}]}],
        },
        {**HELLO, "tools": [{"functionDeclarations": [{"name": "9f"}]}]},
    ],
)
async def test_invalid_body_is_400_invalid_argument(body: dict[str, Any]) -> None:
    response = await post(GeminiFake(), body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_snake_case_proto_names_of_known_fields_are_accepted() -> None:
    body = {**HELLO, "generation_config": {"max_output_tokens": 5, "top_p": 0.5}}
    response = await post(GeminiFake(), body)
    assert response.status_code == 200


async def test_function_responses_must_match_the_calls_in_number() -> None:
    call = {"functionCall": {"name": "f", "args": {}}}
    result = {"functionResponse": {"name": "f", "response": {}}}
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "go"}]},
            {"role": "model", "parts": [call, call]},
            {"role": "user", "parts": [result]},
        ]
    }
    response = await post(GeminiFake(), body)
    assert response.status_code == 400
    assert "number of function response parts" in response.json()["error"]["message"]


async def test_gemini3_replayed_call_needs_a_thought_signature() -> None:
    call: dict[str, Any] = {"functionCall": {"name": "f", "args": {}}}
    result = {"functionResponse": {"name": "f", "response": {}}}
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "go"}]},
            {"role": "model", "parts": [call]},
            {"role": "user", "parts": [result]},
        ]
    }
    url = "/v1beta/models/gemini-3-flash-preview:generateContent"
    refused = await post(GeminiFake(), body, url=url)
    call["thoughtSignature"] = "skip_thought_signature_validator"
    accepted = await post(GeminiFake(), body, url=url)
    assert refused.status_code == 400
    assert accepted.status_code == 200


async def test_stream_without_alt_sse_is_one_json_array() -> None:
    response = await post(GeminiFake(), HELLO, url=f"/v1beta/models/{MODEL}:streamGenerateContent")
    assert response.status_code == 200
    assert isinstance(response.json(), list)


async def test_stream_events_are_crlf_framed() -> None:
    response = await post(
        GeminiFake(), HELLO, url=f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("data: {")
    assert response.text.endswith("\r\n\r\n")


# -- knobs and tool combinations ------------------------------------------------------
FUNCTIONS: dict[str, Any] = {
    "functionDeclarations": [
        {"name": "f", "parameters": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}}},
        {"name": "g", "parameters": {"type": "OBJECT", "properties": {"b": {"type": "STRING"}}}},
    ]
}
TWO_FUNCTIONS = {**HELLO, "tools": [FUNCTIONS]}


async def test_tool_names_choose_the_function_and_tool_args_its_args() -> None:
    fake = GeminiFake()
    default = await post(fake, TWO_FUNCTIONS)
    fake.tool_names, fake.tool_args = ["missing", "g"], {"b": "chosen", "n": 2}
    chosen = await post(fake, TWO_FUNCTIONS)
    fake.tool_names = []
    text = await post(fake, TWO_FUNCTIONS)
    (part,) = default.json()["candidates"][0]["content"]["parts"]
    assert part["functionCall"] == {"name": "f", "args": {"a": "hello"}}
    (part,) = chosen.json()["candidates"][0]["content"]["parts"]
    assert part["functionCall"] == {"name": "g", "args": {"b": "chosen", "n": 2}}
    assert text.json()["candidates"][0]["content"]["parts"] == [{"text": "hello"}]


async def test_built_in_tools_beside_function_declarations_need_gemini_3_and_the_flag() -> None:
    tools = [{"googleSearch": {}}, FUNCTIONS]
    both = {**HELLO, "tools": tools}
    gemini3 = "/v1beta/models/gemini-3-flash-preview:generateContent"
    flagged = {**both, "toolConfig": {"includeServerSideToolInvocations": True}}
    refused = await post(GeminiFake(), both)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "Tool use with function calling is unsupported by the model."
    )
    assert (await post(GeminiFake(), both, url=gemini3)).status_code == 400
    assert (await post(GeminiFake(), flagged, url=gemini3)).status_code == 200
    # Either kind alone is fine on any model.
    assert (await post(GeminiFake(), {**HELLO, "tools": tools[:1]})).status_code == 200
    assert (await post(GeminiFake(), TWO_FUNCTIONS)).status_code == 200


async def test_sdk_combines_search_and_a_function_on_gemini_3() -> None:
    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    fake = GeminiFake()
    response = await sdk(fake).aio.models.generate_content(
        model="gemini-3-flash-preview",
        contents="Paris",
        config=types.GenerateContentConfig(
            tools=[types.Tool(google_search=types.GoogleSearch()), get_weather],
            tool_config=types.ToolConfig(include_server_side_tool_invocations=True),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        ),
    )
    assert fake.last_body["toolConfig"] == {"includeServerSideToolInvocations": True}
    assert response.function_calls is not None
    assert response.function_calls[0].name == "get_weather"
