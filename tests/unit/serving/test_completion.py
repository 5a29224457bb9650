"""deployments/model/serving/completion.py over a FakeEngine: prompt shapes, usage, limits,
logprobs, streams."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.model.serving.completion import MAX_PROMPTS, CompletionServing
from serve_app.config import RequestLimits
from serve_app.errors import ContextLengthExceeded, InvalidRequest
from serve_app.protocol import CompletionChunk, CompletionRequest

from ..fakes import FakeEngine, FakeMetrics

VOCAB = 1000
LIMITS = RequestLimits(max_n=4)


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "fake-model", "prompt": "one two three", **fields})


def serving(engine: FakeEngine, metrics: FakeMetrics | None = None) -> CompletionServing:
    return CompletionServing(engine, "fake-model", LIMITS, vocab_size=VOCAB, metrics=metrics)


async def collect(serving_: CompletionServing, request: CompletionRequest) -> list[CompletionChunk]:
    return [chunk async for chunk in await serving_.stream(request, "cmpl-1")]


async def test_string_prompt_is_tokenized_and_answered() -> None:
    engine = FakeEngine()
    response = await serving(engine).create(completion(), "cmpl-1")
    assert response.id == "cmpl-1" and response.object == "text_completion"
    assert [c.text for c in response.choices] == ["Hello there!"]
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].logprobs is None
    assert engine.calls[0].prompt_token_ids == engine.tokenize("one two three")
    assert engine.calls[0].sampling.max_tokens == 16  # the OpenAI default for completions
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (
        3,
        3,
        6,
    )


async def test_multiple_prompts_times_n_choices_in_prompt_major_order() -> None:
    engine = FakeEngine(outputs=[("a",), ("b", "c")])
    response = await serving(engine).create(completion(prompt=["one", "two words"], n=2), "cmpl-1")
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert [c.text for c in response.choices] == ["a", "bc", "a", "bc"]
    assert sorted(call.request_id for call in engine.calls) == ["cmpl-1-0", "cmpl-1-1"]
    assert response.usage.prompt_tokens == 1 + 2  # each prompt counted once, not once per choice
    assert response.usage.completion_tokens == 2 * (1 + 2)
    assert response.usage.total_tokens == 3 + 6


async def test_token_id_prompts_pass_through_untouched() -> None:
    engine = FakeEngine()
    response = await serving(engine).create(completion(prompt=[[5, 6, 7], [8]]), "cmpl-1")
    assert sorted(call.prompt_token_ids for call in engine.calls) == [[5, 6, 7], [8]]
    assert response.usage.prompt_tokens == 4
    single = FakeEngine()
    await serving(single).create(completion(prompt=[9, 10]), "cmpl-2")
    assert [call.prompt_token_ids for call in single.calls] == [[9, 10]]


@pytest.mark.parametrize(
    "prompt", [[1, VOCAB], [[1], [VOCAB + 5]], [-1, 2]], ids=["flat", "nested", "negative"]
)
async def test_token_ids_outside_the_vocabulary_are_rejected(prompt: Any) -> None:
    engine = FakeEngine()
    with pytest.raises(InvalidRequest) as caught:
        await serving(engine).create(completion(prompt=prompt), "cmpl-1")
    assert caught.value.param == "prompt" and str(VOCAB) in caught.value.message
    assert engine.calls == []


async def test_too_many_prompts_are_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        await serving(FakeEngine()).create(completion(prompt=["p"] * (MAX_PROMPTS + 1)), "cmpl-1")
    assert caught.value.param == "prompt"


async def test_n_above_the_limit_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        await serving(FakeEngine()).create(completion(n=LIMITS.max_n + 1), "cmpl-1")
    assert caught.value.param == "n"


async def test_context_length_is_checked_per_prompt() -> None:
    engine = FakeEngine(max_model_len=10)
    with pytest.raises(ContextLengthExceeded) as caught:
        await serving(engine).create(completion(prompt=["short", "a b c d e f"], max_tokens=5), "cmpl-1")
    assert caught.value.param == "max_tokens" and "at most 4" in caught.value.message
    assert engine.calls == []
    with pytest.raises(ContextLengthExceeded) as caught:
        await serving(engine).create(completion(prompt=list(range(10))), "cmpl-1")
    assert caught.value.param == "prompt"


async def test_max_tokens_cuts_the_output() -> None:
    engine = FakeEngine(outputs=[("a", "b", "c", "d")])
    response = await serving(engine).create(completion(max_tokens=3), "cmpl-1")
    assert response.choices[0].text == "abc" and response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3


async def test_logprobs_shapes_and_offsets() -> None:
    engine = FakeEngine(outputs=[("ab", "c", "def")])
    response = await serving(engine).create(completion(logprobs=2), "cmpl-1")
    assert engine.calls[0].sampling.logprobs == 2
    logprobs = response.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["ab", "c", "def"]
    assert logprobs.token_logprobs == [-0.5, -0.5, -0.5]
    assert logprobs.text_offset == [0, 2, 3]
    assert all(top is not None and len(top) == 2 for top in logprobs.top_logprobs)


async def test_logprobs_zero_still_returns_the_sampled_tokens() -> None:
    response = await serving(FakeEngine()).create(completion(logprobs=0), "cmpl-1")
    logprobs = response.choices[0].logprobs
    assert logprobs is not None
    assert len(logprobs.tokens) == 3 and logprobs.top_logprobs == [None, None, None]


async def test_token_metrics_are_recorded_per_prompt() -> None:
    metrics = FakeMetrics()
    await serving(FakeEngine(), metrics).create(completion(prompt=["a", "b c"]), "cmpl-1")
    assert sorted(metrics.named("tokens")) == [("fake-model", 1, 3), ("fake-model", 2, 3)]


async def test_stream_chunks_usage_and_offsets() -> None:
    engine = FakeEngine(outputs=[("ab", "c")])
    chunks = await collect(
        serving(engine),
        completion(prompt=["x", "y z"], stream=True, stream_options={"include_usage": True}, logprobs=1),
    )
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 4, 7)
    assert all(c.usage is None for c in content)
    texts: dict[int, str] = {}
    offsets: dict[int, list[int]] = {}
    for chunk in content:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            assert choice.logprobs is not None
            offsets.setdefault(choice.index, []).extend(choice.logprobs.text_offset)
    assert texts == {0: "abc", 1: "abc"}
    assert offsets == {0: [0, 2], 1: [0, 2]}
    finishes = [ch.finish_reason for c in content for ch in c.choices if ch.finish_reason]
    assert finishes == ["stop", "stop"]


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    chunks = await collect(serving(FakeEngine()), completion(stream=True))
    assert chunks and all(c.usage is None and c.choices for c in chunks)
    assert "".join(ch.text for c in chunks for ch in c.choices) == "Hello there!"


async def test_stream_validation_errors_raise_before_the_first_chunk() -> None:
    with pytest.raises(InvalidRequest):
        await serving(FakeEngine()).stream(completion(prompt=[VOCAB], stream=True), "cmpl-1")
