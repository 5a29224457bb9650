"""Tools, schemas and checks shared by the tool-calling integration tests (service and gateway).

The tiny CPU checkpoint has random weights, so a call's *content* is noise; what the tests check is
structure: constrained arguments are a complete JSON object that validates against the tool's
`parameters`. Strings carry `maxLength` and numbers bounds so that a complete object always fits the
token budget (random weights would otherwise write one endless string until max_tokens cuts it).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
TIME_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast for a city.",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Current time.", "parameters": TIME_PARAMETERS},
    },
]
PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 40},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "ok": {"type": "boolean"},
    },
    "required": ["answer", "confidence", "ok"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True},
}
# Room for a complete call or answer object under the bounds above.
MAX_TOKENS = 160
# Models whose catalog entry names a vLLM tool parser: they alone serve tool_choice "auto".
AUTO_TOOL_MODELS = {"qwen2.5-7b": "hermes", "llama-3.2-3b": "llama3_json"}
USER = [{"role": "user", "content": "What's the weather in Paris for 3 days?"}]
# A tool_choice naming a function that the request's tools do not define: a 400 naming tool_choice.
UNKNOWN_TOOL_CHOICE = {"type": "function", "function": {"name": "nope"}}


def tool_call_request(
    model: str,
    *,
    tool_choice: Any = NAMED,
    seed: int | None = None,
    messages: list[Any] = USER,
    tools: list[dict[str, Any]] = TOOLS,
    max_tokens: int = MAX_TOKENS,
    parallel_tool_calls: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A chat request for a tool call, as keyword arguments of the SDK's `chat.completions.create`
    (or `.stream`) or as a raw JSON body. `seed` and `parallel_tool_calls` are sent only when given."""
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "tools": tools,
        "tool_choice": tool_choice,
        "max_tokens": max_tokens,
        **extra,
    }
    if seed is not None:
        request["seed"] = seed
    if parallel_tool_calls is not None:
        request["parallel_tool_calls"] = parallel_tool_calls
    return request


def json_answer_request(
    model: str, *, seed: int, question: str = "Answer in JSON.", **extra: Any
) -> dict[str, Any]:
    """A chat request whose answer must be an ANSWER_SCHEMA object (response_format json_schema)."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "response_format": JSON_SCHEMA_FORMAT,
        "max_tokens": MAX_TOKENS,
        "seed": seed,
        **extra,
    }


def tool_result_history(assistant: dict[str, Any], call_id: str, result: Any) -> list[dict[str, Any]]:
    """USER, the assistant's turn that called a tool, and the tool's result: the history an agent
    sends back for the model's next turn."""
    return [*USER, assistant, {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}]


def valid_arguments(name: str, arguments: str) -> dict[str, Any]:
    """The call's arguments parsed, asserted to be a JSON object valid for the named tool."""
    value = json.loads(arguments)
    assert isinstance(value, dict), f"arguments of {name} are not a JSON object: {arguments!r}"
    jsonschema.validate(value, PARAMETERS[name])
    return value


def check_calls(choice: Any, names: set[str] | None = None) -> list[Any]:
    """A choice that is a complete constrained answer: calls only, content null, finish_reason
    tool_calls, each call's arguments valid for its tool (one of `names`, or any of TOOLS)."""
    message, finish_reason = choice.message, choice.finish_reason
    assert finish_reason == "tool_calls", f"finish_reason {finish_reason!r}: {message}"
    assert message.content is None, message
    calls = message.tool_calls or []
    assert calls, message
    for call in calls:
        assert call.type == "function" and call.id, call
        assert call.function.name in (names or set(PARAMETERS)), call
        valid_arguments(call.function.name, call.function.arguments)
    return list(calls)


def check_json_answer(choice: Any) -> dict[str, Any]:
    """A choice whose content is a complete ANSWER_SCHEMA object (finish_reason stop)."""
    assert choice.finish_reason == "stop", choice
    value = json.loads(choice.message.content)
    jsonschema.validate(value, ANSWER_SCHEMA)
    assert isinstance(value, dict)
    return value
