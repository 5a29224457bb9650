"""Fakes for the unit suite. Each stands in for something that needs Ray or vLLM in production:

- FakeEngine: the `Engine` protocol of serve_app/serving/engine_api.py (deterministic tokens).
- FakeReasoningSplitter: a `<think>...</think>` splitter like vLLM's deepseek_r1 parser.
- FakeModelClient: the `ModelClient` protocol (plus the HandleModelClient extras the service uses).
- FakeDirectory: the ModelDirectory deployment handle (`.remote` returns an awaitable).
- FakeMetrics: records every metrics call.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

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
from serve_app.serving.engine_api import EngineStep, SampleDelta, SamplingSpec, TokenLogprob
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

    async def start(self) -> None:
        self.running = True

    async def shutdown(self) -> None:
        self.running = False

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

    @property
    def tool_parser_name(self) -> str | None:
        return "fake" if self.tool_parser_factory else None

    def tool_parser(self, tools: list[dict[str, Any]]) -> Any:
        return self.tool_parser_factory(tools) if self.tool_parser_factory else None

    @staticmethod
    def token_id(piece: str) -> int:
        return 100 + sum(map(ord, piece)) % 800

    async def generate(
        self, prompt_token_ids: list[int], sampling: SamplingSpec, request_id: str
    ) -> AsyncIterator[EngineStep]:
        self.calls.append(FakeGenerateCall(list(prompt_token_ids), sampling, request_id))
        scripts = [list(self.outputs[i % len(self.outputs)]) for i in range(sampling.n)]
        emitted = [script[: sampling.max_tokens] for script in scripts]
        longest = max(len(pieces) for pieces in emitted)
        for position in range(longest):
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
                prompt_token_count=len(prompt_token_ids), samples=samples, finished=position == longest - 1
            )

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


class FakeRemoteMethod:
    """Like a DeploymentHandle method: `.remote(...)` returns an awaitable; calls are recorded."""

    def __init__(self, fn: Callable[..., Any]):
        self._fn = fn
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> Awaitable[Any]:
        self.calls.append(args)

        async def call() -> Any:
            return self._fn(*args)

        return call()


class FakeDirectory:
    """Scripted model states: each `all_status` call takes the next state of each model's script
    (the last state repeats). `set_desired` records the call and updates `desired`."""

    def __init__(self, states: dict[str, str | list[str]], errors: dict[str, str] | None = None):
        self.scripts = {m: [s] if isinstance(s, str) else list(s) for m, s in states.items()}
        self.errors = errors or {}
        self.desired = dict.fromkeys(states, "loaded")
        self.set_desired = FakeRemoteMethod(self._set_desired)
        self.all_status = FakeRemoteMethod(self._all_status)

    def _set_desired(self, model_id: str, desired: str) -> None:
        self.desired[model_id] = desired

    def _all_status(self) -> dict[str, dict[str, Any]]:
        result = {}
        for model_id, script in self.scripts.items():
            state = script.pop(0) if len(script) > 1 else script[0]
            result[model_id] = {
                "desired": self.desired[model_id],
                "state": state,
                "replicas": {state: 1},
                "error": self.errors.get(model_id),
            }
        return result


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
