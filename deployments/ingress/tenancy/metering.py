"""Model calls charged to the caller's key: every call, whether the request's own or a pipeline
step, is checked against the key's tokens before it starts and charged its usage when it ends.

The request's `Admission` travels in a context variable set by the HTTP guard, so the service and
the pipelines need not know about quotas. It also carries the key's priority tier: to the engine
(vLLM's request priority) and to the model's `PriorityGate`, where tenant requests wait by tier.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any, TypeVar

from opentelemetry.trace import Tracer

from deployments.ingress.model_client import HandleModelClient
from deployments.ingress.tenancy.admission import PriorityGate
from deployments.ingress.tenancy.quota import Admission, current_admission
from serve_app.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    StreamOptions,
)
from serve_app.tracing import ended

R = TypeVar("R", ChatCompletionRequest, CompletionRequest)
USAGE_MARK = '"usage":{'


def _prepare(request: R, admission: Admission) -> R:
    admission.check_tokens()
    if admission.principal is not None:
        request.priority = admission.principal.priority
    return request


def usage_of_events(item: str, drop_usage_chunk: bool) -> tuple[str, int]:
    """Tokens reported by the usage chunk among an item's SSE events; the item without that chunk
    if the client did not ask for usage (we asked on its behalf)."""
    if USAGE_MARK not in item:
        return item, 0
    kept, total = [], 0
    for event in item.split("\n\n"):
        if USAGE_MARK in event and event.startswith("data: {"):
            payload: dict[str, Any] = json.loads(event[len("data: ") :])
            usage = payload.get("usage") or {}
            total += int(usage.get("total_tokens", 0))
            if drop_usage_chunk and not payload.get("choices"):
                continue
        kept.append(event)
    return "\n\n".join(kept), total


class MeteredModelClient(HandleModelClient):
    """`HandleModelClient` that charges the current request's key for what each call spends, and
    makes tenant requests (keys-file keys) wait their turn at the model's gate, by tier. The Ray
    call starts only once the gate lets it through."""

    def __init__(
        self, model_id: str, handle: Any, gate: PriorityGate | None = None, tracer: Tracer | None = None
    ):
        super().__init__(model_id, handle, tracer)
        self.gate = gate

    def _slot(self, admission: Admission) -> AbstractAsyncContextManager[None]:
        principal = admission.principal
        if self.gate is None or principal is None or principal.legacy:
            return nullcontext()
        if self.tracer is None:
            return self.gate.slot(principal.priority)
        return self._traced_slot(self.gate, principal.priority, self.tracer)

    @asynccontextmanager
    async def _traced_slot(self, gate: PriorityGate, priority: int, tracer: Tracer) -> AsyncIterator[None]:
        """The gate's slot, its wait a span of its own (a sibling before the model call's)."""
        span = tracer.start_span(
            "admission.gate",
            attributes={
                "gen_ai.request.model": self.model_id,
                "inference.priority": priority,
                "inference.gate.in_use": gate.in_use,
                "inference.gate.waiting": gate.waiting,
            },
        )
        with ended(span):
            await gate.acquire(priority)
        try:
            yield
        finally:
            gate.release()

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> ChatCompletionResponse:
        admission = current_admission.get()
        request = _prepare(request, admission)
        async with self._slot(admission):
            response = await super().chat(request, request_id)
        await admission.charge(response.usage.total_tokens)
        return response

    async def completion(self, request: CompletionRequest, request_id: str) -> CompletionResponse:
        admission = current_admission.get()
        request = _prepare(request, admission)
        async with self._slot(admission):
            response = await super().completion(request, request_id)
        await admission.charge(response.usage.total_tokens)
        return response

    def chat_chunks(
        self, request: ChatCompletionRequest, request_id: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        admission = current_admission.get()
        request = _prepare(request, admission)
        return self._charged_chunks(
            lambda: HandleModelClient.chat_chunks(self, request, request_id), admission
        )

    async def _charged_chunks(
        self, start: Callable[[], AsyncIterator[ChatCompletionChunk]], admission: Admission
    ) -> AsyncIterator[ChatCompletionChunk]:
        spent = 0
        async with self._slot(admission):
            try:
                async for chunk in start():
                    if chunk.usage is not None:
                        spent = chunk.usage.total_tokens
                    yield chunk
            finally:
                await admission.charge(spent)

    def chat_sse(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[str]:
        admission = current_admission.get()
        forced = self._ask_usage(request, admission)
        request = _prepare(request, admission)
        return self._charged_sse(
            lambda: HandleModelClient.chat_sse(self, request, request_id), admission, forced
        )

    def completion_sse(self, request: CompletionRequest, request_id: str) -> AsyncIterator[str]:
        admission = current_admission.get()
        forced = self._ask_usage(request, admission)
        request = _prepare(request, admission)
        return self._charged_sse(
            lambda: HandleModelClient.completion_sse(self, request, request_id), admission, forced
        )

    @staticmethod
    def _ask_usage(request: ChatCompletionRequest | CompletionRequest, admission: Admission) -> bool:
        """A stream's tokens are known from its usage chunk: ask for it if the client did not."""
        if admission.quota is None or request.include_usage():
            return False
        request.stream_options = StreamOptions(include_usage=True)
        return True

    async def _charged_sse(
        self, start: Callable[[], AsyncIterator[str]], admission: Admission, forced: bool
    ) -> AsyncIterator[str]:
        spent = 0
        async with self._slot(admission):
            try:
                async for item in start():
                    if admission.quota is not None:
                        item, tokens = usage_of_events(item, forced)
                        spent += tokens
                        if not item.strip():
                            continue
                    yield item
            finally:
                await admission.charge(spent)
