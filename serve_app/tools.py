"""Tool calling and structured outputs on the wire: tools, tool_choice, response_format, tool calls.

Also the one place that maps them onto constrained decoding: a named or `required` tool choice
becomes a JSON schema that vLLM's structured outputs enforce token by token (the same schemas vLLM's
own server builds), and `response_format` becomes a JSON or JSON-object constraint.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.engine_api import StructuredOutput

FUNCTION_NAME = r"^[A-Za-z0-9_.\-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_json_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError unless `schema` is a valid JSON Schema (by its own meta-schema)."""
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from None


class FunctionDefinition(_Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        check_json_schema(value)
        if value.get("type") != "object":
            raise ValueError('a function\'s parameters must be a JSON schema with "type": "object"')
        return value

    def parameters_schema(self) -> dict[str, Any]:
        return self.parameters or {"type": "object", "properties": {}}


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            check_json_schema(value)
        return value


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a json_schema object')
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f'json_schema is only allowed with type "json_schema", not {self.type!r}')
        return self

    def structured_output(self) -> StructuredOutput | None:
        if self.type == "json_object":
            return StructuredOutput(json_object=True)
        if self.type == "json_schema" and self.json_schema is not None:
            return StructuredOutput(json_schema=self.json_schema.schema_ or {})
        return None


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")


def escape_control_characters(text: str) -> str:
    """Constrained JSON output, made valid JSON: raw control characters become \\u00XX escapes.

    xgrammar's JSON grammar lets a string hold raw U+0000-U+001F, which JSON forbids (random
    weights write them). With free whitespace disabled (the engine's setting) such a character
    can only occur inside a string, where the escape denotes the same character. Works per
    streamed piece as well as on the whole text."""
    return _CONTROL_CHARACTER.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def check_tool_choice(tool_choice: ToolChoice | None, tools: list[Tool] | None) -> None:
    """Raise ValueError when tool_choice does not fit the tools given."""
    names = [t.function.name for t in tools or []]
    if tool_choice not in (None, "none") and not tools:
        raise ValueError("tool_choice is only allowed when tools are given")
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in names:
        raise ValueError(
            f"tool_choice names function {tool_choice.function.name!r}, which is not in tools {names}"
        )


def check_unique_names(tools: list[Tool] | None) -> None:
    names = [t.function.name for t in tools or []]
    if len(set(names)) != len(names):
        raise ValueError("function names must be unique")


def check_tool_call_id(role: str, tool_call_id: str | None) -> None:
    if role == "tool" and not tool_call_id:
        raise ValueError("a message of role 'tool' needs the tool_call_id it answers")
    if role != "tool" and tool_call_id is not None:
        raise ValueError("tool_call_id belongs on messages of role 'tool' only")


def check_content(role: str, has_calls: bool, has_content: bool) -> None:
    if has_calls and role != "assistant":
        raise ValueError("tool_calls belong on messages of role 'assistant' only")
    if not has_content and not (role == "assistant" and has_calls):
        raise ValueError("content is required (null only on an assistant message with tool_calls)")


def _required_schema(tools: list[Tool], parallel: bool | None) -> dict[str, Any]:
    """A JSON array of one call per item ({"name", "parameters"}), as vLLM's server builds it."""
    items = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t.function.name]},
                "parameters": t.function.parameters_schema(),
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if parallel is False:
        schema["maxItems"] = 1
    return schema


def constrained_output(
    mode: str,
    tools: list[Tool] | None,
    tool_choice: ToolChoice | None,
    parallel: bool | None,
    response_format: ResponseFormat | None,
) -> StructuredOutput | None:
    """What decoding must be constrained to. A forced tool call wins over response_format."""
    if mode == "named" and tools and isinstance(tool_choice, NamedToolChoice):
        tool = next(t for t in tools if t.function.name == tool_choice.function.name)
        return StructuredOutput(json_schema=tool.function.parameters_schema())
    if mode == "required" and tools:
        return StructuredOutput(json_schema=_required_schema(tools, parallel))
    return response_format.structured_output() if response_format else None


def forced_calls(mode: str, text: str, tool_choice: ToolChoice | None) -> list[ToolCall] | None:
    """The calls in constrained output, or None when the text is not complete JSON (cut short)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if mode == "named" and isinstance(tool_choice, NamedToolChoice) and isinstance(value, dict):
        name = tool_choice.function.name
        return [ToolCall(id=new_call_id(), function=FunctionCall(name=name, arguments=text))]
    if mode == "required" and isinstance(value, list):
        return [
            ToolCall(
                id=new_call_id(),
                function=FunctionCall(name=item["name"], arguments=json.dumps(item["parameters"])),
            )
            for item in value
        ]
    return None


class CallAssembler:
    """Joins streamed tool-call deltas into whole calls, as the OpenAI SDK does."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, delta: ToolCallDelta) -> None:
        call = self._calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        call["id"] = delta.id or call["id"]
        call["name"] += delta.function.name or ""
        call["arguments"] += delta.function.arguments or ""

    def calls(self) -> list[ToolCall] | None:
        if not self._calls:
            return None
        return [
            ToolCall(
                id=c["id"] or new_call_id(), function=FunctionCall(name=c["name"], arguments=c["arguments"])
            )
            for _, c in sorted(self._calls.items())
        ]
