"""The ingress deployment: the OpenAI HTTP API, composing model deployments through handles."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from ray import serve

from deployments.ingress.dispatch import RequestDispatcher
from deployments.ingress.model_client import HandleModelClient
from deployments.ingress.routes import build_api
from deployments.ingress.tenancy.admission import PriorityGate
from deployments.ingress.tenancy.keys import KeyRing
from deployments.ingress.tenancy.metering import MeteredModelClient
from deployments.ingress.tenancy.quota import Quota
from deployments.model_directory import HandleDirectoryClient
from deployments.quota_store import HandleQuotaStore
from serve_app.config import AppArgs, Catalog, Preset, ServingOptions
from serve_app.config.fit import ModelFit
from serve_app.draining import InflightRequests, watch_for_stop
from serve_app.errors import restarting
from serve_app.metrics import RayRequestMetrics, RayTenantMetrics
from serve_app.tracing import TracingSettings, make_tracer

# The share of a model's slots kept free of the lower tiers for the high tier.
HIGH_TIER_RESERVED_SHARE = 0.25


def tier_gate(serving: ServingOptions) -> PriorityGate:
    """As many tenant requests at once as the model deployment runs (a quarter of them kept for the
    high tier), and as many waiting as its queue holds (per ingress replica, like Serve's own
    per-caller queue bound)."""
    replicas = serving.autoscaling.max_replicas
    queued = serving.max_queued_requests
    slots = serving.max_ongoing_requests * replicas
    return PriorityGate(
        slots=slots,
        max_waiting=None if queued < 0 else queued * replicas,
        retry_after_s=max(1, math.ceil(serving.retry_after_s)),
        reserved=int(slots * HIGH_TIER_RESERVED_SHARE),
    )


@serve.ingress()
class Ingress:
    async def __init__(  # type: ignore[misc]  # Ray Serve awaits async constructors
        self,
        args: AppArgs,
        catalog: Catalog,
        preset: Preset,
        fits: list[ModelFit],
        model_handles: dict[str, Any],
        directory_handle: Any,
        quota_store: Any,
        tracing: TracingSettings | None = None,
    ):
        # Every model call is charged to the caller's key, and tenants wait by tier at the model's
        # gate (deployments/ingress/tenancy/metering.py, admission.py).
        context = serve.get_replica_context()
        directory = HandleDirectoryClient(directory_handle, context.app_name)
        # None unless tracing is on (serve_app/tracing.py): then every layer below adds its spans.
        self.tracer = make_tracer(tracing, f"{context.app_name}.ingress", context.replica_id.unique_id)
        clients: dict[str, HandleModelClient] = {
            model_id: MeteredModelClient(
                model_id,
                h,
                tier_gate(args.serving_overrides.get(model_id, catalog.get(model_id).serving)),
                self.tracer,
            )
            for model_id, h in model_handles.items()
        }
        self.metrics = RayRequestMetrics()
        self.tenant_metrics = RayTenantMetrics()
        self.service = RequestDispatcher(
            args, catalog, preset, fits, clients, directory, self.metrics, tracer=self.tracer
        )
        # INFERENCE_API_KEY / INFERENCE_ADMIN_KEY (unlimited) plus the INFERENCE_KEYS_FILE policies.
        self.policy = KeyRing.from_env(time.monotonic)
        self.quota = Quota(HandleQuotaStore(quota_store), time.monotonic)
        self.inflight = InflightRequests()
        replica_id = context.replica_id.unique_id
        budget = args.ingress.graceful_shutdown_timeout_s

        async def is_stopping() -> bool:
            return await directory.is_stopping(replica_id)

        async def on_cut() -> None:
            self.inflight.cut(
                restarting(
                    f"the service's ingress replica is shutting down and its {budget:g} s drain ran out",
                    "service_restarting",
                )
            )

        self._stop_watch = asyncio.create_task(
            watch_for_stop(is_stopping, budget, args.shutdown_cut_margin_s, on_cut)
        )

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(
            self.service,
            self.policy,
            self.metrics,
            self.inflight,
            self.quota,
            self.tenant_metrics,
            self.tracer,
        )
