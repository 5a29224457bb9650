"""Render a pipeline's events as one chat.completion, or as an SSE stream of chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator

from deployments.ingress.orchestration.pipeline import FinalDelta, Pipeline, StepFinished, StepStarted
from serve_app.metrics import RequestMetrics
from serve_app.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    DeltaMessage,
    OrchestrationEvent,
    now,
)
from serve_app.sse import encode_event


def record(pipeline: Pipeline, metrics: RequestMetrics) -> None:
    info = pipeline.info()
    metrics.pipeline_finished(info.mode, info.rounds, [(s.role, s.model) for s in info.steps])


async def render_response(
    pipeline: Pipeline, request: ChatCompletionRequest, metrics: RequestMetrics
) -> ChatCompletionResponse:
    async for _ in pipeline.events(stream_final=False):
        pass
    record(pipeline, metrics)
    final = pipeline.final
    assert final is not None
    return ChatCompletionResponse(
        id=pipeline.request_id,
        model=request.model,
        choices=[
            ChatChoice(
                index=0,
                message=AssistantMessage(
                    # A final answer that is only tool calls has content null, like OpenAI's.
                    content=final.content if final.content or not final.tool_calls else None,
                    reasoning_content=final.reasoning_content,
                    tool_calls=final.tool_calls,
                ),
                finish_reason=final.finish_reason,
            )
        ],
        usage=pipeline.usage(),
        orchestration=pipeline.info(),
    )


async def render_stream(
    pipeline: Pipeline, request: ChatCompletionRequest, metrics: RequestMetrics
) -> AsyncIterator[str]:
    """SSE events; errors propagate to the route's stream wrapper, which ends the stream cleanly."""
    created = now()

    def chunk(**fields: object) -> str:
        return encode_event(
            ChatCompletionChunk(id=pipeline.request_id, created=created, model=request.model, **fields)  # type: ignore[arg-type]
        )

    opening = "" if request.tool_mode() == "none" else None  # null content when only calls follow
    yield chunk(choices=[ChatChunkChoice(index=0, delta=DeltaMessage(role="assistant", content=opening))])
    async for event in pipeline.events(stream_final=True):
        if isinstance(event, StepStarted):
            yield chunk(
                choices=[],
                orchestration_event=OrchestrationEvent(
                    type="step_started", role=event.role, model=event.model, round=event.round
                ),
            )
        elif isinstance(event, StepFinished):
            step = event.step
            yield chunk(
                choices=[],
                orchestration_event=OrchestrationEvent(
                    type="step_finished",
                    role=step.role,
                    model=step.model,
                    round=step.round,
                    latency_ms=step.latency_ms,
                    usage=step.usage,
                    verdict=step.verdict,
                ),
            )
        elif isinstance(event, FinalDelta):
            delta = DeltaMessage(
                content=event.content, reasoning_content=event.reasoning_content, tool_calls=event.tool_calls
            )
            yield chunk(choices=[ChatChunkChoice(index=0, delta=delta)])
    final = pipeline.final
    assert final is not None
    yield chunk(choices=[ChatChunkChoice(index=0, delta=DeltaMessage(), finish_reason=final.finish_reason)])
    record(pipeline, metrics)
    yield chunk(choices=[], usage=pipeline.usage(), orchestration=pipeline.info())
