"""One Ray Serve deployment per catalog model, each owning one vLLM engine per replica."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.vllm_engine import EngineConfig, VLLMEngine
from serve_app.config.app_args import RequestLimits
from serve_app.errors import ModelNotLoaded, ServiceUnavailable
from serve_app.metrics import RayEngineMetrics
from serve_app.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelState,
)
from serve_app.serving.chat import ChatServing
from serve_app.serving.completion import CompletionServing
from serve_app.sse import encode_event
from serve_app.stream_batching import batch_events

logger = logging.getLogger("ray.serve")

RECONCILE_PERIOD_S = 1.0
DRAIN_TIMEOUT_S = 60.0


class ModelServer:
    """Wraps the engine with load state, draining, health and the OpenAI serving classes."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits async constructors
        self,
        model_id: str,
        engine_config: EngineConfig,
        limits: RequestLimits,
        directory: DeploymentHandle,
        stream_batch_s: float = 0.0,
    ):
        self.model_id = model_id
        self.stream_batch_s = stream_batch_s
        self.engine = VLLMEngine(engine_config)
        self.limits = limits
        self.directory = directory
        self.state: ModelState = "unloaded"
        self.error: str | None = None
        self.inflight = 0
        self.metrics = RayEngineMetrics()
        self._transition = asyncio.Lock()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        desired = await self._report()
        if desired == "loaded":
            await self._load()
            if self.state == "failed":
                await self._report()
                raise RuntimeError(f"engine of {model_id} failed to start: {self.error}")
        self._reconciler = asyncio.create_task(self._reconcile_forever())

    # ------------------------------------------------------------------ lifecycle

    async def _report(self) -> str:
        return await self.directory.report.remote(self.model_id, self.replica_id, self.state, self.error)

    async def _load(self) -> None:
        async with self._transition:
            if self.state == "ready":
                return
            self.state, self.error = "loading", None
            await self._report()
            try:
                await self.engine.start()
            except Exception as exc:  # reported as the model's state; the replica stays up
                logger.exception("engine of %s failed to start", self.model_id)
                self.state, self.error = "failed", f"engine failed to start: {type(exc).__name__}"
                await self.engine.shutdown()
                return
            vocab = self.engine.vocab_size
            self.chat_serving = ChatServing(self.engine, self.model_id, self.limits, vocab, self.metrics)
            self.completion_serving = CompletionServing(
                self.engine, self.model_id, self.limits, vocab, self.metrics
            )
            self.state = "ready"
            logger.info("engine of %s ready on replica %s", self.model_id, self.replica_id)

    async def _unload(self) -> None:
        async with self._transition:
            if self.state not in ("ready", "failed"):
                return
            self.state = "unloading"
            await self._report()
            waited = 0.0
            while self.inflight and waited < DRAIN_TIMEOUT_S:
                await asyncio.sleep(0.2)
                waited += 0.2
            await self.engine.shutdown()
            self.state = "unloaded"
            logger.info("engine of %s unloaded on replica %s", self.model_id, self.replica_id)

    async def _reconcile_forever(self) -> None:
        # Reporting doubles as the heartbeat, so it must never wait on a transition (a drain can
        # take a minute): transitions run as their own task, one at a time.
        transition: asyncio.Task[None] | None = None
        while True:
            try:
                desired = await self._report()
                idle = transition is None or transition.done()
                if idle and desired == "unloaded" and self.state in ("ready", "failed"):
                    transition = asyncio.create_task(self._unload())
                elif idle and desired == "loaded" and self.state == "unloaded":
                    transition = asyncio.create_task(self._load())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reconciling %s failed; retrying", self.model_id)
            await asyncio.sleep(RECONCILE_PERIOD_S)

    async def check_health(self) -> None:
        # An engine that died on its own (not unloaded by us) makes Ray replace this replica.
        if self.state == "ready" and not self.engine.is_running():
            raise RuntimeError(f"engine of {self.model_id} is dead")
        if self.state == "ready":
            await self.engine.check_health()

    async def __del__(self) -> None:
        await self.engine.shutdown()

    def _admit(self) -> None:
        if self.state == "ready":
            return
        if self.state in ("unloaded", "unloading"):
            raise ModelNotLoaded(
                f"Model {self.model_id} is unloaded; load it with POST /v1/models/{self.model_id}/load."
            )
        raise ServiceUnavailable(
            f"Model {self.model_id} is {self.state}; retry shortly.", code="model_loading"
        )

    # ------------------------------------------------------------------ requests

    async def chat_completion(
        self, request: ChatCompletionRequest, request_id: str
    ) -> ChatCompletionResponse:
        self._admit()
        self.inflight += 1
        try:
            return await self.chat_serving.create(request, request_id)
        finally:
            self.inflight -= 1

    async def chat_completion_stream(
        self, request: ChatCompletionRequest, request_id: str, encoded: bool = True
    ) -> AsyncIterator[str | ChatCompletionChunk]:
        self._admit()
        self.inflight += 1
        try:
            chunks = await self.chat_serving.stream(request, request_id)
            if encoded:
                async for events in self._sse(chunks):
                    yield events
            else:  # a pipeline step: its chunk objects, unbatched
                async for chunk in chunks:
                    yield chunk
        finally:
            self.inflight -= 1

    async def completion(self, request: CompletionRequest, request_id: str) -> CompletionResponse:
        self._admit()
        self.inflight += 1
        try:
            return await self.completion_serving.create(request, request_id)
        finally:
            self.inflight -= 1

    async def completion_stream(self, request: CompletionRequest, request_id: str) -> AsyncIterator[str]:
        self._admit()
        self.inflight += 1
        try:
            chunks = await self.completion_serving.stream(request, request_id)
            async for events in self._sse(chunks):
                yield events
        finally:
            self.inflight -= 1

    def _sse(self, chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
        """The chunks as SSE events, those ready within `stream_batch_s` joined into one item."""
        return batch_events(_encoded(chunks), self.stream_batch_s)

    def status(self) -> dict[str, Any]:
        return {"model": self.model_id, "state": self.state, "error": self.error, "inflight": self.inflight}


async def _encoded(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    async for chunk in chunks:
        yield encode_event(chunk)
