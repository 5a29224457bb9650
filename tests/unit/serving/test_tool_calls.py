"""Tool calling: vLLM's REAL tool parsers behind our adapter, on synthetic model text in each catalog
model's format, and deployments/model/serving/chat.py's tool modes over a FakeEngine that emits such text.

The tokenizer is the tiny CPU checkpoint's (built in memory, no weights), so the parsers see the same
vocabulary, with its tool-call tokens, as on the cluster."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema
import pytest

from deployments.engine.vllm_engine import VllmToolCallParser
from deployments.model.serving.chat import ChatServing
from scripts.tiny_checkpoint import build_tokenizer
from serve_app.config import Catalog, RequestLimits
from serve_app.errors import InvalidRequest
from serve_app.protocol import ChatCompletionChunk, ChatCompletionRequest
from serve_app.tools import CallAssembler

from ..fakes import FakeEngine

PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
ARGS = {"city": "Paris", "days": 3}
# What each parser's model writes when it calls get_weather(city="Paris", days=3).
MODEL_TEXT = {
    "hermes": (
        f'Let me check. <tool_call>{{"name": "get_weather", "arguments": {json.dumps(ARGS)}}}</tool_call>'
    ),
    "llama3_json": f'<|python_tag|>{{"name": "get_weather", "parameters": {json.dumps(ARGS)}}}',
    "granite": f'<|tool_call|>[{{"name": "get_weather", "arguments": {json.dumps(ARGS)}}}]',
}
LIMITS = RequestLimits(max_n=4, max_messages=8)


@cache
def tokenizer() -> Any:
    return build_tokenizer(2048)


def parser_factory(name: str) -> Any:
    from vllm.tool_parsers import ToolParserManager

    parser_cls = ToolParserManager.get_tool_parser(name)
    return lambda tools: VllmToolCallParser(parser_cls, tokenizer(), tools)


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "qwen2.5-7b",
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": TOOLS,
            **fields,
        }
    )


def pieces(text: str) -> tuple[str, ...]:
    """The text as the model would emit it: one token at a time."""
    tok = tokenizer()
    return tuple(tok.decode([i]) for i in tok.encode(text, add_special_tokens=False))


def serving(engine: FakeEngine) -> ChatServing:
    return ChatServing(engine, "qwen2.5-7b", LIMITS, vocab_size=1000)


async def stream(engine: FakeEngine, request: ChatCompletionRequest) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in await serving(engine).stream(request, "req-1")]


# ---------------------------------------------------------------- the real parsers


def test_every_catalog_parser_is_a_real_vllm_parser_with_its_tokens_in_the_tiny_vocabulary(
    catalog: Catalog,
) -> None:
    configured = {m.tool_parser for m in catalog.models if m.tool_parser}
    assert configured == {"hermes", "llama3_json"}
    for name in configured | {"granite"}:
        parser = parser_factory(name)(TOOLS)
        _, calls = parser.extract(MODEL_TEXT[name])
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", ARGS)], name
    assert parser_factory("hermes")(TOOLS).extract(MODEL_TEXT["hermes"])[0] == "Let me check. "


@pytest.mark.parametrize("name", ["hermes", "llama3_json", "granite"])
def test_streamed_parsing_assembles_the_same_call(name: str) -> None:
    parser = parser_factory(name)(TOOLS)
    tok = tokenizer()
    ids = tok.encode(MODEL_TEXT[name], add_special_tokens=False)
    text, seen, assembler = "", [], CallAssembler()
    from deployments.model.serving.tool_calls import chunk_delta

    for i, token in enumerate(ids):
        delta = tok.decode([token])
        _, chunks = parser.extract_delta(text, text + delta, delta, ids[:i], ids[: i + 1], [token])
        text += delta
        seen.extend(chunks)
        for chunk in chunks:
            assembler.add(chunk_delta(chunk))
    calls = assembler.calls()
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == ARGS
    assert seen[0].id is not None and seen[0].name == "get_weather"


def test_plain_text_is_not_a_call() -> None:
    content, calls = parser_factory("hermes")(TOOLS).extract("Just an answer.")
    assert calls == [] and content == "Just an answer."


# ---------------------------------------------------------------- tool_choice "auto"


async def test_auto_answers_tool_calls_with_content_null_and_finish_reason_tool_calls() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}</tool_call>'
    engine = FakeEngine(
        max_model_len=512, outputs=[pieces(text)], tool_parser_factory=parser_factory("hermes")
    )
    response = await serving(engine).create(chat(tool_choice="auto"), "req-1")
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == ARGS
    assert engine.rendered_tools == [TOOLS] and engine.calls[0].sampling.structured is None
    assert response.model_dump(exclude_none=True)["choices"][0]["message"]["content"] is None


async def test_auto_streams_tool_call_deltas_that_assemble_into_the_call() -> None:
    text = 'Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}</tool_call>'
    engine = FakeEngine(
        max_model_len=512, outputs=[pieces(text)], tool_parser_factory=parser_factory("hermes")
    )
    chunks = await stream(engine, chat())  # tool_choice defaults to auto when tools are given
    assembler, content = CallAssembler(), ""
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                assembler.add(delta)
    calls = assembler.calls()
    assert calls is not None and [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == ARGS
    assert content.strip() == "Sure."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_auto_on_a_model_without_a_parser_is_a_400_naming_tools() -> None:
    engine = FakeEngine(max_model_len=512)
    with pytest.raises(InvalidRequest) as caught:
        await serving(engine).create(chat(tool_choice="auto"), "req-1")
    assert caught.value.param == "tools" and caught.value.status == 400
    assert "required" in caught.value.message


# ---------------------------------------------------------------- forced calls


@pytest.mark.parametrize("with_parser", [True, False])
async def test_a_named_choice_is_decoded_under_the_tools_parameters_schema(with_parser: bool) -> None:
    engine = FakeEngine(
        max_model_len=512,
        outputs=[('{"city":', '"Paris",', '"days":3}')],
        tool_parser_factory=parser_factory("hermes") if with_parser else None,
    )
    named = {"type": "function", "function": {"name": "get_weather"}}
    response = await serving(engine).create(chat(tool_choice=named), "req-1")
    structured = engine.calls[0].sampling.structured
    assert structured is not None and structured.json_schema == PARAMETERS
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS)


async def test_required_is_decoded_as_an_array_of_calls_to_the_given_tools() -> None:
    engine = FakeEngine(
        max_model_len=512,
        outputs=[
            (
                '[{"name":"get_weather",',
                '"parameters":{"city":"Oslo","days":1}},',
                '{"name":"get_time","parameters":{}}]',
            )
        ],
    )
    response = await serving(engine).create(chat(tool_choice="required"), "req-1")
    structured = engine.calls[0].sampling.structured
    assert structured is not None and structured.json_schema is not None
    schema = structured.json_schema
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    jsonschema.validate([{"name": "get_weather", "parameters": {"city": "Oslo", "days": 1}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "get_weather", "parameters": {"city": "Oslo"}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "nope", "parameters": {}}], schema)
    calls = response.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert response.choices[0].finish_reason == "tool_calls"


async def test_parallel_tool_calls_false_allows_one_call() -> None:
    engine = FakeEngine(max_model_len=512, outputs=[('[{"name":"get_time","parameters":{}}]',)])
    await serving(engine).create(chat(tool_choice="required", parallel_tool_calls=False), "req-1")
    structured = engine.calls[0].sampling.structured
    assert structured is not None and structured.json_schema is not None
    assert structured.json_schema["maxItems"] == 1


async def test_a_forced_call_cut_at_max_tokens_says_length() -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    engine = FakeEngine(max_model_len=512, outputs=[('{"city":', '"Paris",', '"days":3}')])
    response = await serving(engine).create(chat(tool_choice=named, max_tokens=2), "req-1")
    assert response.choices[0].finish_reason == "length"
    chunks = await stream(
        FakeEngine(max_model_len=512, outputs=[('[{"name":', '"get_time"', ',"parameters":{}}]')]),
        chat(tool_choice="required", max_tokens=2),
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    assert not any(c.delta.tool_calls for chunk in chunks for c in chunk.choices)


async def test_streamed_named_and_required_calls_assemble() -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice, outputs in (
        (named, ('{"city":', '"Paris",', '"days":3}')),
        ("required", ('[{"name":"get_weather",', '"parameters":{"city":"Paris","days":3}}]')),
    ):
        chunks = await stream(FakeEngine(max_model_len=512, outputs=[outputs]), chat(tool_choice=choice))
        assembler = CallAssembler()
        for chunk in chunks:
            for c in chunk.choices:
                assert not c.delta.content
                for delta in c.delta.tool_calls or []:
                    assembler.add(delta)
        calls = assembler.calls()
        assert calls is not None and len(calls) == 1
        assert json.loads(calls[0].function.arguments) == ARGS
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        # No content at all, so SDKs assemble `content: None` (not "") for a calls-only answer.
        assert chunks[0].choices[0].delta.role == "assistant"
        assert all(c.delta.content is None for chunk in chunks for c in chunk.choices)


async def test_a_reasoning_model_under_constraint_answers_with_the_call_not_reasoning() -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    engine = FakeEngine(max_model_len=512, reasoning=True, outputs=[('{"city":"Paris","days":3}',)])
    response = await serving(engine).create(chat(tool_choice=named), "req-1")
    message = response.choices[0].message
    assert message.reasoning_content is None and message.tool_calls is not None


async def test_a_reasoning_only_answer_still_has_a_content_key() -> None:
    engine = FakeEngine(max_model_len=512, reasoning=True, outputs=[("<think>", "still", " thinking")])
    request = ChatCompletionRequest.model_validate(
        {"model": "deepseek-r1-7b", "messages": [{"role": "user", "content": "hi"}]}
    )
    response = await serving(engine).create(request, "req-1")
    message = response.model_dump(exclude_none=True)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "reasoning_content": "still thinking"}


# ---------------------------------------------------------------- response_format and history


async def test_response_format_maps_onto_structured_outputs() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    engine = FakeEngine(max_model_len=512, outputs=[('{"a":1}',)])
    await serving(engine).create(
        chat(
            tools=None,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        ),
        "req-1",
    )
    await serving(engine).create(chat(tools=None, response_format={"type": "json_object"}), "req-2")
    await serving(engine).create(chat(tools=None, response_format={"type": "text"}), "req-3")
    specs = [call.sampling.structured for call in engine.calls]
    assert specs[0] is not None and specs[0].json_schema == schema
    assert specs[1] is not None and specs[1].json_object
    assert specs[2] is None


async def test_tool_results_reach_the_chat_template() -> None:
    engine = FakeEngine(max_model_len=512)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris","days":3}'},
    }
    request = chat(
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        tool_choice="none",
    )
    await serving(engine).create(request, "req-1")
    assert engine.rendered[0][1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert engine.rendered[0][2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert engine.calls[0].sampling.structured is None


def test_the_tiny_chat_template_renders_tools_calls_and_results() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    text = tokenizer().apply_chat_template(
        [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        tools=TOOLS,
        add_generation_prompt=True,
        tokenize=False,
    )
    assert '"name": "get_weather"' in text and "[call_1] sunny" in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city":"Paris"}}</tool_call>' in text


async def test_raw_control_characters_in_constrained_json_are_escaped() -> None:
    """xgrammar lets JSON strings hold raw control characters; clients get valid JSON."""
    named = {"type": "function", "function": {"name": "get_weather"}}
    outputs = [('{"city":"Pa\x08r', "is\x00", '","days":3}')]
    response = await serving(FakeEngine(max_model_len=512, outputs=outputs)).create(
        chat(tool_choice=named), "r"
    )
    (call,) = response.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"city": "Pa\x08ris\x00", "days": 3}
    assert response.choices[0].finish_reason == "tool_calls"
    chunks = await stream(FakeEngine(max_model_len=512, outputs=outputs), chat(tool_choice=named))
    assembler = CallAssembler()
    for chunk in chunks:
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                assembler.add(delta)
    (streamed,) = assembler.calls() or []
    assert json.loads(streamed.function.arguments) == {"city": "Pa\x08ris\x00", "days": 3}
    text_format = {"type": "json_object"}
    response = await serving(FakeEngine(max_model_len=512, outputs=[('{"a":"\x01"}',)])).create(
        chat(tools=None, response_format=text_format), "r"
    )
    assert json.loads(response.choices[0].message.content or "") == {"a": "\x01"}
