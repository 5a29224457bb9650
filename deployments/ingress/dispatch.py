"""What the ingress does for each route: model state, load/unload, and request dispatch to a single
model or a pipeline. Route handlers in `routes.py` only parse, call this, and render."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Tracer

from deployments.ingress.model_client import ModelClient
from deployments.ingress.orchestration.pipeline import CritiquePipeline, EnsemblePipeline, Pipeline
from deployments.ingress.orchestration.render import render_response, render_stream
from serve_app.config import AppArgs, Catalog, OrchestrationMode, Preset, Role
from serve_app.config.fit import ModelFit
from serve_app.contracts import IngressDirectory, ModelStatus
from serve_app.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from serve_app.metrics import NoMetrics, RequestMetrics
from serve_app.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCapabilities,
    ModelCard,
    ModelList,
)

STATUS_CACHE_S = 1.0
# Past this age a status copy is not served while it refreshes: the caller waits (and sees the error
# if the ModelDirectory cannot be reached).
STATUS_STALE_MAX_S = 10.0
POLL_S = 0.5

logger = logging.getLogger(__name__)


@dataclass
class LoadResult:
    card: ModelCard
    done: bool


class RequestDispatcher:
    """Sends each request to one model or a pipeline, and answers the model routes (list, load,
    unload, readiness) from the ModelDirectory's states. Runs in the ingress replica."""

    def __init__(
        self,
        args: AppArgs,
        catalog: Catalog,
        preset: Preset,
        fits: list[ModelFit],
        clients: Mapping[str, ModelClient],
        directory: IngressDirectory,
        metrics: RequestMetrics | None = None,
        *,
        tracer: Tracer | None = None,
    ):
        self.args = args
        self.tracer = tracer  # pipelines trace their steps with it
        self.catalog = catalog
        self.preset = preset
        self.fits = fits
        self.clients = clients
        self.directory = directory
        self.metrics = metrics or NoMetrics()
        self._status: dict[str, ModelStatus] = {}
        self._status_at = self._status_asked = 0.0
        self._status_refresh: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ model state

    async def _statuses(self, fresh: bool = False) -> dict[str, ModelStatus]:
        """Every model's state from the ModelDirectory.

        `fresh` (load/unload) always asks the directory. Otherwise a copy under STATUS_CACHE_S old
        is used as is, and an older one (up to STATUS_STALE_MAX_S) while a background task
        refreshes it, so that a pipeline request never waits for a directory round trip."""
        age = time.monotonic() - self._status_at
        if fresh or age > STATUS_STALE_MAX_S:
            await self._refresh_status()
        elif age > STATUS_CACHE_S and self._status_refresh is None:
            self._status_refresh = asyncio.create_task(self._refresh_status())
            self._status_refresh.add_done_callback(self._status_refreshed)
        return self._status

    async def _refresh_status(self) -> None:
        asked = time.monotonic()
        status = await self.directory.all_status()
        if asked >= self._status_asked:  # else a later question was answered first: keep that
            self._status, self._status_at, self._status_asked = status, time.monotonic(), asked

    def _status_refreshed(self, task: asyncio.Task[None]) -> None:
        self._status_refresh = None
        if not task.cancelled() and task.exception() is not None:
            # The copy stays until STATUS_STALE_MAX_S, when a caller waits and sees the error.
            logger.warning("refreshing model states failed: %r", task.exception())

    def _card(self, model_id: str, status: ModelStatus | None) -> ModelCard:
        status = status or ModelStatus()  # not reported yet: loading
        spec = self.catalog.get(model_id)
        role = self.preset.roles.get(model_id)
        return ModelCard(
            id=model_id,
            status=status.state,
            role=role.value if role else None,
            hf_source=spec.hf_source,
            max_model_len=spec.max_model_len if self.args.profile == "gpu" else self.args.cpu.max_model_len,
            replicas=status.replicas,
            error=status.error,
            unload_drain_timeout_s=self.args.serving_overrides.get(model_id, spec.serving).unload_drain_s(),
            capabilities=ModelCapabilities(
                tool_choice=["none", "auto", "required", "named"]
                if spec.tool_parser
                else ["none", "required", "named"],
                tool_parser=spec.tool_parser,
                reasoning=spec.reasoning_parser is not None,
            ),
        )

    def _require_deployed(self, model_id: str, param: str = "model") -> ModelClient:
        client = self.clients.get(model_id)
        if client is None:
            known = any(m.id == model_id for m in self.catalog.models)
            hint = (
                f"it is in the catalog but not deployed by preset {self.preset.name}"
                if known
                else "it is not in the catalog"
            )
            raise ModelNotFound(
                f"The model '{model_id}' does not exist here: {hint}. Deployed: {sorted(self.clients)}.",
                param=param,
            )
        return client

    async def list_models(self) -> ModelList:
        statuses = await self._statuses()
        return ModelList(
            data=[self._card(m, statuses.get(m)) for m in self.preset.models],
            preset=self.preset.name,
            orchestration_mode=self.preset.orchestration_mode.value,
        )

    async def get_model(self, model_id: str) -> ModelCard:
        self._require_deployed(model_id)
        return self._card(model_id, (await self._statuses()).get(model_id))

    async def _await_state(self, model_id: str, wanted: set[str], timeout_s: float) -> LoadResult:
        deadline = time.monotonic() + timeout_s
        while True:
            status = (await self._statuses(fresh=True)).get(model_id)
            card = self._card(model_id, status)
            if card.status in wanted:
                return LoadResult(card, True)
            if card.status == "failed" and "failed" not in wanted:
                raise ServiceUnavailable(
                    f"Model {model_id} failed to load: {card.error or 'see the replica logs'}.",
                    code="model_load_failed",
                )
            if time.monotonic() >= deadline:
                return LoadResult(card, False)
            await asyncio.sleep(POLL_S)

    async def load(self, model_id: str, wait_s: float) -> LoadResult:
        self._require_deployed(model_id)
        await self.directory.set_desired(model_id, "loaded")
        return await self._await_state(model_id, {"ready"}, wait_s)

    async def unload(self, model_id: str, wait_s: float) -> LoadResult:
        self._require_deployed(model_id)
        await self.directory.set_desired(model_id, "unloaded")
        return await self._await_state(model_id, {"unloaded"}, wait_s)

    async def readiness(self) -> dict[str, str]:
        """Ready when every model is where an operator wants it: serving, or unloaded on purpose (an
        unload survives redeploys, and a deploy must not wait forever on a model nobody wants)."""
        known = await self._statuses(fresh=True)
        statuses = {m: known.get(m) or ModelStatus() for m in self.preset.models}
        states: dict[str, str] = {m: status.state for m, status in statuses.items()}
        settled = all(
            status.state == "ready" or (status.desired == "unloaded" and status.state == "unloaded")
            for status in statuses.values()
        )
        if not settled:
            raise ServiceUnavailable(f"Not every model is ready: {states}", code="not_ready")
        return states

    def preset_info(self, name: str) -> dict[str, Any]:
        if name != self.preset.name:
            raise InvalidRequest(
                f"Preset {name!r} is not the one running ({self.preset.name}).",
                param="preset",
                code="not_running",
            )
        return {
            **self.preset.model_dump(mode="json"),
            "profile": self.args.profile,
            "fit": [
                {
                    "model_id": f.model_id,
                    "budget_gb": round(f.budget_gb, 3),
                    "weights_gb": f.weights_gb,
                    "kv_min_gb": round(f.kv_min_gb, 3),
                    "spare_gb": round(f.spare_gb, 3),
                    "runtime_gb": round(f.runtime_gb, 3),
                    "kv_capacity_tokens": f.kv_capacity_tokens,
                    "warnings": list(f.warnings),
                }
                for f in self.fits
            ],
        }

    # ------------------------------------------------------------------ requests

    async def _require_ready(self, model_id: str, param: str) -> ModelClient:
        client = self._require_deployed(model_id, param)
        status = (await self._statuses()).get(model_id)
        state = status.state if status else None
        if state != "ready":
            raise InvalidRequest(
                f"Model {model_id} ({param}) is {state or 'unknown'}, not ready.",
                param=param,
                code="model_not_ready",
            )
        return client

    def _check_auto_tools(self, request: ChatCompletionRequest, model_ids: list[str]) -> None:
        """A pipeline's final answer under tool_choice "auto" needs a tool parser on its model(s):
        refuse before any step runs (a single model's replica refuses by itself)."""
        if request.tool_mode() != "auto":
            return
        parsers = {spec.id: spec.tool_parser for spec in self.catalog.models}
        # Unknown ids are refused later, by name, as the model they are.
        lacking = [m for m in model_ids if m in parsers and parsers[m] is None]
        if lacking:
            raise InvalidRequest(
                f"{', '.join(lacking)} cannot choose tools itself (no tool-call parser), so "
                'tool_choice "auto" is unavailable; use "required" or name a function.',
                param="tools",
                code="tool_choice_unsupported",
            )

    async def _pipeline(self, request: ChatCompletionRequest, request_id: str) -> Pipeline | None:
        orchestration = request.orchestration_request()
        addressed_preset = request.model == self.preset.name
        mode = orchestration.mode
        if mode is None:
            explicit = request.orchestration is not None or addressed_preset
            mode = self.preset.orchestration_mode.value if explicit else "single"
        if mode == "single":
            if addressed_preset:
                request.model = self.preset.model_with_role(Role.generator) or self.preset.models[0]
            return None
        if not addressed_preset:
            self._require_deployed(request.model)
        if request.n != 1:
            raise InvalidRequest("Pipelines produce one answer; n must be 1.", param="n")
        if request.logprobs:
            raise InvalidRequest("logprobs are not available for pipelines.", param="logprobs")
        timeout = self.args.critique_step_timeout_s
        if mode == OrchestrationMode.critique.value:
            generator = orchestration.generator or self.preset.model_with_role(Role.generator)
            critic = orchestration.critic or self.preset.model_with_role(Role.critic)
            if generator is None or critic is None:
                raise InvalidRequest(
                    f"Preset {self.preset.name} has no generator and critic roles; name both in "
                    "orchestration.generator and orchestration.critic.",
                    param="orchestration.mode",
                    code="mode_unavailable",
                )
            rounds = orchestration.rounds or self.preset.critique_max_rounds
            self._check_auto_tools(request, [generator])
            return CritiquePipeline(
                request,
                request_id,
                timeout,
                await self._require_ready(generator, "orchestration.generator"),
                await self._require_ready(critic, "orchestration.critic"),
                rounds,
                tracer=self.tracer,
            )
        candidates = orchestration.models or list(self.preset.models)
        if len(candidates) < 2:
            raise InvalidRequest(
                "Ensemble needs at least two candidate models.",
                param="orchestration.models",
                code="mode_unavailable",
            )
        self._check_auto_tools(request, candidates)
        judge = (
            orchestration.judge
            or self.preset.model_with_role(Role.judge)
            or self.preset.model_with_role(Role.critic)
            or candidates[0]
        )
        return EnsemblePipeline(
            request,
            request_id,
            timeout,
            [await self._require_ready(m, "orchestration.models") for m in candidates],
            await self._require_ready(judge, "orchestration.judge"),
            tracer=self.tracer,
        )

    async def chat(
        self, request: ChatCompletionRequest, request_id: str
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        pipeline = await self._pipeline(request, request_id)
        if pipeline is not None:
            if request.stream:
                return render_stream(pipeline, request, self.metrics)
            return await render_response(pipeline, request, self.metrics)
        client = self._require_deployed(request.model)
        if request.stream:
            return client.chat_sse(request, request_id)
        return await client.chat(request, request_id)

    async def completion(
        self, request: CompletionRequest, request_id: str
    ) -> CompletionResponse | AsyncIterator[str]:
        client = self._require_deployed(request.model)
        if request.stream:
            return client.completion_sse(request, request_id)
        return await client.completion(request, request_id)
