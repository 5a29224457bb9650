"""Chat completions: messages, the request, responses and stream chunks."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from serve_app.engine_api import StructuredOutput
from serve_app.protocol.base import (
    MAX_TOP_LOGPROBS,
    FinishReason,
    Request,
    Response,
    Text,
    Usage,
    new_id,
    now,
)
from serve_app.protocol.orchestration import (
    OrchestrationEvent,
    OrchestrationInfo,
    OrchestrationRequest,
)
from serve_app.protocol.sampling import (
    SamplingFields,
    only_when_true,
)
from serve_app.tools import (
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    check_content,
    check_tool_call_id,
    check_tool_choice,
    check_unique_names,
    constrained_output,
)


class TextPart(Request):
    type: Literal["text"]
    text: Text


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    name: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, min_length=1)
    # Validated even when absent, after the fields they depend on, so that errors name them.
    tool_call_id: str | None = Field(None, validate_default=True)
    content: Text | list[TextPart] | None = Field(None, validate_default=True)

    @field_validator("tool_call_id")
    @classmethod
    def _tool_call_id_fits_role(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "role" in info.data:
            check_tool_call_id(info.data["role"], value)
        return value

    @field_validator("content")
    @classmethod
    def _content_fits_role(
        cls, value: str | list[TextPart] | None, info: ValidationInfo
    ) -> str | list[TextPart] | None:
        if "role" in info.data:
            check_content(info.data["role"], bool(info.data.get("tool_calls")), value is not None)
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    OUTPUT_LIMIT: ClassVar[tuple[str, ...]] = ("max_completion_tokens", "max_tokens")
    NOT_SAMPLING: ClassVar[dict[str, str]] = {
        **SamplingFields.NOT_SAMPLING,
        "messages": "the chat template (ChatServing._prepare)",
        "logprobs": "to_sampling_spec's logprobs argument (ChatServing._prepare)",
        "top_logprobs": "to_sampling_spec's logprobs argument (ChatServing._prepare)",
        "tools": "the chat template and structured_output()",
        "tool_choice": "structured_output() and the tool-call parser",
        "parallel_tool_calls": "structured_output()",
        "response_format": "structured_output()",
        "orchestration": "the pipelines (service.py)",
        "orchestration_mode": "the pipelines (service.py)",
    }

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    orchestration: OrchestrationRequest | None = None
    orchestration_mode: Literal["single", "critique", "ensemble"] | None = Field(
        None, description="Shorthand for orchestration.mode."
    )
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, value: list[Tool] | None) -> list[Tool] | None:
        check_unique_names(value)
        return value

    @field_validator("tool_choice")
    @classmethod
    def _choice_fits_tools(cls, value: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        if "tools" in info.data:  # else tools failed validation and that error is reported
            check_tool_choice(value, info.data["tools"])
        return value

    def tool_mode(self) -> Literal["none", "auto", "required", "named"]:
        """How this request may call tools: never, as the model decides, or forced."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return "required" if self.tool_choice == "required" else "auto"

    def structured_output(self) -> StructuredOutput | None:
        """The decoding constraint: a forced tool call's schema, else response_format's."""
        return constrained_output(
            self.tool_mode(), self.tools, self.tool_choice, self.parallel_tool_calls, self.response_format
        )

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """The tools as the chat template and vLLM's tool parsers take them."""
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as the chat template takes them (developer is system to every template)."""
        out: list[dict[str, Any]] = []
        for m in self.messages:
            entry: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
            entry["content"] = m.text() if m.content is not None or not m.tool_calls else None
            if m.tool_calls:
                entry["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.tool_call_id is not None:
                entry["tool_call_id"] = m.tool_call_id
            out.append(entry)
        return out

    _top_logprobs_need_logprobs = field_validator("top_logprobs")(
        only_when_true("logprobs", "top_logprobs requires logprobs to be true")
    )

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_output_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        other = info.data.get("max_tokens")
        if value and other and value != other:
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        return value

    def text_chars(self) -> int:
        """How much text the chat template and tokenizer must get through."""
        return sum(len(m.text()) for m in self.messages)

    def orchestration_request(self) -> OrchestrationRequest:
        requested = self.orchestration or OrchestrationRequest()
        if self.orchestration_mode and requested.mode is None:
            return requested.model_copy(update={"mode": self.orchestration_mode})
        return requested


class TopLogprob(Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(Response):
    content: list[TokenLogprob]


class AssistantMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _content_always(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI always sends `content` (null when the answer is only reasoning or tool calls);
        # responses are dumped with exclude_none, which would otherwise drop the key.
        data: dict[str, Any] = handler(self)
        data.setdefault("content", None)
        return data


class ChatChoice(Response):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(Response):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage
    orchestration: OrchestrationInfo | None = None


class DeltaMessage(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(Response):
    index: int
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    orchestration: OrchestrationInfo | None = None
    # Progress of a multi-step pipeline; OpenAI clients ignore unknown fields.
    orchestration_event: OrchestrationEvent | None = None
