"""How the ingress talks to model deployments: a small protocol, and its Ray handle implementation.

Pipelines depend only on `ModelClient`, so unit tests drive them with fake clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from opentelemetry.trace import Span, SpanKind, Tracer

from serve_app.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from serve_app.tracing import TraceHeaders, ended, trace_headers

T = TypeVar("T")


class ModelClient(Protocol):
    """Everything the ingress asks of one model deployment: pipelines use the chunk stream, the
    single-model routes the SSE strings the replica already encoded (and batched)."""

    @property
    def model_id(self) -> str: ...

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> ChatCompletionResponse: ...

    def chat_chunks(
        self, request: ChatCompletionRequest, request_id: str
    ) -> AsyncIterator[ChatCompletionChunk]: ...

    def chat_sse(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[str]: ...

    async def completion(self, request: CompletionRequest, request_id: str) -> CompletionResponse: ...

    def completion_sse(self, request: CompletionRequest, request_id: str) -> AsyncIterator[str]: ...


class HandleModelClient:
    """A model deployment reached through its Ray Serve DeploymentHandle (no HTTP hop).

    With a tracer, each call is a client span (`chat <model>`) whose W3C context goes to the model
    replica as the call's `trace_headers` argument; without one, the calls are exactly the untraced
    ones (no span, no extra argument)."""

    def __init__(self, model_id: str, handle: Any, tracer: Tracer | None = None):
        self.model_id = model_id
        self.handle = handle
        self.tracer = tracer
        self._stream = handle.options(stream=True)

    def _call_span(self, operation: str, request_id: str, stream: bool) -> Span:
        assert self.tracer is not None
        return self.tracer.start_span(
            f"{operation} {self.model_id}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.system": "vllm",
                "gen_ai.request.model": self.model_id,
                "inference.request_id": request_id,
                "inference.stream": stream,
            },
        )

    async def _traced_call(
        self, operation: str, request_id: str, call: Callable[[TraceHeaders | None], Any]
    ) -> Any:
        with ended(self._call_span(operation, request_id, False)) as span:
            response = await call(trace_headers(span))
            if span is not None:
                record_usage(span, response.usage)
            return response

    async def _traced_stream(
        self, operation: str, request_id: str, start: Callable[[TraceHeaders | None], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        # Started when the caller first iterates, so the caller's current span is the parent.
        with ended(self._call_span(operation, request_id, True)) as span:
            async for item in start(trace_headers(span)):
                usage = getattr(item, "usage", None)
                if span is not None and usage is not None:
                    record_usage(span, usage)
                yield item

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> ChatCompletionResponse:
        if self.tracer is None:
            return await self.handle.chat_completion.remote(request, request_id)
        return await self._traced_call(
            "chat",
            request_id,
            lambda headers: self.handle.chat_completion.remote(request, request_id, trace_headers=headers),
        )

    def chat_chunks(
        self, request: ChatCompletionRequest, request_id: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        if self.tracer is None:
            return self._stream.chat_completion_stream.remote(request, request_id, encoded=False)
        return self._traced_stream(
            "chat",
            request_id,
            lambda headers: self._stream.chat_completion_stream.remote(
                request, request_id, encoded=False, trace_headers=headers
            ),
        )

    def chat_sse(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[str]:
        if self.tracer is None:
            return self._stream.chat_completion_stream.remote(request, request_id, encoded=True)
        return self._traced_stream(
            "chat",
            request_id,
            lambda headers: self._stream.chat_completion_stream.remote(
                request, request_id, encoded=True, trace_headers=headers
            ),
        )

    async def completion(self, request: CompletionRequest, request_id: str) -> CompletionResponse:
        if self.tracer is None:
            return await self.handle.completion.remote(request, request_id)
        return await self._traced_call(
            "text_completion",
            request_id,
            lambda headers: self.handle.completion.remote(request, request_id, trace_headers=headers),
        )

    def completion_sse(self, request: CompletionRequest, request_id: str) -> AsyncIterator[str]:
        if self.tracer is None:
            return self._stream.completion_stream.remote(request, request_id)
        return self._traced_stream(
            "text_completion",
            request_id,
            lambda headers: self._stream.completion_stream.remote(request, request_id, trace_headers=headers),
        )


def record_usage(span: Span, usage: Usage) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
