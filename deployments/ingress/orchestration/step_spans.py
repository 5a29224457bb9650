"""A pipeline step's span: opened when the step starts, a child of the request's span, and ended
when its result is known (before the caller gets it), or failed with the error that ended it."""

from __future__ import annotations

from opentelemetry.trace import Span, Tracer

from serve_app.protocol import Usage
from serve_app.tracing import fail


def start_step_span(
    tracer: Tracer | None, mode: str, role: str, model: str, round_: int, index: int, request_id: str
) -> Span | None:
    if tracer is None:
        return None
    return tracer.start_span(
        f"{mode} {role}",
        attributes={
            "inference.pipeline.mode": mode,
            "inference.step.role": role,
            "inference.step.round": round_,
            "inference.step.index": index,
            "gen_ai.request.model": model,
            "inference.request_id": request_id,
        },
    )


def end_step_span(span: Span | None, usage: Usage, attempts: int, finish: str | None) -> None:
    if span is None:
        return
    span.set_attributes(
        {
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "inference.step.attempts": attempts,
            "inference.step.finish_reason": finish or "none",
        }
    )
    span.end()


def fail_step_span(span: Span | None, exc: BaseException) -> None:
    if span is not None:
        fail(span, exc)
        span.end()
