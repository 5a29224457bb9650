"""OpenAI chat completions on top of an `Engine`: templating, sampling, reasoning, usage, chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from deployments.model.serving.common import Serving
from deployments.model.serving.tool_calls import ChoiceTools
from serve_app.engine_api import ReasoningSplitter, SampleDelta, SamplingSpec
from serve_app.engine_api import TokenLogprob as EngineLogprob
from serve_app.errors import InvalidRequest
from serve_app.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    DeltaMessage,
    TokenLogprob,
    TopLogprob,
    Usage,
    now,
)
from serve_app.tracing import TraceHeaders


@dataclass
class ChoiceState:
    """What one choice has produced so far."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    splitter: ReasoningSplitter | None = None
    tools: ChoiceTools | None = None
    answer: str = ""  # the text after reasoning, which tool parsers read


def to_wire_logprobs(entries: list[EngineLogprob]) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            token=entry.token,
            logprob=entry.logprob,
            bytes=list(entry.token.encode()),
            top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in entry.top],
        )
        for entry in entries
    ]


class ChatServing(Serving):
    """Serves chat completions for one model. Runs inside the model's Ray Serve replica."""

    def _prepare(self, request: ChatCompletionRequest) -> tuple[list[int], SamplingSpec]:
        if len(request.messages) > self.limits.max_messages:
            raise InvalidRequest(f"at most {self.limits.max_messages} messages are allowed", param="messages")
        self._check_n(request.n)
        if request.tool_mode() == "auto" and self.engine.tool_parser_name is None:
            raise InvalidRequest(
                f"Model {request.model} has no tool-call parser, so it cannot choose tools itself "
                '(tool_choice "auto"); use tool_choice "required" or name a function, which work '
                "on every model through constrained decoding.",
                param="tools",
                code="tool_choice_unsupported",
            )
        prompt = self.engine.chat_prompt(request.template_messages(), request.tool_dicts())
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        sampling = request.to_sampling_spec(
            prompt_tokens=len(prompt),
            max_model_len=self.engine.max_model_len,
            logprobs=logprobs,
            vocab_size=self.vocab_size,
            structured=request.structured_output(),
        )
        return prompt, sampling

    def _splitter(self, request: ChatCompletionRequest) -> ReasoningSplitter | None:
        # Constrained output (a forced call, response_format) is the answer from its first token:
        # a reasoning parser would take it all for unfinished reasoning.
        return None if request.structured_output() is not None else self.engine.reasoning_splitter()

    def _choice_tools(self, request: ChatCompletionRequest) -> ChoiceTools:
        mode = request.tool_mode()
        parser = self.engine.tool_parser(request.tool_dicts() or []) if mode == "auto" else None
        return ChoiceTools(
            mode, request.tool_choice, parser, json_output=request.structured_output() is not None
        )

    async def create(
        self, request: ChatCompletionRequest, request_id: str, trace_headers: TraceHeaders | None = None
    ) -> ChatCompletionResponse:
        prompt, sampling = await self._off_loop(self._prepare, request, request.text_chars())
        choices = [ChoiceState() for _ in range(request.n)]
        prompt_tokens = len(prompt)
        async for step in self._generate(prompt, sampling, request_id, trace_headers):
            prompt_tokens = step.prompt_token_count
            for sample in step.samples:
                state = choices[sample.index]
                state.text += sample.text
                state.token_ids.extend(sample.token_ids)
                state.finish_reason = sample.finish_reason or state.finish_reason
                if sample.logprobs:
                    state.logprobs.extend(to_wire_logprobs(sample.logprobs))
        wire_choices = []
        for index, state in enumerate(choices):
            splitter = self._splitter(request)
            reasoning, content = splitter.split(state.text) if splitter else (None, state.text)
            content, calls, finish = self._choice_tools(request).whole(content, state.finish_reason)
            wire_choices.append(
                ChatChoice(
                    index=index,
                    message=AssistantMessage(content=content, reasoning_content=reasoning, tool_calls=calls),
                    finish_reason=finish,
                    logprobs=ChatLogprobs(content=state.logprobs) if request.logprobs else None,
                )
            )
        completion_tokens = sum(len(state.token_ids) for state in choices)
        return ChatCompletionResponse(
            id=request_id,
            model=request.model,
            choices=wire_choices,
            usage=Usage.counted(prompt_tokens, completion_tokens),
        )

    async def stream(
        self, request: ChatCompletionRequest, request_id: str, trace_headers: TraceHeaders | None = None
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Yield OpenAI chunks. Validation errors raise before the first chunk is produced."""
        prompt, sampling = await self._off_loop(self._prepare, request, request.text_chars())
        return self._stream(request, request_id, prompt, sampling, trace_headers)

    async def _stream(
        self,
        request: ChatCompletionRequest,
        request_id: str,
        prompt: list[int],
        sampling: SamplingSpec,
        trace_headers: TraceHeaders | None,
    ) -> AsyncIterator[ChatCompletionChunk]:
        created = now()
        choices = [
            ChoiceState(splitter=self._splitter(request), tools=self._choice_tools(request))
            for _ in range(request.n)
        ]

        def chunk(choice_list: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=request_id, created=created, model=request.model, choices=choice_list, usage=usage
            )

        # An answer that may be tool calls starts without content, so that clients assembling the
        # stream end with `content: null` when only calls follow.
        opening = "" if request.tool_mode() == "none" else None
        yield chunk(
            [
                ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=opening))
                for i in range(request.n)
            ]
        )
        prompt_tokens = len(prompt)
        async for step in self._generate(prompt, sampling, request_id, trace_headers):
            prompt_tokens = step.prompt_token_count
            deltas = (self._delta(choices[s.index], s, request.logprobs) for s in step.samples)
            out = [c for c in deltas if c is not None]
            if out:
                yield chunk(out)
        if request.include_usage():
            completion_tokens = sum(len(state.token_ids) for state in choices)
            yield chunk(
                [],
                Usage.counted(prompt_tokens, completion_tokens),
            )

    @staticmethod
    def _delta(state: ChoiceState, sample: SampleDelta, with_logprobs: bool) -> ChatChunkChoice | None:
        previous_text, previous_ids = state.text, list(state.token_ids)
        state.text += sample.text
        state.token_ids.extend(sample.token_ids)
        if state.splitter is not None:
            reasoning, content = state.splitter.split_delta(
                previous_text, state.text, sample.text, previous_ids, state.token_ids, list(sample.token_ids)
            )
        else:
            reasoning, content = None, sample.text
        calls = None
        if state.tools is not None:
            previous_answer = state.answer
            state.answer += content or ""
            content, deltas = state.tools.delta(
                previous_answer,
                state.answer,
                content or "",
                previous_ids,
                state.token_ids,
                list(sample.token_ids),
                sample.finish_reason,
            )
            calls = deltas or None
        finish = state.tools.finish_reason(sample.finish_reason) if state.tools else sample.finish_reason
        if not reasoning and not content and not calls and finish is None:
            return None
        logprobs = ChatLogprobs(content=to_wire_logprobs(sample.logprobs or [])) if with_logprobs else None
        return ChatChunkChoice(
            index=sample.index,
            delta=DeltaMessage(content=content, reasoning_content=reasoning, tool_calls=calls),
            finish_reason=finish,
            logprobs=logprobs,
        )
