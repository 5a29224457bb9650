"""OpenAI wire models: requests, responses, stream chunks, errors, and the orchestration extension.

Requests are `extra="forbid"` so that a parameter this service would silently ignore is instead
rejected with a 400 naming it. Fields OpenAI clients send routinely but that change nothing about
generation (`user`, `metadata`, `store`, `service_tier`) are accepted explicitly.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from serve_app.engine_api import SamplingSpec, StructuredOutput
from serve_app.errors import ContextLengthExceeded, InvalidRequest
from serve_app.errors import ErrorDetail as ErrorDetail  # re-exported: the wire models live here
from serve_app.errors import ErrorResponse as ErrorResponse
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

MAX_CRITIQUE_ROUNDS = 5
MAX_TOP_LOGPROBS = 20
MAX_STOP_SEQUENCES = 4
# OpenAI's defaults where the request leaves a parameter out.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


def _require_utf8(value: str) -> str:
    # JSON can carry lone surrogates ("\\ud800") that no tokenizer can encode: refuse them here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it contains a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_require_utf8)]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------- shared pieces


class StreamOptions(Request):
    include_usage: bool = False


class Usage(Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


# OpenAI's finish reasons; vLLM's "abort" never reaches a client (serving/common.py `observed`).
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class SamplingFields(Request):
    """Parameters shared by chat and text completions. `to_sampling_spec` is the one place that
    maps them onto the engine's sampling (vLLM's `to_sampling_params` habit); every other request
    field is named in `NOT_SAMPLING` with the place that handles it, and a unit test fails when a
    field is in neither (tests/unit/test_sampling_mapping.py)."""

    # Request fields `to_sampling_spec` reads, besides the output limit (OUTPUT_LIMIT, per route).
    SAMPLING: ClassVar[tuple[str, ...]] = (
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "top_k",
        "min_tokens",
        "ignore_eos",
        "repetition_penalty",
        "priority",
    )
    # Sampling that means the same on every model: token ids (logit_bias) are one vocabulary's.
    PER_MODEL: ClassVar[tuple[str, ...]] = ("logit_bias",)
    OUTPUT_LIMIT: ClassVar[tuple[str, ...]] = ()
    NOT_SAMPLING: ClassVar[dict[str, str]] = {
        "model": "routing (service.py)",
        "stream": "the route's response type",
        "stream_options": "the serving classes' usage chunk",
        "user": "accepted, no effect on generation",
        "metadata": "accepted, no effect on generation",
        "store": "accepted, no effect on generation",
        "service_tier": "accepted, no effect on generation",
    }

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    # vLLM sampling extensions, accepted as vLLM's own OpenAI server accepts them.
    top_k: int | None = Field(None, ge=-1)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    # vLLM's scheduling priority (lower is served first). With API keys, the ingress sets it from
    # the key's tier (deployments/ingress/tenancy/metering.py): a client cannot jump the queue.
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1)

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if value == "" or (isinstance(value, list) and any(s == "" for s in value)):
            raise ValueError("stop sequences must be non-empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not (key.isascii() and key.isdigit()):
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError("logit_bias values must lie in [-100, 100]")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        # A field validator (stream is declared first) so the 400 names `stream_options`.
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def output_limit(self) -> int | None:
        raise NotImplementedError

    def output_limit_param(self) -> str:
        return "max_tokens"

    def to_sampling_spec(
        self,
        *,
        prompt_tokens: int,
        max_model_len: int,
        logprobs: int | None,
        vocab_size: int | None = None,
        structured: StructuredOutput | None = None,
    ) -> SamplingSpec:
        """This request's engine sampling for a prompt of `prompt_tokens`, rejecting (400) what the
        model cannot honour: no room left in the context, min_tokens above the output limit, bias
        on token ids outside the vocabulary."""
        room = max_model_len - prompt_tokens
        requested = self.output_limit()
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {max_model_len} tokens; the prompt has "
                f"{prompt_tokens} tokens and leaves no room for output.",
                param="messages" if hasattr(self, "messages") else "prompt",
            )
        if self.min_tokens > (requested or room):
            raise InvalidRequest(
                f"min_tokens {self.min_tokens} exceeds the {requested or room} tokens this "
                "request may generate (max_tokens, or the context left)",
                param="min_tokens",
            )
        if requested is not None and requested > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {max_model_len} tokens. The prompt has "
                f"{prompt_tokens} tokens and max_tokens asks for {requested}; at most {room} fit.",
                param=self.output_limit_param(),
            )
        bias = None
        if self.logit_bias:
            bias = {int(token): value for token, value in self.logit_bias.items()}
            if vocab_size is not None and any(token >= vocab_size for token in bias):
                raise InvalidRequest(
                    f"logit_bias names a token id outside the vocabulary (size {vocab_size})",
                    param="logit_bias",
                )
        return SamplingSpec(
            max_tokens=requested or room,
            temperature=DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
            top_p=DEFAULT_TOP_P if self.top_p is None else self.top_p,
            n=self.n,
            stop=tuple(self.stop_list()),
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logprobs=logprobs,
            logit_bias=bias,
            top_k=0 if self.top_k in (None, -1) else self.top_k,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            repetition_penalty=self.repetition_penalty or 1.0,
            structured=structured,
            priority=self.priority,
        )


# ---------------------------------------------------------------- orchestration extension


class OrchestrationRequest(Request):
    """The `orchestration` extension; plain OpenAI clients pass it through `extra_body`."""

    mode: Literal["single", "critique", "ensemble"] | None = None
    rounds: int | None = Field(None, ge=1, le=MAX_CRITIQUE_ROUNDS)
    generator: str | None = None
    critic: str | None = None
    models: list[str] | None = Field(None, min_length=2, max_length=4)
    judge: str | None = None


# Why a pipeline ended: the critic approved, the rounds ran out, a step failed, the judge picked.
StopReason = Literal["approved", "max_rounds", "error", "judged", "single"]


class OrchestrationEvent(Response):
    """Progress of a pipeline in its stream: a step started, or finished (with its latency, usage
    and the critic's verdict, null for other roles)."""

    type: Literal["step_started", "step_finished"]
    role: str
    model: str
    round: int
    latency_ms: float | None = None
    usage: Usage | None = None
    verdict: str | None = None

    @model_serializer(mode="wrap")
    def _verdict_of_finished_steps(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.type == "step_finished":  # kept even when null (chunks drop null fields)
            data["verdict"] = self.verdict
        return data


class OrchestrationStep(Response):
    role: str
    model: str
    round: int
    content: str
    reasoning_content: str | None = None
    usage: Usage
    latency_ms: float
    finish_reason: FinishReason | None
    verdict: str | None = None
    tool_calls: list[ToolCall] | None = None


class OrchestrationInfo(Response):
    mode: str
    models_used: list[str]
    rounds: int
    stop_reason: StopReason
    steps: list[OrchestrationStep]
    total_latency_ms: float
    reason: str | None = None


# ---------------------------------------------------------------- chat


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
    OUTPUT_LIMIT: ClassVar[tuple[str, ...]] = ("max_tokens", "max_completion_tokens")
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

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs to be true")
        return value

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_output_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        other = info.data.get("max_tokens")
        if value and other and value != other:
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        return value

    def output_limit_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

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


# ---------------------------------------------------------------- text completions


class CompletionRequest(SamplingFields):
    OUTPUT_LIMIT: ClassVar[tuple[str, ...]] = ("max_tokens",)
    NOT_SAMPLING: ClassVar[dict[str, str]] = {
        **SamplingFields.NOT_SAMPLING,
        "prompt": "tokenized by CompletionServing",
        "logprobs": "to_sampling_spec's logprobs argument (CompletionServing)",
        "echo": "only false is accepted",
        "suffix": "only null is accepted",
        "best_of": "only equal to n is accepted",
    }

    prompt: Text | list[Text] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: Literal[False] = False
    suffix: None = None
    best_of: int | None = Field(None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if value == "" or value == [] or (isinstance(value, list) and any(v in ("", []) for v in value)):
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value != info.data.get("n", 1):
            raise ValueError("best_of other than n is not supported")
        return value

    def output_limit(self) -> int | None:
        return self.max_tokens

    def text_chars(self) -> int:
        """How much text the tokenizer must get through (token-id prompts need none)."""
        return sum(len(p) for p in self.prompts() if isinstance(p, str))

    def prompts(self) -> list[str] | list[list[int]]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and isinstance(prompt[0], int):
            return [prompt]  # type: ignore[list-item]
        return prompt  # type: ignore[return-value]


class CompletionLogprobs(Response):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(Response):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(Response):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---------------------------------------------------------------- models


ModelState = Literal["loading", "ready", "unloading", "unloaded", "failed"]


class ModelCapabilities(Response):
    """What a model can do through this API."""

    tools: bool = True  # named and required tool_choice work on every model (constrained decoding)
    tool_choice: list[str]  # "auto" only with a tool parser
    tool_parser: str | None = None
    structured_outputs: list[str] = Field(default_factory=lambda: ["json_object", "json_schema"])
    reasoning: bool = False


class ModelCard(Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "inference-service"
    status: ModelState
    role: str | None = None
    hf_source: str | None = None
    max_model_len: int | None = None
    replicas: dict[str, int] = Field(default_factory=dict)
    error: str | None = None
    # How long an unload lets open requests run before they end with a 503 / error event.
    unload_drain_timeout_s: float | None = None
    capabilities: ModelCapabilities | None = None


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    preset: str | None = None
    orchestration_mode: str | None = None
