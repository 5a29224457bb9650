"""The `orchestration` extension: the pipeline a request asks for, and what it reports."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from serve_app.protocol.base import (
    MAX_CRITIQUE_ROUNDS,
    FinishReason,
    Request,
    Response,
    Usage,
)
from serve_app.tools import (
    ToolCall,
)


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
