"""Pieces shared by chat and text completion serving: sampling, context limits, stream merging."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from serve_app.config.app_args import RequestLimits
from serve_app.engine_api import Engine, EngineStep, SamplingSpec
from serve_app.errors import InvalidRequest, RequestAborted, ServiceUnavailable
from serve_app.metrics import EngineMetrics, NoMetrics
from serve_app.tracing import TraceHeaders

T = TypeVar("T")
R = TypeVar("R")
P = TypeVar("P")
logger = logging.getLogger("ray.serve")

# Requests whose text is longer than this are templated and tokenized off the event loop.
PREPARE_IN_THREAD_CHARS = 32_768


def check_token_ids(prompt: list[int], vocab_size: int | None) -> None:
    if vocab_size is not None and any(not 0 <= token < vocab_size for token in prompt):
        raise InvalidRequest(
            f"prompt contains token ids outside the vocabulary (size {vocab_size})", param="prompt"
        )


async def merge(iterators: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave several async iterators as items arrive, tagging each with its source index."""
    if len(iterators) == 1:
        async for item in iterators[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
    done = object()

    async def pump(index: int, iterator: AsyncIterator[T]) -> None:
        try:
            async for item in iterator:
                await queue.put((index, item))
            await queue.put((index, done))
        except BaseException as exc:  # delivered to the consumer, which re-raises
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, it)) for i, it in enumerate(iterators)]
    remaining = len(tasks)
    try:
        while remaining:
            index, entry = await queue.get()  # a T, the sentinel, or an exception
            if entry is done:
                remaining -= 1
            elif isinstance(entry, BaseException):
                raise entry
            else:
                yield index, entry  # type: ignore[misc]  # entries from iterators[index] are T
    finally:
        for task in tasks:
            task.cancel()


async def observed(
    steps: AsyncIterator[EngineStep], metrics: EngineMetrics, model: str, started: float
) -> AsyncIterator[EngineStep]:
    """Pass engine steps through, recording time to first token and token counts.

    A step that vLLM finished as "abort" (the replica stopped the request, or the engine did) raises
    `RequestAborted`, and one it finished as "error" a 503: an OpenAI client must never see a
    truncated answer with a finish reason outside OpenAI's set."""
    first = True
    prompt_tokens = completion_tokens = 0
    try:
        async for step in steps:
            reasons = {sample.finish_reason for sample in step.samples}
            if "abort" in reasons:
                raise RequestAborted("The request was stopped before it finished; retry it.")
            if "error" in reasons:  # vLLM's internal failure of one request
                raise ServiceUnavailable("The engine failed this request; retry it.", code="engine_error")
            prompt_tokens = step.prompt_token_count
            produced = sum(len(sample.token_ids) for sample in step.samples)
            if first and produced:
                metrics.first_token(model, time.perf_counter() - started)
                first = False
            completion_tokens += produced
            yield step
    finally:
        try:
            metrics.tokens(model, prompt_tokens, completion_tokens)
        except Exception:  # metrics must never replace the request's own outcome
            logger.exception("recording token metrics failed")


class Serving:
    """What chat and text completion serving share: the engine, limits, and observed generation."""

    def __init__(
        self,
        engine: Engine,
        model_id: str,
        limits: RequestLimits,
        vocab_size: int | None = None,
        metrics: EngineMetrics | None = None,
    ):
        self.engine = engine
        self.model_id = model_id
        self.limits = limits
        self.vocab_size = vocab_size
        self.metrics = metrics or NoMetrics()
        self._prepare_thread: ThreadPoolExecutor | None = None  # made on first use
        self._prepare_jobs = 0

    async def _off_loop(self, prepare: Callable[[R], P], request: R, text_chars: int) -> P:
        """`prepare(request)` (chat template, tokenizer, validation), inline when small.

        A long prompt (a 128k-context model's) takes the tokenizer 100 ms or more, which would
        stall every other stream of this replica, so it runs in one worker thread; while such a
        job is pending, small ones queue behind it there too, so that the request tokenizer is
        never used by two threads at once."""
        if text_chars < PREPARE_IN_THREAD_CHARS and self._prepare_jobs == 0:
            return prepare(request)
        if self._prepare_thread is None:
            self._prepare_thread = ThreadPoolExecutor(1, thread_name_prefix=f"prepare-{self.model_id}")
        self._prepare_jobs += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._prepare_thread, prepare, request)
        finally:
            self._prepare_jobs -= 1

    def _check_n(self, n: int) -> None:
        if n > self.limits.max_n:
            raise InvalidRequest(f"n may be at most {self.limits.max_n}", param="n")

    def _generate(
        self,
        prompt: list[int],
        sampling: SamplingSpec,
        request_id: str,
        trace_headers: TraceHeaders | None = None,
    ) -> AsyncIterator[EngineStep]:
        started = time.perf_counter()
        # Untraced requests call the engine exactly as before tracing existed.
        steps = (
            self.engine.generate(prompt, sampling, request_id)
            if trace_headers is None
            else self.engine.generate(prompt, sampling, request_id, trace_headers)
        )
        return observed(steps, self.metrics, self.model_id, started)
