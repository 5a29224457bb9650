"""Text completions: the request, responses and stream chunks."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from serve_app.protocol.base import (
    FinishReason,
    Response,
    Text,
    Usage,
    new_id,
    now,
)
from serve_app.protocol.sampling import (
    SamplingFields,
)


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
