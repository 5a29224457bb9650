"""OpenAI wire models: requests, responses, stream chunks, errors, and the orchestration extension.

Requests are `extra="forbid"` so that a parameter this service would silently ignore is instead
rejected with a 400 naming it. Fields OpenAI clients send routinely but that change nothing about
generation (`user`, `metadata`, `store`, `service_tier`) are accepted explicitly.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_CRITIQUE_ROUNDS = 5
MAX_TOP_LOGPROBS = 20
MAX_STOP_SEQUENCES = 4


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


# ---------------------------------------------------------------- errors


class ErrorDetail(Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Response):
    error: ErrorDetail


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
    """Parameters shared by chat and text completions; each maps onto vLLM SamplingParams."""

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
    # the key's tier (serve_app/tenancy/metering.py): a client cannot jump the queue.
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


# ---------------------------------------------------------------- orchestration extension


class OrchestrationRequest(Request):
    """The `orchestration` extension; plain OpenAI clients pass it through `extra_body`."""

    mode: Literal["single", "critique", "ensemble"] | None = None
    rounds: int | None = Field(None, ge=1, le=MAX_CRITIQUE_ROUNDS)
    generator: str | None = None
    critic: str | None = None
    models: list[str] | None = Field(None, min_length=2, max_length=4)
    judge: str | None = None


class OrchestrationStep(Response):
    role: str
    model: str
    round: int
    content: str
    reasoning_content: str | None = None
    usage: Usage
    latency_ms: float
    finish_reason: str | None
    verdict: str | None = None


class OrchestrationInfo(Response):
    mode: str
    models_used: list[str]
    rounds: int
    stop_reason: Literal["approved", "max_rounds", "error", "judged", "single"]
    steps: list[OrchestrationStep]
    total_latency_ms: float
    reason: str | None = None


# ---------------------------------------------------------------- chat


class TextPart(Request):
    type: Literal["text"]
    text: Text


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None
    name: str | None = None
    reasoning_content: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    orchestration: OrchestrationRequest | None = None
    orchestration_mode: Literal["single", "critique", "ensemble"] | None = Field(
        None, description="Shorthand for orchestration.mode."
    )

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


class ChatChoice(Response):
    index: int
    message: AssistantMessage
    finish_reason: str | None
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


class ChatChunkChoice(Response):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
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
    orchestration_event: dict[str, Any] | None = None


# ---------------------------------------------------------------- text completions


class CompletionRequest(SamplingFields):
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
    finish_reason: str | None
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


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    preset: str | None = None
    orchestration_mode: str | None = None
