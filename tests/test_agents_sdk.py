"""The OpenAI Agents SDK (its default Responses model) runs agents through Axione to completion.

The agent's model is `OpenAIResponsesModel` on an `AsyncOpenAI` client whose
base URL is the gateway in-process; the gateway translates to the Anthropic
and Gemini fakes, which call the agent's tools and then answer from them.
"""

from __future__ import annotations

import httpx2
import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from tests.messages_backends import gateway, new_backend

pytestmark = pytest.mark.anyio

set_tracing_disabled(True)  # the SDK would export traces to OpenAI otherwise

CALLED: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLED.append(f"weather:{city}")
    return f"sunny in {city}"


@function_tool
def get_time(city: str) -> str:
    """The local time in a city."""
    CALLED.append(f"time:{city}")
    return f"noon in {city}"


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
async def test_an_agent_with_two_tools_runs_to_completion(kind: str) -> None:
    backend = new_backend(kind)
    if kind == "anthropic":
        backend.fake.tool_calls_per_turn = 2  # both tools at once, as parallel calls
    CALLED.clear()
    async with gateway(backend) as gw:
        client = openai.AsyncOpenAI(
            api_key=gw.key,
            base_url="http://axione.test/v1",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gw.app)),
        )
        agent = Agent(
            name="Assistant",
            instructions="Use the tools, then answer.",
            tools=[get_weather, get_time],
            model=OpenAIResponsesModel(model=backend.model, openai_client=client),
            model_settings=ModelSettings(tool_choice="auto"),
        )
        result = await Runner.run(agent, "What about Paris?", max_turns=4)
    assert CALLED  # the agent's own tools ran on the fake's calls
    assert isinstance(result.final_output, str) and result.final_output
    for called in CALLED:
        kind_, _, city = called.partition(":")
        assert (("sunny" if kind_ == "weather" else "noon") + " in " + city) in result.final_output
    if kind == "anthropic":
        assert sorted(c.split(":")[0] for c in CALLED) == ["time", "weather"]
