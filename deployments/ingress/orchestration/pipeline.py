"""Multi-model pipelines composed over `ModelClient`s: critique (draft -> critique -> revise) and
ensemble (candidates answer concurrently, a judge picks with a stated reason).

A pipeline is an async generator of events. The non-streaming response and the SSE stream are two
renderings of the same event sequence, so both modes run exactly the same steps.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from opentelemetry.trace import Tracer

from deployments.ingress.model_client import ModelClient
from deployments.ingress.orchestration.prompts import (
    answer_text,
    critique_messages,
    finalize_messages,
    judge_messages,
    revision_messages,
)
from deployments.ingress.orchestration.step_spans import end_step_span, fail_step_span, start_step_span
from deployments.ingress.orchestration.verdict import (
    PICK_MAX_TOKENS,
    VERDICT_MAX_TOKENS,
    parse_verdict,
    parse_winner,
    pick_schema,
    verdict_schema,
)
from deployments.model.serving.tool_calls import to_delta
from serve_app.errors import ServiceError, UpstreamTimeout, to_service_error
from serve_app.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    OrchestrationInfo,
    OrchestrationStep,
    StopReason,
    StreamOptions,
    Usage,
)
from serve_app.tools import CallAssembler, JsonSchemaFormat, ResponseFormat, ToolCallDelta
from serve_app.tracing import current

# Sampling fields a pipeline step inherits from the client's request: the request's own mapping
# (protocol.SamplingFields.SAMPLING) and output limit, less what pipelines refuse (n) and what
# means something else on another model (logit_bias: token ids of one vocabulary).
INHERITED_FIELDS = tuple(
    field
    for field in (*ChatCompletionRequest.SAMPLING, *ChatCompletionRequest.OUTPUT_LIMIT)
    if field not in ("n", *ChatCompletionRequest.PER_MODEL)
)
# What a critic or judge step inherits: sampling only, never the output limits or stop sequences
# (its JSON must complete) nor the caller's tools and response_format (they shape the final answer).
VERDICT_INHERITED_FIELDS = tuple(
    field
    for field in INHERITED_FIELDS
    if field not in (*ChatCompletionRequest.OUTPUT_LIMIT, "stop", "min_tokens", "ignore_eos")
)
# The caller's output contract; it applies to the step that produces the final answer.
CONTRACT_FIELDS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")


@dataclass
class StepStarted:
    role: str
    model: str
    round: int


@dataclass
class StepFinished:
    step: OrchestrationStep


@dataclass
class FinalDelta:
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


Event = StepStarted | StepFinished | FinalDelta


logger = logging.getLogger("ray.serve")

# A step whose model call fails because its replica was going away (and that sent the caller
# nothing) is tried again after each of these pauses, on whichever replica Serve routes it to, within
# the step's deadline. They add up to about the time a model replica replaced by a redeploy needs to
# serve again on a CPU node, so that a redeploy does not fail the pipelines running through it.
STEP_RETRY_PAUSES_S = (1.0, 2.0, 4.0, 8.0, 15.0)
RESTART_CODES = frozenset({"model_restarting", "engine_dead", "replica_died", "request_aborted"})


class Pipeline:
    mode = "single"

    def __init__(
        self,
        request: ChatCompletionRequest,
        request_id: str,
        step_timeout_s: float,
        *,
        tracer: Tracer | None = None,
    ):
        self.tracer = tracer  # None: untraced; else each step is a span under the current one
        self.request = request
        self.request_id = request_id
        self.step_timeout_s = step_timeout_s
        self.steps: list[OrchestrationStep] = []
        self.started = time.perf_counter()
        self.stop_reason: StopReason = "single"
        self.reason: str | None = None
        self.final: OrchestrationStep | None = None
        self._call_numbers = itertools.count(1)  # unique sub-request ids, also for concurrent steps

    def events(self, stream_final: bool) -> AsyncIterator[Event]:
        raise NotImplementedError

    def has_contract(self) -> bool:
        """Whether the caller asked for tools or a response format (for the final answer)."""
        return bool(self.request.tools) or self.request.response_format is not None

    def step_request(
        self, client: ModelClient, messages: list[ChatMessage], stream: bool, contract: bool = False
    ) -> ChatCompletionRequest:
        fields = INHERITED_FIELDS + (CONTRACT_FIELDS if contract else ())
        inherited = {name: getattr(self.request, name) for name in fields}
        return ChatCompletionRequest(
            model=client.model_id,
            messages=messages,
            stream=stream,
            stream_options=StreamOptions(include_usage=True) if stream else None,
            **inherited,
        )

    def decision_request(
        self, client: ModelClient, messages: list[ChatMessage], name: str, schema: dict, max_tokens: int
    ) -> ChatCompletionRequest:
        """A critic's or judge's request: its answer is decoded under `schema`."""
        inherited = {field: getattr(self.request, field) for field in VERDICT_INHERITED_FIELDS}
        return ChatCompletionRequest(
            model=client.model_id,
            messages=messages,
            max_tokens=max_tokens,
            response_format=ResponseFormat(
                type="json_schema",
                json_schema=JsonSchemaFormat.model_validate({"name": name, "schema": schema, "strict": True}),
            ),
            **inherited,
        )

    def _step_error(self, exc: BaseException) -> ServiceError:
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"timed out after {self.step_timeout_s:g}s")
        return to_service_error(exc, request_id=self.request_id)

    @staticmethod
    def _fail(error: ServiceError, role: str, model: str, round_: int) -> ServiceError:
        error.message = f"The {role} step (round {round_}, model {model}) failed: {error.message}"
        error.args = (error.message,)
        return error

    async def run_step(
        self,
        role: str,
        client: ModelClient,
        messages: list[ChatMessage],
        round_: int,
        stream: bool = False,
        *,
        contract: bool = False,
        request: ChatCompletionRequest | None = None,
    ) -> AsyncIterator[Event]:
        """Yield the step's events; on success the step is appended to `self.steps`.

        `contract`: the step answers under the caller's tools and response_format (a final answer).
        `request`: the step's own request instead (a critic's or judge's structured decision)."""
        yield StepStarted(role, client.model_id, round_)
        started = time.perf_counter()
        span = start_step_span(
            self.tracer, self.mode, role, client.model_id, round_, len(self.steps), self.request_id
        )
        # The deadline covers waiting on the model only, never the time our consumer spends
        # between chunks: a slow client must not turn into a step timeout.
        deadline = asyncio.get_running_loop().time() + self.step_timeout_s
        try:
            for attempt in itertools.count():
                sub_id = f"{self.request_id}-{next(self._call_numbers)}"
                content, reasoning, finish, usage = "", "", None, Usage()
                calls = CallAssembler()
                tool_calls = None
                sent = False  # whether a delta of this step reached the caller
                try:
                    if stream:
                        step_request = request or self.step_request(client, messages, True, contract)
                        chunks = aiter(client.chat_chunks(step_request, sub_id))
                        while True:
                            try:
                                # The step is current while its model call runs, never across a yield.
                                with current(span):
                                    async with asyncio.timeout_at(deadline):
                                        chunk = await anext(chunks)
                            except StopAsyncIteration:
                                break
                            usage = chunk.usage or usage
                            for choice in chunk.choices:
                                finish = choice.finish_reason or finish
                                delta = choice.delta
                                content += delta.content or ""
                                reasoning += delta.reasoning_content or ""
                                for call in delta.tool_calls or []:
                                    calls.add(call)
                                if delta.content or delta.reasoning_content or delta.tool_calls:
                                    sent = True
                                    yield FinalDelta(delta.content, delta.reasoning_content, delta.tool_calls)
                        tool_calls = calls.calls()
                    else:
                        step_request = request or self.step_request(client, messages, False, contract)
                        with current(span):
                            async with asyncio.timeout_at(deadline):
                                response = await client.chat(step_request, sub_id)
                        message = response.choices[0].message
                        content, reasoning = message.content or "", message.reasoning_content or ""
                        finish, usage = response.choices[0].finish_reason, response.usage
                        tool_calls = message.tool_calls
                    break
                except Exception as exc:
                    error = self._step_error(exc)
                    pause = STEP_RETRY_PAUSES_S[attempt] if attempt < len(STEP_RETRY_PAUSES_S) else None
                    loop_time = asyncio.get_running_loop().time()
                    if (
                        sent
                        or error.code not in RESTART_CODES
                        or pause is None
                        or loop_time + pause >= deadline
                    ):
                        raise self._fail(error, role, client.model_id, round_) from None
                    # The step's replica was stopping (a redeploy, a scale-down) or its engine died, and
                    # nothing of it reached the caller: the same step again goes to a live replica.
                    logger.info(
                        "request %s: %s step got %s; trying again in %g s",
                        self.request_id,
                        role,
                        error.code,
                        pause,
                    )
                    await asyncio.sleep(pause)
        except BaseException as exc:  # a failure, or the caller closing the stream
            fail_step_span(span, exc)
            raise
        step = OrchestrationStep(
            role=role,
            model=client.model_id,
            round=round_,
            content=content,
            reasoning_content=reasoning or None,
            usage=usage,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            finish_reason=finish,
            tool_calls=tool_calls,
        )
        self.steps.append(step)
        # Ended before the step's result goes to the caller: the step, not what follows it.
        end_step_span(span, usage, attempt + 1, finish)
        yield StepFinished(step)

    def usage(self) -> Usage:
        total = Usage()
        for step in self.steps:
            total = total + step.usage
        return total

    def info(self) -> OrchestrationInfo:
        return OrchestrationInfo(
            mode=self.mode,
            models_used=[step.model for step in self.steps],
            rounds=max((step.round for step in self.steps), default=0),
            stop_reason=self.stop_reason,
            steps=self.steps,
            total_latency_ms=round((time.perf_counter() - self.started) * 1000, 3),
            reason=self.reason,
        )


class CritiquePipeline(Pipeline):
    """Draft, then up to `rounds` of critique + revision, stopping early when the critic approves."""

    mode = "critique"

    def __init__(
        self,
        request,
        request_id,
        step_timeout_s,
        generator: ModelClient,
        critic: ModelClient,
        rounds: int,
        *,
        tracer: Tracer | None = None,
    ):
        super().__init__(request, request_id, step_timeout_s, tracer=tracer)
        self.generator, self.critic, self.rounds = generator, critic, rounds

    def _critic_request(self, task: list[ChatMessage], draft: OrchestrationStep) -> ChatCompletionRequest:
        messages = critique_messages(task, answer_text(draft.content, draft.tool_calls))
        return self.decision_request(self.critic, messages, "verdict", verdict_schema(), VERDICT_MAX_TOKENS)

    async def events(self, stream_final: bool) -> AsyncIterator[Event]:
        """Drafts are free text; the caller's contract shapes only the answer that is returned: the
        last round's revision, or, when the critic approves earlier, one finalizing step."""
        task = self.request.messages
        contract = self.has_contract()
        async for event in self.run_step("generator", self.generator, task, 0):
            yield event
        draft = self.steps[-1]
        for round_ in range(1, self.rounds + 1):
            problems: str | None = None
            async for event in self.run_step(
                "critic", self.critic, [], round_, request=self._critic_request(task, draft)
            ):
                if isinstance(event, StepFinished):
                    event.step.verdict, problems = parse_verdict(event.step.content)
                yield event
            critique = self.steps[-1]
            draft_text = answer_text(draft.content, draft.tool_calls)
            if critique.verdict == "approved":
                self.stop_reason = "approved"
                if contract:
                    async for event in self.run_step(
                        "generator",
                        self.generator,
                        finalize_messages(task, draft_text),
                        round_,
                        stream_final,
                        contract=True,
                    ):
                        yield event
                    draft = self.steps[-1]
                elif stream_final:
                    yield FinalDelta(draft.content, draft.reasoning_content)
                self.final = draft
                return
            last = round_ == self.rounds
            messages = revision_messages(task, draft_text, problems or "")
            async for event in self.run_step(
                "generator",
                self.generator,
                messages,
                round_,
                last and stream_final,
                contract=last and contract,
            ):
                if isinstance(event, FinalDelta) and not last:
                    continue
                yield event
            draft = self.steps[-1]
        self.stop_reason, self.final = "max_rounds", draft


class EnsemblePipeline(Pipeline):
    """Candidates answer the task concurrently; a judge picks the best and says why."""

    mode = "ensemble"

    def __init__(
        self,
        request,
        request_id,
        step_timeout_s,
        candidates: Sequence[ModelClient],
        judge: ModelClient,
        *,
        tracer: Tracer | None = None,
    ):
        super().__init__(request, request_id, step_timeout_s, tracer=tracer)
        self.candidates, self.judge = candidates, judge

    async def _collect(self, client: ModelClient) -> list[Event]:
        # Any candidate may become the final answer, so each answers under the caller's contract.
        steps = self.run_step("candidate", client, self.request.messages, 1, contract=True)
        return [event async for event in steps]

    async def events(self, stream_final: bool) -> AsyncIterator[Event]:
        for client in self.candidates:
            yield StepStarted("candidate", client.model_id, 1)
        # A TaskGroup cancels the other candidates as soon as one fails: no orphaned generation.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._collect(c)) for c in self.candidates]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        results = [task.result() for task in tasks]
        answers = []
        for events in results:
            finished = [e for e in events if isinstance(e, StepFinished)]
            yield finished[0]
            answers.append(finished[0].step)
        # Steps finish in completion order; keep them in candidate order for the response.
        self.steps.sort(
            key=lambda s: (
                [c.model_id for c in self.candidates].index(s.model) if s.role == "candidate" else 99
            )
        )
        listed = [answer_text(a.content, a.tool_calls) for a in answers]
        judge_request = self.decision_request(
            self.judge,
            judge_messages(self.request.messages, listed),
            "pick",
            pick_schema(len(answers)),
            PICK_MAX_TOKENS,
        )
        async for event in self.run_step("judge", self.judge, [], 2, request=judge_request):
            yield event
        judge_step = self.steps[-1]
        winner, reason = parse_winner(judge_step.content, len(answers))
        if winner is None:
            winner = 0
            reason = "The judge named no valid winner; the first candidate was kept."
        judge_step.verdict = f"winner:{answers[winner].model}"
        self.stop_reason, self.reason, self.final = "judged", reason, answers[winner]
        if stream_final:
            final = answers[winner]
            calls = [to_delta(call, i) for i, call in enumerate(final.tool_calls or [])] or None
            yield FinalDelta(final.content or None, final.reasoning_content, calls)
