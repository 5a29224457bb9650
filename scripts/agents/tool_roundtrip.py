"""A full tool round trip through the OpenAI Agents SDK, against the service's OpenAI API.

Runs in the agents venv (scripts/agents/setup.sh). The agent must call `get_weather` (tool_choice
"required"), the SDK runs the tool and sends its result back as a `role: "tool"` message, and the
model answers. The tool's parameters are bounded (length, range, enum) so the random-weight CPU
models can complete a call within max_tokens. Prints one JSON line with what happened.

    python scripts/agents/tool_roundtrip.py --base-url http://localhost:8085/v1 --model qwen2.5-7b
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Annotated, Literal

from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI
from pydantic import Field

CALLS: list[dict[str, object]] = []


@function_tool
def get_weather(
    city: Annotated[str, Field(max_length=12)],
    days: Annotated[int, Field(ge=1, le=14)],
    unit: Literal["celsius", "fahrenheit"],
) -> str:
    """Weather forecast for a city.

    Args:
        city: The city.
        days: How many days ahead.
        unit: Temperature unit.
    """
    CALLS.append({"city": city, "days": days, "unit": unit})
    return json.dumps({"forecast": "sunny", "high": 21, "unit": unit})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    set_tracing_disabled(True)  # no traces are sent anywhere
    client = AsyncOpenAI(
        base_url=args.base_url, api_key=os.environ.get("INFERENCE_API_KEY") or "none", max_retries=0
    )
    agent = Agent(
        name="weather",
        instructions="Use get_weather to answer.",
        model=OpenAIChatCompletionsModel(model=args.model, openai_client=client),
        tools=[get_weather],
        # The first turn must call the tool; the SDK then resets tool_choice (reset_tool_choice)
        # so the model answers the tool result instead of calling again.
        model_settings=ModelSettings(
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=160,
            extra_args={"seed": args.seed},
        ),
    )
    result = await Runner.run(agent, "What's the weather in Paris for 3 days?", max_turns=4)
    print(
        json.dumps(
            {
                "tool_calls": CALLS,
                "items": [item.type for item in result.new_items],
                "final_output": result.final_output,
                "parameters": get_weather.params_json_schema,
            }
        )
    )
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
