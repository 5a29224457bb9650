"""deployments/ingress/orchestration/pipeline.py with FakeModelClients: step order, early stop,
usage, failures, prompt hygiene, and ensemble concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from deployments.ingress.orchestration import pipeline as pipeline_module
from deployments.ingress.orchestration.pipeline import (
    CritiquePipeline,
    EnsemblePipeline,
    FinalDelta,
    StepFinished,
    StepStarted,
)
from deployments.ingress.orchestration.verdict import VERDICT_MAX_TOKENS, pick_schema, verdict_schema
from serve_app.errors import ContextLengthExceeded, ServiceError, UpstreamTimeout, restarting
from serve_app.protocol import ChatCompletionRequest, ChatMessage, Usage

from ..fakes import FakeModelClient, Reply

GEN, CRITIC, JUDGE = "qwen2.5-7b", "deepseek-r1-7b", "phi-4"
TASK = "Write a function that reverses a string."
NEEDS_REVISION = '{"verdict":"needs_revision","problems":"1. It fails on empty input."}'
APPROVED = '{"verdict":"approved","problems":""}'


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "D4", "messages": [{"role": "user", "content": TASK}], **fields}
    )


def critique(
    generator: FakeModelClient, critic: FakeModelClient, rounds: int = 2, **kw: Any
) -> CritiquePipeline:
    return CritiquePipeline(request(**kw), "req-1", 5.0, generator, critic, rounds)


async def run(pipeline: Any, stream_final: bool = False) -> list[Any]:
    return [event async for event in pipeline.events(stream_final=stream_final)]


def texts(messages: list[ChatMessage]) -> str:
    return "\n".join(m.text() for m in messages)


# ---------------------------------------------------------------- critique


async def test_critique_runs_every_round_when_the_critic_never_approves() -> None:
    generator = FakeModelClient(GEN, [Reply("draft 0"), Reply("draft 1"), Reply("draft 2")])
    critic = FakeModelClient(CRITIC, [Reply(NEEDS_REVISION, reasoning="thinking"), Reply(NEEDS_REVISION)])
    pipeline = critique(generator, critic, rounds=2)
    events = await run(pipeline)

    info = pipeline.info()
    assert info.mode == "critique"
    assert info.models_used == [GEN, CRITIC, GEN, CRITIC, GEN]
    assert [s.role for s in info.steps] == ["generator", "critic", "generator", "critic", "generator"]
    assert [s.round for s in info.steps] == [0, 1, 1, 2, 2]
    assert [s.verdict for s in info.steps] == [None, "needs_revision", None, "needs_revision", None]
    assert info.rounds == 2 and info.stop_reason == "max_rounds"
    assert pipeline.final is info.steps[-1] and pipeline.final.content == "draft 2"
    assert info.steps[1].reasoning_content == "thinking"
    assert all(s.latency_ms >= 0 and s.finish_reason == "stop" for s in info.steps)

    kinds = [type(e).__name__ for e in events]
    assert kinds == ["StepStarted", "StepFinished"] * 5
    assert [(e.role, e.model, e.round) for e in events if isinstance(e, StepStarted)] == [
        (s.role, s.model, s.round) for s in info.steps
    ]
    sub_ids = [rid for _, rid in generator.requests + critic.requests]
    assert sorted(sub_ids) == [f"req-1-{i}" for i in range(1, 6)]


async def test_usage_is_the_sum_of_the_steps() -> None:
    generator = FakeModelClient(
        GEN,
        [
            Reply("d0", prompt_tokens=10, completion_tokens=1),
            Reply("d1", prompt_tokens=100, completion_tokens=2),
        ],
    )
    critic = FakeModelClient(CRITIC, [Reply(NEEDS_REVISION, prompt_tokens=1000, completion_tokens=3)])
    pipeline = critique(generator, critic, rounds=1)
    await run(pipeline)
    assert pipeline.usage() == Usage(prompt_tokens=1110, completion_tokens=6, total_tokens=1116)
    assert sum((s.usage for s in pipeline.steps), Usage()) == pipeline.usage()


async def test_critic_approval_in_round_one_stops_early_with_the_draft() -> None:
    generator = FakeModelClient(GEN, [Reply("the draft", reasoning="gen thoughts")])
    critic = FakeModelClient(CRITIC, [Reply(APPROVED)])
    pipeline = critique(generator, critic, rounds=3)
    events = await run(pipeline)
    info = pipeline.info()
    assert len(info.steps) == 2 and info.models_used == [GEN, CRITIC]
    assert info.stop_reason == "approved" and info.rounds == 1
    assert info.steps[1].verdict == "approved"
    assert pipeline.final is info.steps[0] and pipeline.final.content == "the draft"
    assert len(generator.requests) == 1
    assert not any(isinstance(e, FinalDelta) for e in events)


async def test_approval_in_a_later_round_keeps_the_revision() -> None:
    generator = FakeModelClient(GEN, [Reply("draft 0"), Reply("draft 1")])
    critic = FakeModelClient(CRITIC, [Reply(NEEDS_REVISION), Reply(APPROVED)])
    pipeline = critique(generator, critic, rounds=3)
    events = await run(pipeline, stream_final=True)
    assert pipeline.info().models_used == [GEN, CRITIC, GEN, CRITIC]
    assert pipeline.final is not None
    assert pipeline.stop_reason == "approved" and pipeline.final.content == "draft 1"
    assert [e.content for e in events if isinstance(e, FinalDelta)] == ["draft 1"]


async def test_unclear_verdict_counts_as_not_approved() -> None:
    generator = FakeModelClient(GEN, [Reply("draft 0"), Reply("draft 1")])
    critic = FakeModelClient(CRITIC, [Reply("Hmm, interesting approach.")])
    pipeline = critique(generator, critic, rounds=1)
    await run(pipeline)
    assert pipeline.steps[1].verdict == "unclear"
    assert pipeline.final is not None
    assert pipeline.stop_reason == "max_rounds" and pipeline.final.content == "draft 1"


async def test_only_the_last_revision_streams_and_nothing_else() -> None:
    generator = FakeModelClient(GEN, [Reply("draft zero"), Reply("draft one"), Reply("the final answer")])
    critic = FakeModelClient(CRITIC, [Reply(NEEDS_REVISION)])
    pipeline = critique(generator, critic, rounds=2)
    events = await run(pipeline, stream_final=True)
    deltas = [e for e in events if isinstance(e, FinalDelta)]
    assert "".join(d.content or "" for d in deltas) == "the final answer"
    assert len(deltas) == 3  # streamed word by word, not as one block
    # Only the last step was requested as a stream, with usage so the step can be accounted.
    streamed = [r.stream for r in generator.chat_requests]
    assert streamed == [False, False, True]
    assert generator.chat_requests[-1].include_usage() is True
    assert all(not r.stream for r in critic.chat_requests)
    assert pipeline.final is not None
    assert pipeline.final.content == "the final answer"
    assert pipeline.final.usage == Reply("x").usage()


async def test_the_critics_reasoning_never_reaches_the_revision_prompt() -> None:
    secret = "SECRET-CHAIN-OF-THOUGHT: maybe the user wants bytes"
    generator = FakeModelClient(GEN, [Reply("def rev(s): return s[::-1]"), Reply("revised")])
    critic = FakeModelClient(
        CRITIC, [Reply('{"verdict":"needs_revision","problems":"1. Add a docstring."}', reasoning=secret)]
    )
    await run(critique(generator, critic, rounds=1))

    revision = generator.chat_requests[1].messages
    assert secret not in texts(revision)
    assert all(secret not in (m.reasoning_content or "") for m in revision)
    # What the generator does see: the task, its own draft, and the critic's conclusion.
    assert revision[0].role == "user" and revision[0].text() == TASK
    assert revision[1].role == "assistant" and revision[1].text() == "def rev(s): return s[::-1]"
    assert revision[-1].role == "user" and "1. Add a docstring." in revision[-1].text()
    critic_prompt = texts(critic.chat_requests[0].messages)
    assert TASK in critic_prompt and "def rev(s): return s[::-1]" in critic_prompt
    assert '"verdict": "approved"' in critic_prompt  # the critic is told how to answer


async def test_critic_without_a_final_answer_gets_a_placeholder_feedback() -> None:
    generator = FakeModelClient(GEN, [Reply("d0"), Reply("d1")])
    critic = FakeModelClient(CRITIC, [Reply("", reasoning="only thoughts, no answer")])
    await run(critique(generator, critic, rounds=1))
    feedback = generator.chat_requests[1].messages[-1].text()
    assert "only thoughts" not in feedback and "re-check the draft yourself" in feedback


async def test_steps_inherit_the_clients_sampling_fields() -> None:
    generator = FakeModelClient(GEN, [Reply("d0"), Reply("d1")])
    critic = FakeModelClient(CRITIC, [Reply(NEEDS_REVISION)])
    await run(
        critique(generator, critic, rounds=1, temperature=0.2, top_p=0.9, max_tokens=64, stop=["END"], seed=3)
    )
    for sub in generator.chat_requests:
        assert sub.model == GEN
        assert (sub.temperature, sub.top_p, sub.max_tokens, sub.stop, sub.seed) == (0.2, 0.9, 64, ["END"], 3)
        assert sub.orchestration is None and sub.n == 1
    # The critic samples like the client asked, but its JSON verdict gets room to complete.
    (verdict,) = critic.chat_requests
    assert (verdict.temperature, verdict.top_p, verdict.seed) == (0.2, 0.9, 3)
    assert verdict.max_tokens == VERDICT_MAX_TOKENS and verdict.stop is None


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CONTRACT: dict[str, Any] = {
    "tools": TOOLS,
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "response_format": {"type": "json_object"},
}


async def test_the_verdict_and_the_pick_are_structured_outputs_never_the_callers_contract() -> None:
    generator = FakeModelClient(GEN, [Reply("d0"), Reply("d1")])
    critic = FakeModelClient(CRITIC, [Reply(NEEDS_REVISION)])
    await run(critique(generator, critic, rounds=1, **CONTRACT))
    (verdict,) = critic.chat_requests
    assert verdict.tools is None and verdict.tool_choice is None
    assert verdict.response_format is not None and verdict.response_format.json_schema is not None
    assert verdict.response_format.json_schema.schema_ == verdict_schema()

    a, b = FakeModelClient(GEN, [Reply("A")]), FakeModelClient("llama-3.2-3b", [Reply("B")])
    judge = FakeModelClient(JUDGE, [Reply('{"winner":2,"reason":"r"}')])
    await run(ensemble([a, b], judge, **CONTRACT))
    (pick,) = judge.chat_requests
    assert pick.tools is None and pick.response_format is not None
    assert pick.response_format.json_schema is not None
    assert pick.response_format.json_schema.schema_ == pick_schema(2)
    # Each candidate may be the final answer, so each answers under the caller's contract.
    assert all(
        r.tools is not None and r.response_format is not None for r in a.chat_requests + b.chat_requests
    )


async def test_only_the_final_critique_step_carries_the_callers_contract() -> None:
    generator = FakeModelClient(GEN, [Reply("d0"), Reply("d1"), Reply("d2")])
    critic = FakeModelClient(CRITIC, [Reply(NEEDS_REVISION)])
    pipeline = critique(generator, critic, rounds=2, **CONTRACT)
    await run(pipeline)
    contracts = [(r.tools is not None, r.response_format is not None) for r in generator.chat_requests]
    assert contracts == [(False, False), (False, False), (True, True)]
    assert pipeline.final is pipeline.steps[-1]


async def test_an_approved_draft_is_finalized_under_the_callers_contract() -> None:
    generator = FakeModelClient(GEN, [Reply("free draft"), Reply('{"city":"Paris"}')])
    critic = FakeModelClient(CRITIC, [Reply(APPROVED)])
    pipeline = critique(generator, critic, rounds=2, **CONTRACT)
    await run(pipeline)
    assert [r.tools is not None for r in generator.chat_requests] == [False, True]
    assert "free draft" in texts(generator.chat_requests[1].messages)
    assert pipeline.stop_reason == "approved"
    assert pipeline.final is not None and pipeline.final.content == '{"city":"Paris"}'


async def test_a_failing_step_names_its_role_and_model() -> None:
    generator = FakeModelClient(GEN, [Reply("d0")])
    critic = FakeModelClient(CRITIC, error=RuntimeError("secret internal detail"))
    pipeline = critique(generator, critic)
    with pytest.raises(ServiceError) as caught:
        await run(pipeline)
    error = caught.value
    assert error.status == 500
    assert error.message.startswith(f"The critic step (round 1, model {CRITIC}) failed:")
    assert "secret" not in error.message
    assert [s.role for s in pipeline.steps] == ["generator"]


async def test_a_step_rejected_by_its_model_keeps_status_and_param() -> None:
    generator = FakeModelClient(GEN, error=ContextLengthExceeded("too long", param="max_tokens"))
    with pytest.raises(ContextLengthExceeded) as caught:
        await run(critique(generator, FakeModelClient(CRITIC)))
    assert caught.value.status == 400 and caught.value.param == "max_tokens"
    assert caught.value.message == f"The generator step (round 0, model {GEN}) failed: too long"


async def test_a_step_that_times_out_is_a_504_naming_the_step() -> None:
    # The critic never answers, so only the step timeout can end it; the timeout is long enough
    # that the instant generator step cannot hit it on a slow machine (0.02 s once could).
    async def never() -> None:
        await asyncio.Event().wait()

    generator = FakeModelClient(GEN, [Reply("d0")])
    critic = FakeModelClient(CRITIC, [Reply(APPROVED)], before=never)
    pipeline = CritiquePipeline(request(), "req-1", 0.5, generator, critic, 2)
    with pytest.raises(UpstreamTimeout) as caught:
        await asyncio.wait_for(run(pipeline), 60)
    assert caught.value.status == 504
    assert caught.value.message == f"The critic step (round 1, model {CRITIC}) failed: timed out after 0.5s"
    assert critic.cancelled, "the timed-out model call must be cancelled, not left running"


async def test_cancelling_the_request_cancels_the_step_and_is_not_an_error() -> None:
    started = asyncio.Event()

    async def block() -> None:
        started.set()
        await asyncio.Event().wait()

    generator = FakeModelClient(GEN, before=block)
    task = asyncio.create_task(run(critique(generator, FakeModelClient(CRITIC))))
    await asyncio.wait_for(started.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert generator.cancelled


async def test_a_slow_reader_of_the_final_stream_does_not_get_a_bare_cancellation() -> None:
    generator = FakeModelClient(GEN, [Reply("d0"), Reply("a final answer of several words")])
    critic = FakeModelClient(CRITIC, [Reply(NEEDS_REVISION)])
    pipeline = CritiquePipeline(request(), "req-1", 0.05, generator, critic, 1)

    async def slow_reader() -> str:
        events = pipeline.events(stream_final=True)
        assert isinstance(events, AsyncGenerator)  # so it can be closed
        try:
            async for event in events:
                if isinstance(event, FinalDelta):
                    await asyncio.sleep(0.03)  # e.g. a slow client's TCP window
            return "complete"
        except ServiceError as error:
            return f"service error {error.status}"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            return "bare CancelledError"
        finally:
            await events.aclose()

    outcome = await asyncio.create_task(slow_reader())
    assert outcome in ("complete", "service error 504")


# ---------------------------------------------------------------- ensemble


def ensemble(
    candidates: list[FakeModelClient], judge: FakeModelClient, timeout: float = 5.0, **kw: Any
) -> EnsemblePipeline:
    return EnsemblePipeline(request(**kw), "req-1", timeout, candidates, judge)


async def test_ensemble_candidates_run_concurrently() -> None:
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def a_waits_for_b() -> None:
        a_started.set()
        await b_started.wait()

    async def b_waits_for_a() -> None:
        b_started.set()
        await a_started.wait()

    a = FakeModelClient("model-a", [Reply("answer A")], before=a_waits_for_b)
    b = FakeModelClient("model-b", [Reply("answer B")], before=b_waits_for_a)
    pipeline = ensemble([a, b], FakeModelClient(JUDGE, [Reply('{"winner":1,"reason":"fine"}')]))
    # Run one after the other, each candidate would wait forever for the other to start.
    async with asyncio.timeout(2):
        await run(pipeline)
    assert pipeline.final is not None
    assert pipeline.final.content == "answer A"


async def test_ensemble_judge_picks_the_winner_and_steps_stay_in_candidate_order() -> None:
    a = FakeModelClient("model-a", [Reply("answer A", prompt_tokens=1, completion_tokens=1)], delay_s=0.03)
    b = FakeModelClient(
        "model-b", [Reply("answer B", reasoning="B thought", prompt_tokens=2, completion_tokens=2)]
    )
    judge = FakeModelClient(
        JUDGE, [Reply('{"winner":2,"reason":"B handles empty input."}', prompt_tokens=4, completion_tokens=4)]
    )
    pipeline = ensemble([a, b], judge)
    events = await run(pipeline, stream_final=True)
    info = pipeline.info()
    assert info.mode == "ensemble" and info.stop_reason == "judged"
    assert [(s.role, s.model) for s in info.steps] == [
        ("candidate", "model-a"),
        ("candidate", "model-b"),
        ("judge", JUDGE),
    ]
    assert info.steps[-1].verdict == "winner:model-b"
    assert info.reason == "B handles empty input."
    assert pipeline.final is not None
    assert pipeline.final.content == "answer B" and pipeline.final.reasoning_content == "B thought"
    assert pipeline.usage() == Usage(prompt_tokens=7, completion_tokens=7, total_tokens=14)
    finals = [e for e in events if isinstance(e, FinalDelta)]
    assert [(f.content, f.reasoning_content) for f in finals] == [("answer B", "B thought")]
    started = [(e.role, e.model) for e in events if isinstance(e, StepStarted)]
    assert started == [("candidate", "model-a"), ("candidate", "model-b"), ("judge", JUDGE)]
    assert sum(isinstance(e, StepFinished) for e in events) == 3
    judge_prompt = texts(judge.chat_requests[0].messages)
    assert "Candidate 1:\nanswer A" in judge_prompt and "Candidate 2:\nanswer B" in judge_prompt
    assert TASK in judge_prompt and "B thought" not in judge_prompt


@pytest.mark.parametrize(
    "verdict", ["Both are good answers.", '{"winner":7,"reason":"the seventh"}', '{"winner":1', ""]
)
async def test_ensemble_without_a_valid_winner_keeps_the_first_candidate(verdict: str) -> None:
    a = FakeModelClient("model-a", [Reply("answer A")])
    b = FakeModelClient("model-b", [Reply("answer B")])
    pipeline = ensemble([a, b], FakeModelClient(JUDGE, [Reply(verdict)]))
    await run(pipeline)
    assert pipeline.final is not None
    assert pipeline.final.content == "answer A"
    assert pipeline.reason == "The judge named no valid winner; the first candidate was kept."
    assert pipeline.steps[-1].verdict == "winner:model-a"


async def test_ensemble_candidate_failure_names_the_candidate() -> None:
    a = FakeModelClient("model-a", error=ContextLengthExceeded("too long", param="max_tokens"))
    b = FakeModelClient("model-b", [Reply("answer B")])
    with pytest.raises(ContextLengthExceeded) as caught:
        await run(ensemble([a, b], FakeModelClient(JUDGE)))
    assert caught.value.message.startswith("The candidate step (round 1, model model-a) failed:")


async def test_ensemble_candidate_failure_cancels_the_other_candidates() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def block() -> None:
        started.set()
        await release.wait()

    async def fail_after_b_started() -> None:
        await started.wait()

    a = FakeModelClient("model-a", error=RuntimeError("boom"), before=fail_after_b_started)
    b = FakeModelClient("model-b", [Reply("answer B")], before=block)
    with pytest.raises(ServiceError):
        await run(ensemble([a, b], FakeModelClient(JUDGE)))
    for _ in range(5):
        await asyncio.sleep(0)
    still_running = not b.cancelled
    release.set()  # let a leaked call finish so nothing outlives the test
    await asyncio.sleep(0.01)
    assert not still_running, "the second candidate was left running"


async def test_ensemble_candidates_get_distinct_sub_request_ids() -> None:
    same = FakeModelClient(GEN, [Reply("first sample"), Reply("second sample")], delay_s=0.01)
    await run(ensemble([same, same], FakeModelClient(JUDGE, [Reply('{"winner":2,"reason":"x"}')])))
    ids = [request_id for _, request_id in same.requests]
    assert len(ids) == 2 and len(set(ids)) == 2, ids


async def test_a_step_whose_replica_was_stopping_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "STEP_RETRY_PAUSES_S", (0.0, 0.0))
    failures: list[ServiceError] = [restarting("the replica of a model is shutting down", "model_restarting")]

    async def fail_once() -> None:
        if failures:
            raise failures.pop()

    generator = FakeModelClient(GEN, [Reply("d0")])
    critic = FakeModelClient(CRITIC, [Reply(APPROVED)], before=fail_once)
    pipeline = critique(generator, critic, rounds=1)
    await run(pipeline)
    assert [s.role for s in pipeline.steps] == ["generator", "critic"]
    assert pipeline.stop_reason == "approved"
    first, second = (request_id for _, request_id in critic.requests)
    assert first != second, "the retry is a new model call"


async def test_a_step_is_not_tried_again_for_a_client_error_or_past_its_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline_module, "STEP_RETRY_PAUSES_S", (0.0, 0.0))
    rejected = FakeModelClient(GEN, error=ContextLengthExceeded("too long", param="max_tokens"))
    with pytest.raises(ContextLengthExceeded):
        await run(critique(rejected, FakeModelClient(CRITIC)))
    assert len(rejected.requests) == 1
    restarting_forever = FakeModelClient(GEN, error=restarting("going away", "model_restarting"))
    with pytest.raises(ServiceError) as caught:
        await run(critique(restarting_forever, FakeModelClient(CRITIC)))
    assert caught.value.code == "model_restarting"
    assert len(restarting_forever.requests) == 1 + len(pipeline_module.STEP_RETRY_PAUSES_S)
    assert caught.value.message.count("step (round") == 1, caught.value.message


async def test_a_step_is_not_tried_again_past_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # A pause that would end after the step's deadline is not taken: the step fails now.
    monkeypatch.setattr(pipeline_module, "STEP_RETRY_PAUSES_S", (3600.0,))
    restarting_forever = FakeModelClient(GEN, error=restarting("going away", "model_restarting"))
    with pytest.raises(ServiceError) as caught:
        await asyncio.wait_for(run(critique(restarting_forever, FakeModelClient(CRITIC))), 5)
    assert caught.value.code == "model_restarting"
    assert len(restarting_forever.requests) == 1
