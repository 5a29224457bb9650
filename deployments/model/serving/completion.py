"""OpenAI text completions (`/v1/completions`) on top of an `Engine`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from deployments.model.serving.common import Serving, check_token_ids, merge
from serve_app.engine_api import EngineStep, SamplingSpec, TokenLogprob
from serve_app.errors import InvalidRequest
from serve_app.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Usage,
    now,
)
from serve_app.tracing import TraceHeaders

MAX_PROMPTS = 16


@dataclass
class Prepared:
    prompts: list[list[int]]
    sampling: list[SamplingSpec]


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    result = CompletionLogprobs()
    for entry in entries:
        result.tokens.append(entry.token)
        result.token_logprobs.append(entry.logprob)
        result.top_logprobs.append(dict(entry.top) if entry.top else None)
        result.text_offset.append(offset)
        offset += len(entry.token)
    return result


class CompletionServing(Serving):
    """Serves text completions for one model. Runs inside the model's Ray Serve replica."""

    def _prepare(self, request: CompletionRequest) -> Prepared:
        raw = request.prompts()
        if len(raw) > MAX_PROMPTS:
            raise InvalidRequest(f"at most {MAX_PROMPTS} prompts per request", param="prompt")
        self._check_n(request.n)
        prompts: list[list[int]] = []
        for item in raw:
            if isinstance(item, str):
                prompts.append(self.engine.tokenize(item))
            else:
                check_token_ids(list(item), self.vocab_size)
                prompts.append(list(item))
        sampling = [
            request.to_sampling_spec(
                prompt_tokens=len(p),
                max_model_len=self.engine.max_model_len,
                logprobs=request.logprobs,
                vocab_size=self.vocab_size,
            )
            for p in prompts
        ]
        return Prepared(prompts, sampling)

    def _generators(
        self, prepared: Prepared, request_id: str, trace_headers: TraceHeaders | None
    ) -> list[AsyncIterator[EngineStep]]:
        return [
            self._generate(prompt, sampling, f"{request_id}-{i}", trace_headers)
            for i, (prompt, sampling) in enumerate(zip(prepared.prompts, prepared.sampling, strict=True))
        ]

    async def create(
        self, request: CompletionRequest, request_id: str, trace_headers: TraceHeaders | None = None
    ) -> CompletionResponse:
        prepared = await self._off_loop(self._prepare, request, request.text_chars())
        n = request.n
        texts = [""] * (len(prepared.prompts) * n)
        finish: list[str | None] = [None] * len(texts)
        logprobs: list[list[TokenLogprob]] = [[] for _ in texts]
        completion_tokens = 0
        prompt_tokens = {i: len(p) for i, p in enumerate(prepared.prompts)}
        async for prompt_index, step in merge(self._generators(prepared, request_id, trace_headers)):
            prompt_tokens[prompt_index] = step.prompt_token_count
            for sample in step.samples:
                slot = prompt_index * n + sample.index
                texts[slot] += sample.text
                finish[slot] = sample.finish_reason or finish[slot]
                logprobs[slot].extend(sample.logprobs or [])
                completion_tokens += len(sample.token_ids)
        choices = [
            CompletionChoice(
                index=i,
                text=texts[i],
                finish_reason=finish[i],
                logprobs=completion_logprobs(logprobs[i], 0) if request.logprobs is not None else None,
            )
            for i in range(len(texts))
        ]
        total_prompt = sum(prompt_tokens.values())
        return CompletionResponse(
            id=request_id,
            model=request.model,
            choices=choices,
            usage=Usage.counted(total_prompt, completion_tokens),
        )

    async def stream(
        self, request: CompletionRequest, request_id: str, trace_headers: TraceHeaders | None = None
    ) -> AsyncIterator[CompletionChunk]:
        prepared = await self._off_loop(self._prepare, request, request.text_chars())
        return self._stream(request, request_id, prepared, trace_headers)

    async def _stream(
        self,
        request: CompletionRequest,
        request_id: str,
        prepared: Prepared,
        trace_headers: TraceHeaders | None,
    ) -> AsyncIterator[CompletionChunk]:
        created = now()
        n = request.n
        offsets = [0] * (len(prepared.prompts) * n)
        completion_tokens = 0
        prompt_tokens = {i: len(p) for i, p in enumerate(prepared.prompts)}
        async for prompt_index, step in merge(self._generators(prepared, request_id, trace_headers)):
            prompt_tokens[prompt_index] = step.prompt_token_count
            choices = []
            for sample in step.samples:
                slot = prompt_index * n + sample.index
                completion_tokens += len(sample.token_ids)
                logprobs = None
                if request.logprobs is not None:
                    logprobs = completion_logprobs(sample.logprobs or [], offsets[slot])
                offsets[slot] += len(sample.text)
                if sample.text or sample.finish_reason:
                    choices.append(
                        CompletionChoice(
                            index=slot,
                            text=sample.text,
                            finish_reason=sample.finish_reason,
                            logprobs=logprobs,
                        )
                    )
            if choices:
                yield CompletionChunk(id=request_id, created=created, model=request.model, choices=choices)
        if request.include_usage():
            total_prompt = sum(prompt_tokens.values())
            yield CompletionChunk(
                id=request_id,
                created=created,
                model=request.model,
                choices=[],
                usage=Usage.counted(total_prompt, completion_tokens),
            )
