"""One Ray Serve deployment per catalog model, each owning one vLLM engine per replica.

The Ray shell only: state, drain and admission live in `ModelReplica` (deployments/model/replica.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.engine.vllm_engine import EngineConfig, VLLMEngine
from deployments.model.replica import DrainBudgets, ModelReplica
from deployments.model.stream_batching import batch_events
from deployments.model_directory import HandleDirectoryClient
from serve_app.config.app_args import RequestLimits
from serve_app.engine_api import Engine
from serve_app.metrics import RayEngineMetrics
from serve_app.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)
from serve_app.sse import encode_event
from serve_app.tracing import TraceHeaders


class ModelServer:
    """Wraps the engine with load state, draining, health and the OpenAI serving classes."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits async constructors
        self,
        model_id: str,
        engine_config: EngineConfig,
        limits: RequestLimits,
        directory: DeploymentHandle,
        budgets: DrainBudgets,
        stream_batch_s: float = 0.0,
        start_timeout_s: float = 900.0,
        engine_cls: Callable[[EngineConfig], Engine] = VLLMEngine,
    ):
        """`engine_cls` makes the engine from its config (Ray Serve LLM's `engine_cls` habit): vLLM
        by default; anything implementing `Engine` runs the same replica logic."""
        self.stream_batch_s = stream_batch_s
        self.replica = ModelReplica(
            model_id,
            serve.get_replica_context().replica_id.unique_id,
            engine_cls(engine_config),
            limits,
            HandleDirectoryClient(directory, serve.get_replica_context().app_name),
            budgets,
            RayEngineMetrics(),
            start_timeout_s=start_timeout_s,
        )
        await self.replica.start()
        self._tasks = [
            asyncio.create_task(self.replica.reconcile_forever()),
            asyncio.create_task(self.replica.watch_for_stop()),
        ]

    async def check_health(self) -> None:
        await self.replica.check_health()

    async def __del__(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.replica.stop()

    # ------------------------------------------------------------------ requests

    # `trace_headers`: the W3C context of the ingress's model-call span, when the request is traced;
    # the engine's own span (vLLM's llm_request) goes under it.

    async def chat_completion(
        self, request: ChatCompletionRequest, request_id: str, trace_headers: TraceHeaders | None = None
    ) -> ChatCompletionResponse:
        with self.replica.admitted():
            return await self.replica.serving()[0].create(request, request_id, trace_headers)

    async def chat_completion_stream(
        self,
        request: ChatCompletionRequest,
        request_id: str,
        encoded: bool = True,
        trace_headers: TraceHeaders | None = None,
    ) -> AsyncIterator[str | ChatCompletionChunk]:
        with self.replica.admitted():
            chunks = await self.replica.serving()[0].stream(request, request_id, trace_headers)
            if encoded:
                async for events in self._sse(chunks):
                    yield events
            else:  # a pipeline step: its chunk objects, unbatched
                async for chunk in chunks:
                    yield chunk

    async def completion(
        self, request: CompletionRequest, request_id: str, trace_headers: TraceHeaders | None = None
    ) -> CompletionResponse:
        with self.replica.admitted():
            return await self.replica.serving()[1].create(request, request_id, trace_headers)

    async def completion_stream(
        self, request: CompletionRequest, request_id: str, trace_headers: TraceHeaders | None = None
    ) -> AsyncIterator[str]:
        with self.replica.admitted():
            chunks = await self.replica.serving()[1].stream(request, request_id, trace_headers)
            async for events in self._sse(chunks):
                yield events

    def _sse(self, chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
        """The chunks as SSE events, those ready within `stream_batch_s` joined into one item."""
        return batch_events(_encoded(chunks), self.stream_batch_s)

    def status(self) -> dict[str, Any]:
        replica = self.replica
        return {
            "model": replica.model_id,
            "state": replica.state,
            "error": replica.error,
            "inflight": replica.inflight,
        }


async def _encoded(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    async for chunk in chunks:
        yield encode_event(chunk)
