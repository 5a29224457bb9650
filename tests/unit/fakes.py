"""Fakes for the unit suite. Each stands in for something that needs Ray or vLLM in production:

- FakeEngine: the `Engine` protocol of serve_app/engine_api.py (deterministic tokens;
  optionally pausing mid-generation until `release()` or `abort_all()`, or failing to start).
- FakeReasoningSplitter: a `<think>...</think>` splitter like vLLM's deepseek_r1 parser.
- FakeModelClient: the `ModelClient` protocol (plus the HandleModelClient extras the service uses).
- FakeDirectory: the ModelDirectory deployment handle (`.remote` returns an awaitable).
- FakeDesiredStateStore: the ModelDirectory's `DesiredStateStore` (Ray's GCS key-value store),
  which can be made to fail or to hold a read until released.
- FakeMetrics: records every metrics call.
- FakeClock: monotonic time and sleep that move only when told (drain budgets, stop timing).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from serve_app.contracts import DesiredState, ModelStatus
from serve_app.engine_api import EngineStep, SampleDelta, SamplingSpec, TokenLogprob
from serve_app.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    Usage,
)
from serve_app.sse import encode_event

THINK_START, THINK_END = "<think>", "</think>"

# ---------------------------------------------------------------- engine


class FakeReasoningSplitter:
    """Everything before `</think>` is reasoning, everything after it is the answer."""

    def split(self, text: str) -> tuple[str | None, str | None]:
        if THINK_END not in text:
            return text.replace(THINK_START, "") or None, None
        reasoning, content = text.split(THINK_END, 1)
        return reasoning.replace(THINK_START, "") or None, content or None

    def split_delta(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_ids: Sequence[int],
        current_ids: Sequence[int],
        delta_ids: Sequence[int],
    ) -> tuple[str | None, str | None]:
        if THINK_END in previous_text:
            return None, delta_text
        if THINK_END in current_text:
            before, after = delta_text.split(THINK_END, 1) if THINK_END in delta_text else ("", delta_text)
            return before.replace(THINK_START, "") or None, after or None
        return delta_text.replace(THINK_START, "") or None, None


@dataclass
class FakeGenerateCall:
    prompt_token_ids: list[int]
    sampling: SamplingSpec
    request_id: str
    trace_headers: Mapping[str, str] | None = None


@dataclass
class FakeEngine:
    """A deterministic engine. Choice `i` emits the pieces `outputs[i % len(outputs)]`, one token per
    piece, cut at `sampling.max_tokens` (finish_reason "length") or ending with `finish_reasons[i]`.

    Prompts: each chat message costs one header token plus one token per whitespace-separated word,
    and the generation prompt costs one more token.
    """

    max_model_len: int = 64
    outputs: Sequence[Sequence[str]] = (("Hello", " there", "!"),)
    finish_reasons: Sequence[str] = ("stop",)
    reasoning: bool = False
    calls: list[FakeGenerateCall] = field(default_factory=list)
    rendered: list[list[dict[str, Any]]] = field(default_factory=list)
    rendered_tools: list[list[dict[str, Any]] | None] = field(default_factory=list)
    # Makes the engine's tool-call parser (tests pass the adapter over a real vLLM parser).
    tool_parser_factory: Callable[[list[dict[str, Any]]], Any] | None = None
    running: bool = False
    # When set, each generation emits this many steps, then waits until `release()` or
    # `abort_all()`; after `abort_all()` it ends with one step whose samples finish as "abort"
    # (as vLLM does). Generations started after a release or an abort no longer pause.
    pause_after: int | None = None
    # Raised by `start()` when set (an engine that cannot come up).
    start_error: BaseException | None = None
    starts: int = 0
    shutdowns: int = 0
    aborted_all: int = 0  # how many times abort_all() was called
    clock: Callable[[], float] | None = None  # when set, each abort_all() time goes to aborted_at
    aborted_at: list[float] = field(default_factory=list)
    generating: int = 0  # generations open right now
    paused: int = 0  # generations waiting at `pause_after` right now
    # The Engine protocol's settable attribute: "fake" when a tool parser factory is given.
    tool_parser_name: str | None = field(default=None, init=False)
    _resume: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _abort_epoch: int = 0

    def __post_init__(self) -> None:
        self.tool_parser_name = "fake" if self.tool_parser_factory else None

    async def start(self) -> None:
        self.starts += 1
        if self.start_error is not None:
            raise self.start_error
        self.running = True

    async def shutdown(self) -> None:
        self.shutdowns += 1
        self.running = False

    def release(self) -> None:
        """Let paused generations run to their normal end."""
        self._resume.set()

    async def abort_all(self) -> int:
        self.aborted_all += 1
        if self.clock is not None:
            self.aborted_at.append(self.clock())
        self._abort_epoch += 1
        self._resume.set()
        return self.generating

    async def check_health(self) -> None:
        return None

    def is_running(self) -> bool:
        return self.running

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        self.rendered.append(messages)
        self.rendered_tools.append(tools)
        ids: list[int] = []
        for message in messages:
            ids.append(1)
            ids.extend(self.tokenize(message["content"] or ""))
        return [*ids, 2]

    def tokenize(self, text: str) -> list[int]:
        return [10 + sum(map(ord, word)) % 90 for word in text.split()]

    def reasoning_splitter(self) -> FakeReasoningSplitter | None:
        return FakeReasoningSplitter() if self.reasoning else None

    def tool_parser(self, tools: list[dict[str, Any]]) -> Any:
        return self.tool_parser_factory(tools) if self.tool_parser_factory else None

    @staticmethod
    def token_id(piece: str) -> int:
        return 100 + sum(map(ord, piece)) % 800

    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling: SamplingSpec,
        request_id: str,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[EngineStep]:
        self.calls.append(FakeGenerateCall(list(prompt_token_ids), sampling, request_id, trace_headers))
        self.generating += 1
        try:
            epoch = self._abort_epoch
            scripts = [list(self.outputs[i % len(self.outputs)]) for i in range(sampling.n)]
            emitted = [script[: sampling.max_tokens] for script in scripts]
            longest = max(len(pieces) for pieces in emitted)
            for position in range(longest):
                if position == self.pause_after and not self._resume.is_set():
                    self.paused += 1
                    try:
                        await self._resume.wait()
                    finally:
                        self.paused -= 1
                if self._abort_epoch != epoch:
                    aborted = [
                        SampleDelta(index=i, text="", token_ids=[], finish_reason="abort")
                        for i in range(sampling.n)
                    ]
                    yield EngineStep(prompt_token_count=len(prompt_token_ids), samples=aborted, finished=True)
                    return
                samples = []
                for index, pieces in enumerate(emitted):
                    if position >= len(pieces):
                        continue
                    finish = None
                    if position == len(pieces) - 1:
                        cut = len(scripts[index]) > sampling.max_tokens
                        finish = "length" if cut else self.finish_reasons[index % len(self.finish_reasons)]
                    piece = pieces[position]
                    samples.append(
                        SampleDelta(
                            index=index,
                            text=piece,
                            token_ids=[self.token_id(piece)],
                            finish_reason=finish,
                            logprobs=self._logprobs(piece, sampling),
                        )
                    )
                await asyncio.sleep(0)
                yield EngineStep(
                    prompt_token_count=len(prompt_token_ids),
                    samples=samples,
                    finished=position == longest - 1,
                )
        finally:
            self.generating -= 1

    @staticmethod
    def _logprobs(piece: str, sampling: SamplingSpec) -> list[TokenLogprob] | None:
        if sampling.logprobs is None:
            return None
        top = tuple((f"alt{k}", -1.0 - k) for k in range(sampling.logprobs))
        return [TokenLogprob(token=piece, logprob=-0.5, top=top)]

    async def abort(self, request_id: str) -> None:
        return None


# ---------------------------------------------------------------- model clients


@dataclass
class Reply:
    content: str
    _: KW_ONLY
    reasoning: str | None = None
    finish_reason: str = "stop"
    prompt_tokens: int = 10
    completion_tokens: int = 5

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


ReplySource = Sequence[Reply] | Callable[[ChatCompletionRequest], Reply]


class FakeModelClient:
    """Answers with scripted replies (the i-th call gets replies[i], the last one repeats).

    `before`, when set, is awaited at the start of every call (to coordinate concurrency tests);
    `delay_s` sleeps; `error` is raised instead of answering. Every request is recorded.
    """

    def __init__(
        self,
        model_id: str,
        replies: ReplySource | None = None,
        *,
        error: BaseException | None = None,
        delay_s: float = 0.0,
        before: Callable[[], Awaitable[None]] | None = None,
    ):
        self.model_id = model_id
        self.replies: ReplySource = replies if replies is not None else [Reply(f"answer of {model_id}")]
        self.error = error
        self.delay_s = delay_s
        self.before = before
        self.requests: list[tuple[ChatCompletionRequest | CompletionRequest, str]] = []
        self.cancelled = False
        self.finished = 0

    async def _answer(self, request: ChatCompletionRequest, request_id: str) -> Reply:
        self.requests.append((request, request_id))
        call_index = len(self.requests) - 1
        try:
            if self.before is not None:
                await self.before()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        self.finished += 1
        if callable(self.replies):
            return self.replies(request)
        return self.replies[min(call_index, len(self.replies) - 1)]

    @property
    def chat_requests(self) -> list[ChatCompletionRequest]:
        return [r for r, _ in self.requests if isinstance(r, ChatCompletionRequest)]

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> ChatCompletionResponse:
        reply = await self._answer(request, request_id)
        return ChatCompletionResponse(
            id=request_id,
            model=self.model_id,
            choices=[
                ChatChoice(
                    index=0,
                    message=AssistantMessage(content=reply.content, reasoning_content=reply.reasoning),
                    finish_reason=reply.finish_reason,
                )
            ],
            usage=reply.usage(),
        )

    async def chat_chunks(
        self, request: ChatCompletionRequest, request_id: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        reply = await self._answer(request, request_id)

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=request_id, created=0, model=self.model_id, choices=choices, usage=usage
            )

        yield chunk([ChatChunkChoice(index=0, delta=DeltaMessage(role="assistant", content=""))])
        for piece in words(reply.reasoning or ""):
            yield chunk([ChatChunkChoice(index=0, delta=DeltaMessage(reasoning_content=piece))])
        for piece in words(reply.content):
            yield chunk([ChatChunkChoice(index=0, delta=DeltaMessage(content=piece))])
        yield chunk([ChatChunkChoice(index=0, delta=DeltaMessage(), finish_reason=reply.finish_reason)])
        if request.include_usage():
            yield chunk([], reply.usage())

    async def chat_sse(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[str]:
        async for chunk in self.chat_chunks(request, request_id):
            yield encode_event(chunk)

    async def completion(self, request: CompletionRequest, request_id: str) -> CompletionResponse:
        self.requests.append((request, request_id))
        return CompletionResponse(
            id=request_id,
            model=self.model_id,
            choices=[CompletionChoice(index=0, text=f"completion of {self.model_id}", finish_reason="stop")],
            usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        )

    async def completion_sse(self, request: CompletionRequest, request_id: str) -> AsyncIterator[str]:
        response = await self.completion(request, request_id)
        yield f"data: {response.model_dump_json()}\n\n"


def words(text: str) -> list[str]:
    """Split text into streamable pieces (a word with its leading space) that join back to it exactly."""
    return re.findall(r"\s*\S+|\s+", text)


# ---------------------------------------------------------------- model directory


class FakeDirectory:
    """An `IngressDirectory` with scripted model states: each `all_status` call takes the next state
    of each model's script (the last state repeats). Calls are recorded; `set_desired` updates
    `desired`."""

    def __init__(self, states: dict[str, str | list[str]], errors: dict[str, str] | None = None):
        self.scripts = {m: [s] if isinstance(s, str) else list(s) for m, s in states.items()}
        self.errors = errors or {}
        self.desired: dict[str, DesiredState] = dict.fromkeys(states, "loaded")
        self.set_desired_calls: list[tuple[str, DesiredState]] = []
        self.all_status_calls = 0
        self.stopping: set[str] = set()

    async def set_desired(self, model_id: str, desired: DesiredState) -> None:
        self.set_desired_calls.append((model_id, desired))
        self.desired[model_id] = desired

    async def is_stopping(self, replica_id: str) -> bool:
        return replica_id in self.stopping

    async def all_status(self) -> dict[str, ModelStatus]:
        self.all_status_calls += 1
        result = {}
        for model_id, script in self.scripts.items():
            state = script.pop(0) if len(script) > 1 else script[0]
            result[model_id] = ModelStatus.model_validate(
                {
                    "desired": self.desired[model_id],
                    "state": state,
                    "replicas": {state: 1},
                    "error": self.errors.get(model_id),
                }
            )
        return result


class FakeStoreDown(ConnectionError):
    """What a FakeDesiredStateStore raises while `failing`."""


class FakeDesiredStateStore:
    """A `DesiredStateStore` in a dict, shared by the directories of one test (as the GCS is by
    the directory replicas of successive deploys). `failing` makes every call raise; `hold_reads`
    makes a read wait (after taking its snapshot) until `release_reads()`."""

    def __init__(self, stored: dict[str, str] | None = None):
        self.stored: dict[str, str] = dict(stored or {})
        self.failing = False
        self.hold_reads = False
        self.read_started = asyncio.Event()
        self._released = asyncio.Event()
        self.writes: list[tuple[str, str]] = []

    def release_reads(self) -> None:
        self._released.set()

    def _check(self) -> None:
        if self.failing:
            raise FakeStoreDown("GCS unavailable")

    async def read_all(self) -> dict[str, str]:
        self._check()
        snapshot = dict(self.stored)
        self.read_started.set()
        if self.hold_reads:
            await self._released.wait()
        return snapshot

    async def write(self, model_id: str, desired: DesiredState) -> None:
        self._check()
        self.writes.append((model_id, desired))
        self.stored[model_id] = desired

    async def delete(self, model_id: str) -> None:
        self._check()
        self.stored.pop(model_id, None)


# ---------------------------------------------------------------- metrics


class FakeMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args in self.calls if called == name]

    def request_finished(self, model: str, route: str, status: int, seconds: float) -> None:
        self.calls.append(("request_finished", (model, route, status, seconds)))

    def error(self, model: str, status: int, code: str) -> None:
        self.calls.append(("error", (model, status, code)))

    def pipeline_finished(self, mode: str, rounds: int, steps: list[tuple[str, str]]) -> None:
        self.calls.append(("pipeline_finished", (mode, rounds, steps)))

    def first_token(self, model: str, seconds: float) -> None:
        self.calls.append(("first_token", (model, seconds)))

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        self.calls.append(("tokens", (model, prompt, completion)))


# ---------------------------------------------------------------- time


class FakeClock:
    """Monotonic seconds that move only when something sleeps on this clock or the test says so.

    Pass the instance as `clock=` and its `sleep` as `sleep=`. In auto mode (the default) each
    `sleep(s)` moves time forward by `s` at once and yields one turn of the event loop; in manual
    mode a sleeper waits until the test moves time to its deadline with `advance`. `tick` is
    added before every reading (time that passes while the code under test works). Every sleep's
    duration is recorded in `sleeps`."""

    def __init__(self, now: float = 0.0, *, auto: bool = True, tick: float = 0.0):
        self.now = now
        self.auto = auto
        self.tick = tick
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.auto:
            self.now += max(0.0, seconds)
            await asyncio.sleep(0)
            return
        entry = (self.now + max(0.0, seconds), asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    @property
    def sleeping(self) -> int:
        """Sleepers waiting for time to move (manual mode)."""
        return sum(1 for _, future in self._sleepers if not future.done())

    async def advance(self, seconds: float, turns: int = 20) -> None:
        """Move time forward by `seconds`, waking each sleeper at its own deadline, in order, and
        giving the woken code `turns` loop turns to run (and perhaps sleep again) before the next."""
        target = self.now + seconds
        while True:
            due = [entry for entry in self._sleepers if entry[0] <= target and not entry[1].done()]
            if not due:
                break
            deadline, future = min(due, key=lambda entry: entry[0])
            self.now = max(self.now, deadline)
            future.set_result(None)
            for _ in range(turns):
                await asyncio.sleep(0)
        self.now = target
