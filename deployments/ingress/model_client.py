"""How the ingress talks to model deployments: a small protocol, and its Ray handle implementation.

Pipelines depend only on `ModelClient`, so unit tests drive them with fake clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from serve_app.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)


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
    """A model deployment reached through its Ray Serve DeploymentHandle (no HTTP hop)."""

    def __init__(self, model_id: str, handle: Any):
        self.model_id = model_id
        self.handle = handle
        self._stream = handle.options(stream=True)

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> ChatCompletionResponse:
        return await self.handle.chat_completion.remote(request, request_id)

    def chat_chunks(
        self, request: ChatCompletionRequest, request_id: str
    ) -> AsyncIterator[ChatCompletionChunk]:
        return self._stream.chat_completion_stream.remote(request, request_id, encoded=False)

    def chat_sse(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[str]:
        return self._stream.chat_completion_stream.remote(request, request_id, encoded=True)

    async def completion(self, request: CompletionRequest, request_id: str) -> CompletionResponse:
        return await self.handle.completion.remote(request, request_id)

    def completion_sse(self, request: CompletionRequest, request_id: str) -> AsyncIterator[str]:
        return self._stream.completion_stream.remote(request, request_id)
