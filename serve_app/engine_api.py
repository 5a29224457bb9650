"""The small interface between the OpenAI serving logic and an inference engine.

The serving classes only see these types, so they are tested with a fake engine and no Ray or vLLM.
`deployments/engine/vllm_engine.py` is the real implementation over vLLM's v1 AsyncLLM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class StructuredOutput:
    """A decoding constraint: output must match `json_schema`, or be any JSON object."""

    json_schema: dict[str, Any] | None = None
    json_object: bool = False


@dataclass(frozen=True)
class SamplingSpec:
    """Engine-neutral sampling parameters; the vLLM adapter maps them onto SamplingParams."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    top_k: int = 0
    min_tokens: int = 0
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    structured: StructuredOutput | None = None
    priority: int = 0  # vLLM priority scheduling: lower first


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class SampleDelta:
    """New output of one sample (choice) since the previous step."""

    index: int
    text: str
    token_ids: Sequence[int]
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass
class EngineStep:
    prompt_token_count: int
    samples: list[SampleDelta] = field(default_factory=list)
    finished: bool = False


class ReasoningSplitter(Protocol):
    """Separates `<think>`-style reasoning from the answer, in whole or streamed text."""

    def split(self, text: str) -> tuple[str | None, str | None]: ...

    def split_delta(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_ids: Sequence[int],
        current_ids: Sequence[int],
        delta_ids: Sequence[int],
    ) -> tuple[str | None, str | None]: ...


@dataclass(frozen=True)
class ParsedCall:
    """A whole tool call found in model text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class CallChunk:
    """Part of a streamed tool call; `id` and `name` come with the call's first chunk."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


class ToolCallParser(Protocol):
    """Finds the model's native tool-call markup in its text, whole or streamed (one per choice)."""

    def extract(self, text: str) -> tuple[str | None, list[ParsedCall]]:
        """(content outside the calls, the calls)."""

    def extract_delta(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_ids: Sequence[int],
        current_ids: Sequence[int],
        delta_ids: Sequence[int],
    ) -> tuple[str | None, list[CallChunk]]:
        """(content to send now, call chunks to send now)."""


class Engine(Protocol):
    """What a model replica needs from its engine. Construction has no side effects; `start` does."""

    max_model_len: int
    tool_parser_name: str | None  # the vLLM tool parser that finds calls in model text, if any

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def check_health(self) -> None:
        """Raise when the engine can no longer serve (its process died)."""

    def is_running(self) -> bool: ...

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """Render messages (and tools) with the model's chat template and tokenize them."""

    def tokenize(self, text: str) -> list[int]: ...

    def reasoning_splitter(self) -> ReasoningSplitter | None:
        """A fresh splitter for one choice, or None for models without reasoning output."""

    def tool_parser(self, tools: list[dict[str, Any]]) -> ToolCallParser | None:
        """A fresh tool-call parser for one choice, or None for models without one."""

    def generate(
        self,
        prompt_token_ids: list[int],
        sampling: SamplingSpec,
        request_id: str,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[EngineStep]:
        """`trace_headers`: the W3C context of the caller's span, under which an engine that traces
        records its own span (vLLM's llm_request)."""

    async def abort(self, request_id: str) -> None: ...

    async def abort_all(self) -> int:
        """Abort every request being generated (each ends with an "abort" step); how many."""
