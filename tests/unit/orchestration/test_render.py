"""deployments/ingress/orchestration/render.py: one pipeline, rendered as a chat.completion or as
SSE chunks."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.ingress.orchestration.pipeline import CritiquePipeline, EnsemblePipeline
from deployments.ingress.orchestration.render import render_response, render_stream
from serve_app.errors import ServiceError
from serve_app.protocol import ChatCompletionRequest

from ..fakes import FakeMetrics, FakeModelClient, Reply
from ..support import parse_sse

GEN, CRITIC = "qwen2.5-7b", "deepseek-r1-7b"
NEEDS_REVISION = '{"verdict":"needs_revision","problems":"1. Too vague."}'


def request() -> ChatCompletionRequest:
    return ChatCompletionRequest(model="D4", messages=[{"role": "user", "content": "Explain SSE."}])


def two_round_critique(final: str = "final answer in five words") -> CritiquePipeline:
    generator = FakeModelClient(
        GEN,
        [
            Reply("draft zero", prompt_tokens=1, completion_tokens=1),
            Reply("draft one", prompt_tokens=2, completion_tokens=2),
            Reply(final, prompt_tokens=3, completion_tokens=3, finish_reason="length"),
        ],
    )
    critic = FakeModelClient(
        CRITIC, [Reply(NEEDS_REVISION, reasoning="thinking", prompt_tokens=10, completion_tokens=10)]
    )
    return CritiquePipeline(request(), "req-9", 5.0, generator, critic, 2)


async def stream_of(pipeline: Any, metrics: FakeMetrics | None = None) -> list[dict[str, Any]]:
    events = [event async for event in render_stream(pipeline, request(), metrics or FakeMetrics())]
    assert all(event.startswith("data: ") and event.endswith("\n\n") for event in events)
    decoded = parse_sse(events)
    assert "[DONE]" not in decoded, "the route, not the renderer, ends the stream"
    return decoded  # type: ignore[return-value]


async def test_render_response_is_a_chat_completion_with_orchestration() -> None:
    metrics = FakeMetrics()
    pipeline = two_round_critique()
    response = await render_response(pipeline, request(), metrics)
    assert response.id == "req-9" and response.model == "D4"
    assert [c.message.content for c in response.choices] == ["final answer in five words"]
    assert response.choices[0].finish_reason == "length"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (26, 26)
    info = response.orchestration
    assert info is not None and info.mode == "critique" and info.stop_reason == "max_rounds"
    assert info.models_used == [GEN, CRITIC, GEN, CRITIC, GEN]
    assert metrics.named("pipeline_finished") == [
        (
            "critique",
            2,
            [
                ("generator", GEN),
                ("critic", CRITIC),
                ("generator", GEN),
                ("critic", CRITIC),
                ("generator", GEN),
            ],
        )
    ]


async def test_render_stream_chunk_sequence() -> None:
    metrics = FakeMetrics()
    chunks = await stream_of(two_round_critique(), metrics)

    assert all(
        c["id"] == "req-9" and c["model"] == "D4" and c["object"] == "chat.completion.chunk" for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}

    progress = [c["orchestration_event"] for c in chunks if "orchestration_event" in c]
    assert [(p["type"], p["role"], p["round"]) for p in progress] == [
        ("step_started", "generator", 0),
        ("step_finished", "generator", 0),
        ("step_started", "critic", 1),
        ("step_finished", "critic", 1),
        ("step_started", "generator", 1),
        ("step_finished", "generator", 1),
        ("step_started", "critic", 2),
        ("step_finished", "critic", 2),
        ("step_started", "generator", 2),
        ("step_finished", "generator", 2),
    ]
    critic_done = [p for p in progress if p["type"] == "step_finished" and p["role"] == "critic"]
    assert all(p["verdict"] == "needs_revision" and p["usage"]["prompt_tokens"] == 10 for p in critic_done)

    content_deltas = [
        choice["delta"]["content"]
        for c in chunks[1:]
        for choice in c["choices"]
        if choice["delta"].get("content")
    ]
    assert "".join(content_deltas) == "final answer in five words"
    assert len(content_deltas) == 5, "the last revision streams token by token"
    # Streamed tokens come while the last step runs: after its start, before its finish.
    first_token = next(
        i for i, c in enumerate(chunks[1:], 1) if c["choices"] and c["choices"][0]["delta"].get("content")
    )
    last_start = max(
        i for i, c in enumerate(chunks) if c.get("orchestration_event", {}).get("type") == "step_started"
    )
    last_finish = max(
        i for i, c in enumerate(chunks) if c.get("orchestration_event", {}).get("type") == "step_finished"
    )
    assert last_start < first_token < last_finish
    assert "draft zero" not in "".join(content_deltas)

    finish, last = chunks[-2], chunks[-1]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 26, "completion_tokens": 26, "total_tokens": 52}
    assert last["orchestration"]["models_used"] == [GEN, CRITIC, GEN, CRITIC, GEN]
    assert last["orchestration"]["stop_reason"] == "max_rounds"
    assert all("orchestration" not in c for c in chunks[:-1])
    assert len(metrics.named("pipeline_finished")) == 1


async def test_stream_and_response_agree_on_the_answer() -> None:
    whole = await render_response(two_round_critique(), request(), FakeMetrics())
    chunks = await stream_of(two_round_critique())
    streamed = "".join(ch["delta"].get("content", "") for c in chunks for ch in c["choices"])
    assert streamed == whole.choices[0].message.content
    assert whole.orchestration is not None
    assert chunks[-1]["orchestration"]["models_used"] == whole.orchestration.models_used


async def test_render_stream_of_an_approved_draft_sends_the_draft_once() -> None:
    generator = FakeModelClient(GEN, [Reply("approved draft")])
    critic = FakeModelClient(CRITIC, [Reply('{"verdict":"approved","problems":""}')])
    chunks = await stream_of(CritiquePipeline(request(), "req-9", 5.0, generator, critic, 2))
    contents = [ch["delta"]["content"] for c in chunks for ch in c["choices"] if ch["delta"].get("content")]
    assert contents == ["approved draft"]
    assert chunks[-1]["orchestration"]["stop_reason"] == "approved"


async def test_approved_draft_reasoning_is_streamed_like_it_is_returned() -> None:
    def pipeline() -> CritiquePipeline:
        generator = FakeModelClient(GEN, [Reply("answer", reasoning="generator reasoning")])
        return CritiquePipeline(
            request(),
            "r",
            5.0,
            generator,
            FakeModelClient(CRITIC, [Reply('{"verdict":"approved","problems":""}')]),
            2,
        )

    whole = await render_response(pipeline(), request(), FakeMetrics())
    assert whole.choices[0].message.reasoning_content == "generator reasoning"
    chunks = await stream_of(pipeline())
    streamed = "".join(ch["delta"].get("reasoning_content", "") for c in chunks for ch in c["choices"])
    assert streamed == "generator reasoning"


async def test_render_stream_of_an_ensemble() -> None:
    a = FakeModelClient("model-a", [Reply("answer A")])
    b = FakeModelClient("model-b", [Reply("answer B", reasoning="why B")])
    judge = FakeModelClient(CRITIC, [Reply('{"winner":2,"reason":"better"}')])
    chunks = await stream_of(EnsemblePipeline(request(), "req-9", 5.0, [a, b], judge))
    deltas = [ch["delta"] for c in chunks for ch in c["choices"] if ch["delta"].get("content")]
    assert deltas == [{"content": "answer B", "reasoning_content": "why B"}]
    info = chunks[-1]["orchestration"]
    assert info["mode"] == "ensemble" and info["reason"] == "better" and info["stop_reason"] == "judged"


async def test_render_stream_propagates_step_errors_after_the_first_chunk() -> None:
    generator = FakeModelClient(GEN, [Reply("draft")])
    critic = FakeModelClient(CRITIC, error=RuntimeError("boom"))
    stream = render_stream(
        CritiquePipeline(request(), "r", 5.0, generator, critic, 1), request(), FakeMetrics()
    )
    first = await anext(stream)
    assert '"role":"assistant"' in first
    with pytest.raises(ServiceError) as caught:
        async for _ in stream:
            pass
    assert caught.value.status == 500 and "The critic step (round 1" in caught.value.message
