"""deployments/model/serving/chat.py over a FakeEngine: usage, limits, streaming, reasoning and logprobs."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from pydantic import ValidationError

from deployments.model.serving.chat import ChatServing
from deployments.model.serving.common import PREPARE_IN_THREAD_CHARS
from serve_app.config import RequestLimits
from serve_app.errors import ContextLengthExceeded, InvalidRequest
from serve_app.protocol import ChatCompletionChunk, ChatCompletionRequest

from ..fakes import FakeEngine, FakeMetrics

VOCAB = 1000
LIMITS = RequestLimits(max_n=4, max_messages=8)
# One user message of two words: header + 2 words + generation prompt = 4 prompt tokens.
HELLO = [{"role": "user", "content": "hello world"}]
HELLO_PROMPT_TOKENS = 4
THINKING = ("<think>", "Check", " twice", "</think>", "Answer", " is", " 4")


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "fake-model", "messages": HELLO, **fields})


def serving(engine: FakeEngine, metrics: FakeMetrics | None = None) -> ChatServing:
    return ChatServing(engine, "fake-model", LIMITS, vocab_size=VOCAB, metrics=metrics)


async def collect(serving_: ChatServing, request: ChatCompletionRequest) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in await serving_.stream(request, "req-1")]


# ---------------------------------------------------------------- non-streaming


async def test_single_choice_response_and_usage() -> None:
    engine = FakeEngine()
    response = await serving(engine).create(chat(), "req-1")
    assert response.id == "req-1" and response.model == "fake-model"
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello there!"
    assert choice.message.reasoning_content is None
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert response.usage.prompt_tokens == HELLO_PROMPT_TOKENS
    assert response.usage.completion_tokens == 3
    assert response.usage.total_tokens == HELLO_PROMPT_TOKENS + 3


async def test_n_choices_count_the_prompt_once_and_sum_completions() -> None:
    engine = FakeEngine(
        outputs=[("a",), ("b", "c"), ("d", "e", "f")], finish_reasons=["stop", "stop", "length"]
    )
    response = await serving(engine).create(chat(n=3), "req-1")
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert [c.message.content for c in response.choices] == ["a", "bc", "def"]
    assert [c.finish_reason for c in response.choices] == ["stop", "stop", "length"]
    assert response.usage.prompt_tokens == HELLO_PROMPT_TOKENS
    assert response.usage.completion_tokens == 1 + 2 + 3
    assert response.usage.total_tokens == HELLO_PROMPT_TOKENS + 6
    assert engine.calls[0].sampling.n == 3


async def test_messages_are_rendered_with_developer_as_system() -> None:
    engine = FakeEngine()
    request = ChatCompletionRequest(
        model="fake-model",
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        ],
    )
    await serving(engine).create(request, "req-1")
    assert engine.rendered == [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    ]
    assert engine.calls[0].request_id == "req-1"


async def test_max_tokens_reaches_the_engine_and_cuts_the_output() -> None:
    engine = FakeEngine(outputs=[("one", " two", " three", " four")])
    response = await serving(engine).create(chat(max_tokens=2), "req-1")
    assert engine.calls[0].sampling.max_tokens == 2
    assert response.choices[0].message.content == "one two"
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 2


async def test_max_completion_tokens_is_the_same_limit() -> None:
    engine = FakeEngine()
    await serving(engine).create(chat(max_completion_tokens=7), "req-1")
    assert engine.calls[0].sampling.max_tokens == 7


async def test_without_max_tokens_the_limit_is_the_room_left_in_context() -> None:
    engine = FakeEngine(max_model_len=64)
    await serving(engine).create(chat(), "req-1")
    assert engine.calls[0].sampling.max_tokens == 64 - HELLO_PROMPT_TOKENS


async def test_sampling_fields_map_onto_the_engine_spec() -> None:
    engine = FakeEngine()
    await serving(engine).create(
        chat(
            temperature=0, top_p=0.5, stop=["\n", "END"], seed=7, presence_penalty=1, logit_bias={"42": -100}
        ),
        "req-1",
    )
    spec = engine.calls[0].sampling
    assert (spec.temperature, spec.top_p, spec.stop, spec.seed) == (0, 0.5, ("\n", "END"), 7)
    assert spec.presence_penalty == 1 and spec.frequency_penalty == 0
    assert spec.logit_bias == {42: -100}
    assert spec.logprobs is None


async def test_openai_defaults_when_sampling_fields_are_absent() -> None:
    engine = FakeEngine()
    await serving(engine).create(chat(), "req-1")
    spec = engine.calls[0].sampling
    assert (spec.temperature, spec.top_p, spec.n, spec.stop, spec.logit_bias) == (1.0, 1.0, 1, (), None)


async def test_prompt_plus_max_tokens_over_context_is_rejected() -> None:
    engine = FakeEngine(max_model_len=10)
    with pytest.raises(ContextLengthExceeded) as caught:
        await serving(engine).create(chat(max_tokens=7), "req-1")
    error = caught.value
    assert error.status == 400 and error.code == "context_length_exceeded"
    assert error.param == "max_tokens"
    for number in ("10 tokens", f"{HELLO_PROMPT_TOKENS} tokens", "asks for 7", "at most 6"):
        assert number in error.message
    assert engine.calls == []
    # Exactly filling the context is allowed.
    await serving(engine).create(chat(max_tokens=10 - HELLO_PROMPT_TOKENS), "req-2")


async def test_context_error_names_max_completion_tokens_when_that_was_sent() -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        await serving(FakeEngine(max_model_len=10)).create(chat(max_completion_tokens=7), "req-1")
    assert caught.value.param == "max_completion_tokens"


async def test_prompt_alone_over_context_is_rejected_naming_messages() -> None:
    long = [{"role": "user", "content": " ".join(["word"] * 20)}]
    request = ChatCompletionRequest(model="fake-model", messages=long)
    with pytest.raises(ContextLengthExceeded) as caught:
        await serving(FakeEngine(max_model_len=16)).create(request, "req-1")
    assert caught.value.param == "messages"
    assert "leaves no room" in caught.value.message


async def test_n_above_the_limit_is_rejected() -> None:
    engine = FakeEngine()
    with pytest.raises(InvalidRequest) as caught:
        await serving(engine).create(chat(n=LIMITS.max_n + 1), "req-1")
    assert caught.value.param == "n" and str(LIMITS.max_n) in caught.value.message
    assert engine.calls == []
    with pytest.raises(InvalidRequest, match="n may be at most"):
        await serving(engine).stream(chat(n=LIMITS.max_n + 1, stream=True), "req-1")


async def test_too_many_messages_are_rejected() -> None:
    messages = [{"role": "user", "content": "x"}] * (LIMITS.max_messages + 1)
    request = ChatCompletionRequest(model="fake-model", messages=messages)
    with pytest.raises(InvalidRequest) as caught:
        await serving(FakeEngine()).create(request, "req-1")
    assert caught.value.param == "messages"


async def test_logit_bias_outside_the_vocabulary_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        await serving(FakeEngine()).create(chat(logit_bias={str(VOCAB): 5}), "req-1")
    assert caught.value.param == "logit_bias" and str(VOCAB) in caught.value.message
    await serving(FakeEngine()).create(chat(logit_bias={str(VOCAB - 1): 5}), "req-2")


async def test_reasoning_is_split_into_reasoning_content() -> None:
    engine = FakeEngine(outputs=[THINKING], reasoning=True)
    response = await serving(engine).create(chat(), "req-1")
    message = response.choices[0].message
    assert message.reasoning_content == "Check twice"
    assert message.content == "Answer is 4"
    assert response.usage.completion_tokens == len(THINKING)


async def test_logprobs_shapes() -> None:
    engine = FakeEngine(outputs=[("x", "yz")])
    response = await serving(engine).create(chat(logprobs=True, top_logprobs=2), "req-1")
    assert engine.calls[0].sampling.logprobs == 2
    assert response.choices[0].logprobs is not None
    entries = response.choices[0].logprobs.content
    assert [e.token for e in entries] == ["x", "yz"]
    assert [e.bytes for e in entries] == [[120], [121, 122]]
    assert all(len(e.top_logprobs) == 2 for e in entries)
    assert entries[0].top_logprobs[0].token == "alt0" and entries[0].top_logprobs[0].bytes == [
        97,
        108,
        116,
        48,
    ]


async def test_logprobs_without_top_logprobs_asks_for_zero_alternatives() -> None:
    engine = FakeEngine()
    response = await serving(engine).create(chat(logprobs=True), "req-1")
    assert engine.calls[0].sampling.logprobs == 0
    logprobs = response.choices[0].logprobs
    assert logprobs is not None
    assert len(logprobs.content) == 3
    assert all(e.top_logprobs == [] for e in logprobs.content)


async def test_token_metrics_are_recorded() -> None:
    metrics = FakeMetrics()
    await serving(FakeEngine(), metrics).create(chat(n=2), "req-1")
    assert metrics.named("tokens") == [("fake-model", HELLO_PROMPT_TOKENS, 6)]
    assert len(metrics.named("first_token")) == 1


# ---------------------------------------------------------------- streaming


async def test_stream_chunk_sequence_without_usage() -> None:
    chunks = await collect(serving(FakeEngine()), chat(stream=True))
    first, *middle = chunks
    assert [c.delta.role for c in first.choices] == ["assistant"]
    assert first.choices[0].delta.content == ""
    assert all(c.id == "req-1" and c.model == "fake-model" for c in chunks)
    assert len({c.created for c in chunks}) == 1
    assert all(ch.delta.role is None for c in middle for ch in c.choices)
    assert "".join(ch.delta.content or "" for c in middle for ch in c.choices) == "Hello there!"
    assert middle[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_stream_ends_with_a_usage_chunk_when_asked() -> None:
    chunks = await collect(
        serving(FakeEngine()), chat(n=2, stream=True, stream_options={"include_usage": True})
    )
    assert [c.delta.role for c in chunks[0].choices] == ["assistant", "assistant"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        HELLO_PROMPT_TOKENS,
        6,
        HELLO_PROMPT_TOKENS + 6,
    )
    assert all(c.usage is None for c in chunks[:-1])
    texts = {0: "", 1: ""}
    for chunk in chunks[1:-1]:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "Hello there!", 1: "Hello there!"}


async def test_stream_include_usage_false_sends_no_usage_chunk() -> None:
    chunks = await collect(serving(FakeEngine()), chat(stream=True, stream_options={"include_usage": False}))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices


async def test_stream_validation_errors_raise_before_the_first_chunk() -> None:
    with pytest.raises(ContextLengthExceeded):
        await serving(FakeEngine(max_model_len=8)).stream(chat(stream=True, max_tokens=100), "req-1")


async def test_stream_splits_reasoning_into_reasoning_content() -> None:
    engine = FakeEngine(outputs=[THINKING], reasoning=True)
    chunks = await collect(serving(engine), chat(stream=True, stream_options={"include_usage": True}))
    deltas = [ch.delta for c in chunks[1:] for ch in c.choices]
    reasoning = "".join(d.reasoning_content or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert reasoning == "Check twice"
    assert content == "Answer is 4"
    assert "<think>" not in content + reasoning and "</think>" not in content + reasoning
    # Reasoning arrives before the answer.
    first_content = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not d.reasoning_content for d in deltas[first_content:])
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == len(THINKING)


async def test_stream_and_create_agree() -> None:
    engine = FakeEngine(outputs=[THINKING, ("plain",)], reasoning=True)
    whole = await serving(engine).create(chat(n=2), "req-1")
    chunks = await collect(serving(engine), chat(n=2, stream=True))
    for index, choice in enumerate(whole.choices):
        deltas = [ch for c in chunks[1:] for ch in c.choices if ch.index == index]
        assert "".join(d.delta.reasoning_content or "" for d in deltas) == (
            choice.message.reasoning_content or ""
        )
        assert "".join(d.delta.content or "" for d in deltas) == (choice.message.content or "")
        assert [d.finish_reason for d in deltas if d.finish_reason] == [choice.finish_reason]


async def test_stream_logprobs_per_chunk() -> None:
    chunks = await collect(serving(FakeEngine()), chat(stream=True, logprobs=True, top_logprobs=1))
    content_chunks = [ch for c in chunks[1:] for ch in c.choices]
    logprobs = [ch.logprobs for ch in content_chunks if ch.logprobs is not None]
    assert len(logprobs) == len(content_chunks)
    assert all(len(lp.content) == 1 for lp in logprobs)
    assert [lp.content[0].token for lp in logprobs] == ["Hello", " there", "!"]
    assert all(len(lp.content[0].top_logprobs) == 1 for lp in logprobs)
    assert chunks[0].choices[0].logprobs is None


async def test_continuous_usage_stats_is_honoured_or_rejected() -> None:
    try:
        request = chat(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
        chunks = await collect(serving(FakeEngine()), request)
    except (ValidationError, InvalidRequest):
        return  # rejected: fine
    content_chunks = [c for c in chunks[1:] if c.choices]
    assert content_chunks and all(c.usage is not None for c in content_chunks)


# ---------------------------------------------------------------- long prompts off the event loop


class FakeThreadRecordingEngine(FakeEngine):
    """A FakeEngine that notes which thread templated each prompt, and can hold one there."""

    def __init__(self, hold: threading.Event | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold = hold
        self.threads: list[tuple[int, int]] = []  # (thread id, characters)

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        chars = sum(len(m["content"] or "") for m in messages)
        self.threads.append((threading.get_ident(), chars))
        if self.hold is not None and chars >= PREPARE_IN_THREAD_CHARS:
            assert self.hold.wait(5), "test did not release the held prompt"
        return super().chat_prompt(messages, tools)


def long_chat() -> ChatCompletionRequest:
    words = "word " * (PREPARE_IN_THREAD_CHARS // 5 + 1)
    return ChatCompletionRequest.model_validate(
        {"model": "fake-model", "messages": [{"role": "user", "content": words}], "max_tokens": 2}
    )


async def test_short_prompts_are_prepared_on_the_loop_long_ones_in_a_thread() -> None:
    engine = FakeThreadRecordingEngine(max_model_len=100_000)
    serving_ = ChatServing(engine, "fake-model", LIMITS, vocab_size=VOCAB)
    await serving_.create(chat(), "short")
    await serving_.create(long_chat(), "long")
    (short_thread, _), (long_thread, _) = engine.threads
    assert short_thread == threading.get_ident()
    assert long_thread != threading.get_ident()


async def test_while_a_long_prompt_is_prepared_short_ones_queue_behind_it_and_the_loop_runs() -> None:
    hold = threading.Event()
    engine = FakeThreadRecordingEngine(hold=hold, max_model_len=100_000)
    serving_ = ChatServing(engine, "fake-model", LIMITS, vocab_size=VOCAB)
    long_task = asyncio.ensure_future(serving_.create(long_chat(), "long"))
    await asyncio.sleep(0.05)  # the long one is now held in the worker thread
    short_task = asyncio.ensure_future(serving_.create(chat(), "short"))
    await asyncio.sleep(0.05)
    assert not short_task.done(), "a short prompt must not use the tokenizer while the long one does"
    hold.set()
    await asyncio.gather(long_task, short_task)
    threads = {chars >= PREPARE_IN_THREAD_CHARS: ident for ident, chars in engine.threads}
    assert threads[True] == threads[False] != threading.get_ident()
