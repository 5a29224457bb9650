"""Tool calling and structured outputs over HTTP, through the official OpenAI SDK (issue 10).

Random-weight CPU models write noise, so `auto` is checked for structure only; named and `required`
choices are constrained, and their arguments must be complete JSON objects that validate.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import openai
import pytest

from .support import D4_CRITIC, D4_GENERATOR, PRESET
from .tool_support import (
    AUTO_TOOL_MODELS,
    NAMED,
    TOOLS,
    UNKNOWN_TOOL_CHOICE,
    USER,
    check_calls,
    check_json_answer,
    json_answer_request,
    tool_call_request,
    tool_result_history,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_model]

STRICT_TOOLS = copy.deepcopy(TOOLS)
for _tool in STRICT_TOOLS:
    _tool["function"]["strict"] = True


@pytest.fixture(params=[D4_GENERATOR, D4_CRITIC])
def d4_model(request: pytest.FixtureRequest, require_model: Any) -> str:
    """qwen2.5-7b has a tool parser (hermes); deepseek-r1-7b has none and is a reasoning model."""
    require_model(request.param)
    return str(request.param)


async def test_named_call_arguments_validate(openai_client: Any, d4_model: str) -> None:
    for seed in (1, 2, 3):
        response = await openai_client.chat.completions.create(**tool_call_request(d4_model, seed=seed))
        (call,) = check_calls(response.choices[0], {"get_weather"})
        assert call.function.name == "get_weather"


async def test_required_call_arguments_validate(openai_client: Any, d4_model: str) -> None:
    response = await openai_client.chat.completions.create(
        **tool_call_request(d4_model, tool_choice="required", parallel_tool_calls=False, seed=5)
    )
    calls = check_calls(response.choices[0])
    assert len(calls) == 1


async def test_parallel_required_calls_are_each_valid_or_cut_with_length(openai_client: Any) -> None:
    response = await openai_client.chat.completions.create(
        **tool_call_request(D4_GENERATOR, tool_choice="required", max_tokens=600, seed=8)
    )
    choice = response.choices[0]
    if choice.finish_reason == "length":  # random weights may keep adding calls to the array
        assert choice.message.tool_calls is None
    else:
        check_calls(choice)


async def test_a_call_cut_at_max_tokens_says_length(openai_client: Any) -> None:
    response = await openai_client.chat.completions.create(
        **tool_call_request(D4_GENERATOR, max_tokens=3, seed=1)
    )
    choice = response.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls and choice.message.tool_calls[0].function.name == "get_weather"


async def test_streamed_tool_calls_are_assembled_by_the_sdk(openai_client: Any, d4_model: str) -> None:
    for tool_choice in (NAMED, "required"):
        async with openai_client.chat.completions.stream(
            **tool_call_request(
                d4_model, tools=STRICT_TOOLS, tool_choice=tool_choice, parallel_tool_calls=False, seed=3
            )
        ) as stream:
            deltas = [event async for event in stream if event.type == "tool_calls.function.arguments.delta"]
            completion = await stream.get_final_completion()
        (call,) = check_calls(completion.choices[0])
        # The SDK parsed the assembled arguments (strict tools), and they arrived in pieces.
        assert call.function.parsed_arguments == json.loads(call.function.arguments)
        assert deltas, "no argument deltas were streamed"


async def test_multi_turn_with_tool_results(openai_client: Any, d4_model: str) -> None:
    first = await openai_client.chat.completions.create(**tool_call_request(d4_model, seed=4))
    (call,) = check_calls(first.choices[0])
    history = tool_result_history(
        # the assistant's turn echoed back the way agent frameworks do
        first.choices[0].message.model_dump(exclude_none=True) | {"content": None},
        call.id,
        {"forecast": "sunny", "high": 21},
    )
    second = await openai_client.chat.completions.create(
        **tool_call_request(
            d4_model, messages=history, tool_choice="required", parallel_tool_calls=False, seed=4
        )
    )
    check_calls(second.choices[0])
    final = await openai_client.chat.completions.create(
        **tool_call_request(d4_model, messages=history, tool_choice="none", max_tokens=16, seed=4)
    )
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].finish_reason in ("stop", "length")


async def test_auto_has_the_right_structure_or_a_clear_400(openai_client: Any, d4_model: str) -> None:
    if d4_model not in AUTO_TOOL_MODELS:
        with pytest.raises(openai.BadRequestError) as caught:
            await openai_client.chat.completions.create(
                **tool_call_request(d4_model, tool_choice="auto", max_tokens=8)
            )
        assert caught.value.param == "tools" and "required" in caught.value.message
        return
    response = await openai_client.chat.completions.create(
        model=d4_model, messages=USER, tools=TOOLS, max_tokens=48, seed=2
    )
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    for call in choice.message.tool_calls or []:  # whatever random weights found, well formed
        assert call.type == "function" and call.id and call.function.name in ("get_weather", "get_time")
    assert (choice.finish_reason == "tool_calls") == bool(choice.message.tool_calls)
    stream = await openai_client.chat.completions.create(
        model=d4_model, messages=USER, tools=TOOLS, max_tokens=48, seed=2, stream=True
    )
    finishes, called = [], False
    async for chunk in stream:
        for streamed in chunk.choices:
            finishes += [streamed.finish_reason] if streamed.finish_reason else []
            for delta in streamed.delta.tool_calls or []:
                called = True
                assert delta.index >= 0
    assert len(finishes) == 1 and finishes[0] in ("stop", "length", "tool_calls"), finishes
    assert (finishes[0] == "tool_calls") == called


async def test_json_schema_output_is_complete_and_validates(openai_client: Any, d4_model: str) -> None:
    for seed in (1, 2):
        response = await openai_client.chat.completions.create(**json_answer_request(d4_model, seed=seed))
        check_json_answer(response.choices[0])
        assert response.choices[0].message.tool_calls is None


async def test_json_object_output_is_an_object(openai_client: Any) -> None:
    response = await openai_client.chat.completions.create(
        model=D4_GENERATOR,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"},
        max_tokens=24,
        seed=1,
    )
    content = response.choices[0].message.content
    assert content.startswith("{"), content  # complete only if the random weights close it in time
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


async def test_models_list_their_capabilities(client: httpx.AsyncClient) -> None:
    cards = (await client.get("/v1/models")).json()["data"]
    assert cards
    for card in cards:
        caps = card["capabilities"]
        assert caps["tools"] is True and {"none", "required", "named"} <= set(caps["tool_choice"])
        assert caps["structured_outputs"] == ["json_object", "json_schema"]
        assert ("auto" in caps["tool_choice"]) == (card["id"] in AUTO_TOOL_MODELS), card
        assert caps.get("tool_parser") == AUTO_TOOL_MODELS.get(card["id"]), card
        assert caps["reasoning"] == (card["id"] == D4_CRITIC), card


# ---------------------------------------------------------------- pipelines


def _critique(**extra: Any) -> dict[str, Any]:
    return {"orchestration": {"mode": "critique", "rounds": 1}, **extra}


async def test_critique_with_response_format(openai_client: Any, d4_deployed: None) -> None:
    response = await openai_client.chat.completions.create(
        **json_answer_request(PRESET, question="Is 7 prime? Answer in JSON.", seed=3, extra_body=_critique())
    )
    check_json_answer(response.choices[0])
    steps = response.model_extra["orchestration"]["steps"]
    critics = [s for s in steps if s["role"] == "critic"]
    assert critics and all(s["verdict"] in ("approved", "needs_revision") for s in critics), critics
    # The verdict is structured output: a complete JSON object, never free text.
    for step in critics:
        assert json.loads(step["content"])["verdict"] == step["verdict"]
    # Only the final answer is shaped by the caller's format: the draft is free text.
    assert steps[0]["role"] == "generator" and steps[-1]["role"] == "generator"


async def test_critique_final_answer_can_be_a_tool_call(openai_client: Any, d4_deployed: None) -> None:
    response = await openai_client.chat.completions.create(
        **tool_call_request(PRESET, seed=6, extra_body=_critique())
    )
    check_calls(response.choices[0], {"get_weather"})
    async with openai_client.chat.completions.stream(
        **tool_call_request(PRESET, tools=STRICT_TOOLS, seed=6, extra_body=_critique())
    ) as stream:
        completion = await stream.get_final_completion()
    check_calls(completion.choices[0], {"get_weather"})


async def test_critique_auto_tools_on_a_model_without_parser_is_refused_before_any_step(
    openai_client: Any, d4_deployed: None
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(
            model=PRESET,
            messages=USER,
            tools=TOOLS,
            max_tokens=8,
            extra_body={
                "orchestration": {"mode": "critique", "generator": D4_CRITIC, "critic": D4_GENERATOR}
            },
        )
    assert caught.value.param == "tools"


async def test_ensemble_judge_picks_with_structured_output(openai_client: Any, d4_deployed: None) -> None:
    response = await openai_client.chat.completions.create(
        **tool_call_request(
            PRESET,
            tool_choice="required",
            parallel_tool_calls=False,
            seed=2,
            extra_body={"orchestration": {"mode": "ensemble", "models": [D4_GENERATOR, D4_CRITIC]}},
        )
    )
    check_calls(response.choices[0])
    steps = response.model_extra["orchestration"]["steps"]
    (judge,) = [s for s in steps if s["role"] == "judge"]
    pick = json.loads(judge["content"])
    assert 1 <= pick["winner"] <= 2 and judge["verdict"] == f"winner:{steps[pick['winner'] - 1]['model']}"


# ---------------------------------------------------------------- bad input: 400 naming the param


BAD_CHAT = [
    pytest.param(
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
        "tools.0.function.parameters",
        id="parameters-not-an-object-schema",
    ),
    pytest.param(
        {"tools": TOOLS, "tool_choice": UNKNOWN_TOOL_CHOICE},
        "tool_choice",
        id="tool_choice-unknown-function",
    ),
    pytest.param(
        {"messages": [*USER, {"role": "tool", "content": "sunny"}]},
        "messages.1.tool_call_id",
        id="tool-message-without-tool_call_id",
    ),
    pytest.param(
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nope"}},
            }
        },
        "response_format.json_schema.schema",
        id="invalid-json-schema",
    ),
]


@pytest.mark.parametrize(("overrides", "param"), BAD_CHAT)
async def test_bad_tool_input_is_a_400_naming_the_param(
    openai_client: Any, model_id: str, overrides: dict[str, Any], param: str
) -> None:
    body = {"model": model_id, "messages": USER, "max_tokens": 8, **overrides}
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(**body)
    assert caught.value.status_code == 400 and caught.value.param == param, caught.value.body


async def test_tools_on_completions_are_a_400_naming_tools(openai_client: Any, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.completions.create(
            model=model_id, prompt="hi", max_tokens=4, extra_body={"tools": TOOLS}
        )
    assert caught.value.param == "tools" and caught.value.code == "unknown_parameter"


async def test_every_message_has_a_content_key(client: httpx.AsyncClient, d4_deployed: None) -> None:
    """Raw clients read message["content"]: it is there (null allowed) on every path."""
    bodies = [
        {"model": D4_CRITIC, "messages": USER, "max_tokens": 4, "seed": 1},  # reasoning only, cut
        tool_call_request(D4_GENERATOR),
        {"model": PRESET, "messages": USER, "max_tokens": 8, **_critique()},
    ]
    for body in bodies:
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        message = response.json()["choices"][0]["message"]
        assert "content" in message, message
