"""serve_app/protocol/: request validation, and each rejection as an OpenAI 400 naming its param."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.errors import InvalidRequest, invalid_request_from
from serve_app.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    OrchestrationRequest,
    Usage,
)

USER = [{"role": "user", "content": "hi"}]
CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


INVALID_CHAT = [
    pytest.param({"temperature": 2.5}, "temperature", id="temperature-above-2"),
    pytest.param({"temperature": -0.1}, "temperature", id="temperature-negative"),
    pytest.param({"top_p": 0}, "top_p", id="top_p-zero"),
    pytest.param({"n": 0}, "n", id="n-zero"),
    pytest.param({"max_tokens": 0}, "max_tokens", id="max_tokens-zero"),
    pytest.param({"messages": []}, "messages", id="messages-empty"),
    pytest.param(
        {"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id", id="tool-no-call-id"
    ),
    pytest.param({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", id="role-unknown"),
    pytest.param({"frobnicate": True}, "frobnicate", id="unknown-field"),
    pytest.param({"stop": ["a", "b", "c", "d", "e"]}, "stop", id="stop-five-sequences"),
    pytest.param({"stop": ""}, "stop", id="stop-empty"),
    pytest.param({"top_logprobs": 3}, "top_logprobs", id="top_logprobs-without-logprobs"),
    pytest.param(
        {"stream_options": {"include_usage": True}},
        "stream_options",
        id="stream_options-without-stream",
    ),
    pytest.param({"orchestration": {"rounds": 0}}, "orchestration.rounds", id="rounds-0"),
    pytest.param({"orchestration": {"rounds": 99}}, "orchestration.rounds", id="rounds-99"),
    pytest.param({"orchestration": {"mode": "debate"}}, "orchestration.mode", id="mode-unknown"),
    pytest.param({"orchestration": {"models": ["a"]}}, "orchestration.models", id="ensemble-one-model"),
    pytest.param(
        {"orchestration": {"surprise": 1}}, "orchestration.surprise", id="orchestration-unknown-key"
    ),
    pytest.param({"logit_bias": {"hello": 5}}, "logit_bias", id="logit_bias-word-key"),
    pytest.param({"logit_bias": {"42": 101}}, "logit_bias", id="logit_bias-value-out-of-range"),
    pytest.param({"top_logprobs": 21, "logprobs": True}, "top_logprobs", id="top_logprobs-21"),
    pytest.param({"model": ""}, "model", id="model-empty"),
    pytest.param(
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
        "tools.0.function.parameters",
        id="tool-parameters-not-an-object-schema",
    ),
    pytest.param(
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
        "tools.0.function.parameters",
        id="tool-parameters-invalid-schema",
    ),
    pytest.param(
        {"tools": [TOOL, TOOL]},
        "tools",
        id="tool-names-repeat",
    ),
    pytest.param(
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
        id="tool_choice-unknown-function",
    ),
    pytest.param({"tool_choice": "required"}, "tool_choice", id="tool_choice-without-tools"),
    pytest.param({"tool_choice": "sometimes", "tools": [TOOL]}, "tool_choice", id="tool_choice-unknown"),
    pytest.param(
        {"messages": [*USER, {"role": "assistant", "content": None}]},
        "messages.1.content",
        id="assistant-without-content-or-calls",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": "x", "tool_call_id": "c"}]},
        "messages.0.tool_call_id",
        id="tool_call_id-on-a-user-message",
    ),
    pytest.param(
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
        "response_format.json_schema.schema",
        id="response_format-invalid-schema",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]},
        "messages.0.content",
        id="tool_calls-on-a-user-message",
    ),
    pytest.param({"messages": [{"role": "user"}]}, "messages.0.content", id="user-without-content"),
    pytest.param({"response_format": {"type": "json_schema"}}, "response_format", id="json_schema-missing"),
    pytest.param({"response_format": {"type": "yaml"}}, "response_format.type", id="response_format-type"),
]


@pytest.mark.parametrize(("overrides", "param"), INVALID_CHAT)
def test_invalid_chat_request_is_a_400_naming_its_param(overrides: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": USER, **overrides}
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate(body)
    error = invalid_request_from(caught.value.errors())
    assert isinstance(error, InvalidRequest)
    assert error.status == 400 and error.type == "invalid_request_error"
    assert error.param == param, error.message
    assert error.message


def test_unknown_field_and_missing_field_codes() -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "functions": []})
    error = invalid_request_from(caught.value.errors())
    assert error.code == "unknown_parameter" and "functions" in error.message
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"messages": USER})
    error = invalid_request_from(caught.value.errors())
    assert (error.code, error.param) == ("missing_required_parameter", "model")


def test_value_error_prefix_is_stripped_from_messages() -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "logit_bias": {"x": 1}})
    error = invalid_request_from(caught.value.errors())
    assert error.message == "logit_bias: logit_bias keys must be token ids, got 'x'"


def test_json_invalid_becomes_invalid_json() -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate_json("{not json")
    error = invalid_request_from(caught.value.errors())
    assert (error.code, error.param) == ("invalid_json", None)


def test_max_tokens_and_max_completion_tokens_must_agree() -> None:
    with pytest.raises(ValidationError, match="disagree"):
        ChatCompletionRequest(model="m", messages=USER, max_tokens=5, max_completion_tokens=6)
    same = ChatCompletionRequest(model="m", messages=USER, max_tokens=5, max_completion_tokens=5)
    assert same.output_limit() == 5
    assert ChatCompletionRequest(model="m", messages=USER, max_completion_tokens=7).output_limit() == 7
    assert ChatCompletionRequest(model="m", messages=USER).output_limit() is None


@pytest.mark.parametrize(
    ("model", "body", "limit", "param"),
    [
        (ChatCompletionRequest, {"messages": USER}, None, "max_tokens"),
        (ChatCompletionRequest, {"messages": USER, "max_tokens": 5}, 5, "max_tokens"),
        (ChatCompletionRequest, {"messages": USER, "max_completion_tokens": 7}, 7, "max_completion_tokens"),
        (
            ChatCompletionRequest,
            {"messages": USER, "max_tokens": 7, "max_completion_tokens": 7},
            7,
            "max_completion_tokens",
        ),
        (CompletionRequest, {"prompt": "p"}, 16, "max_tokens"),  # OpenAI's default for completions
        (CompletionRequest, {"prompt": "p", "max_tokens": 3}, 3, "max_tokens"),
        (CompletionRequest, {"prompt": "p", "max_tokens": None}, None, "max_tokens"),
    ],
)
def test_output_limit_and_the_field_a_context_error_names(
    model: Any, body: dict[str, Any], limit: int | None, param: str
) -> None:
    request = model.model_validate({"model": "m", **body})
    assert (request.output_limit(), request.output_limit_param()) == (limit, param)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"messages": USER, "stream_options": {}}, "stream_options", "only allowed when stream is true"),
        ({"prompt": "p", "stream_options": {}}, "stream_options", "only allowed when stream is true"),
        ({"messages": USER, "top_logprobs": 0}, "top_logprobs", "top_logprobs requires logprobs"),
        ({"messages": USER, "logprobs": False, "top_logprobs": 2}, "top_logprobs", "requires logprobs"),
    ],
)
def test_a_field_that_needs_a_flag_is_refused_without_it_naming_the_field(
    body: dict[str, Any], param: str, words: str
) -> None:
    model = ChatCompletionRequest if "messages" in body else CompletionRequest
    with pytest.raises(ValidationError) as caught:
        model.model_validate({"model": "m", **body})
    error = invalid_request_from(caught.value.errors())
    assert (error.status, error.param) == (400, param) and words in error.message
    flag = "stream" if param == "stream_options" else "logprobs"
    assert model.model_validate({"model": "m", **body, flag: True}).model_dump()[param] is not None


def test_valid_request_accepts_openai_client_extras() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be terse"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "user": "u1",
            "metadata": {"k": "v"},
            "store": False,
            "service_tier": "auto",
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": True,
            "top_logprobs": 0,
            "stop": "END",
            "logit_bias": {"50256": -100},
        }
    )
    assert request.messages[1].text() == "ab"
    assert request.stop_list() == ["END"]
    assert request.include_usage() is True


def test_orchestration_mode_shorthand() -> None:
    request = ChatCompletionRequest(model="D4", messages=USER, orchestration_mode="critique")
    assert request.orchestration_request().mode == "critique"
    explicit = ChatCompletionRequest(
        model="D4", messages=USER, orchestration_mode="critique", orchestration={"mode": "ensemble"}
    )
    assert explicit.orchestration_request().mode == "ensemble"
    assert ChatCompletionRequest(model="D4", messages=USER).orchestration_request() == OrchestrationRequest()


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        pytest.param({"prompt": ""}, "prompt", id="prompt-empty-string"),
        pytest.param({"prompt": []}, "prompt", id="prompt-empty-list"),
        pytest.param({"prompt": ["a", ""]}, "prompt", id="prompt-empty-item"),
        pytest.param({"echo": True}, "echo", id="echo"),
        pytest.param({"suffix": "x"}, "suffix", id="suffix"),
        pytest.param({"logprobs": 6}, "logprobs", id="logprobs-6"),
        pytest.param({"best_of": 3}, "best_of", id="best_of-other-than-n"),
        pytest.param({"max_tokens": 0}, "max_tokens", id="max_tokens-zero"),
    ],
)
def test_invalid_completion_request(overrides: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CompletionRequest.model_validate({"model": "m", "prompt": "hi", **overrides})
    error = invalid_request_from(caught.value.errors())
    assert error.status == 400
    assert error.param == param, error.message


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("one", ["one"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
    ids=["string", "strings", "token-ids", "token-id-lists"],
)
def test_completion_prompt_shapes(prompt: Any, expected: list[Any]) -> None:
    request = CompletionRequest(model="m", prompt=prompt)
    assert request.prompts() == expected
    assert request.max_tokens == 16


def test_usage_adds_up() -> None:
    total = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3) + Usage(
        prompt_tokens=10, completion_tokens=20, total_tokens=30
    )
    assert total == Usage(prompt_tokens=11, completion_tokens=22, total_tokens=33)


@pytest.mark.parametrize(
    ("model", "body", "words"),
    [
        (
            ChatCompletionRequest,
            {"model": "m", "messages": USER, "top_logprobs": 3},
            "top_logprobs requires logprobs",
        ),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": USER, "stream_options": {"include_usage": True}},
            "stream_options is only allowed when stream is true",
        ),
        (CompletionRequest, {"model": "m", "prompt": "p", "best_of": 3}, "best_of other than n"),
    ],
    ids=["top_logprobs-without-logprobs", "stream_options-without-stream", "best_of"],
)
def test_cross_field_rejections_are_400s(model: Any, body: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    error = invalid_request_from(caught.value.errors())
    assert error.status == 400 and error.code == "invalid_value"
    assert words in error.message and not error.message.startswith("Value error")


def test_tools_on_a_completions_request_are_a_400_naming_tools() -> None:
    for param in ("tools", "tool_choice", "response_format"):
        with pytest.raises(ValidationError) as caught:
            CompletionRequest.model_validate({"model": "m", "prompt": "x", param: [TOOL]})
        error = invalid_request_from(caught.value.errors())
        assert (error.status, error.param, error.code) == (400, param, "unknown_parameter")


def test_a_tool_round_trip_is_a_valid_request() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                *USER,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            ],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": False,
        }
    )
    assert request.tool_mode() == "named"
    assert request.template_messages()[1] == {"role": "assistant", "content": None, "tool_calls": [call]}


def test_orchestration_events_keep_their_wire_shape() -> None:
    import json

    from serve_app.protocol import ChatCompletionChunk, OrchestrationEvent, Usage
    from serve_app.sse import encode_event

    def event(**fields: object) -> dict[str, object]:
        chunk = ChatCompletionChunk(
            id="c",
            created=0,
            model="m",
            choices=[],
            orchestration_event=OrchestrationEvent(**fields),  # type: ignore[arg-type]
        )
        return json.loads(encode_event(chunk).removeprefix("data: "))["orchestration_event"]

    started = event(type="step_started", role="generator", model="g", round=0)
    assert started == {"type": "step_started", "role": "generator", "model": "g", "round": 0}
    finished = event(
        type="step_finished", role="generator", model="g", round=0, latency_ms=2.0, usage=Usage()
    )
    assert finished["verdict"] is None and "verdict" in finished, "a finished step always says its verdict"
    assert finished["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
