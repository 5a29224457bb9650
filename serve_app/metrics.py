"""Prometheus metrics through Ray's metrics API; Ray serves them on its metrics export port with a
`ray_` prefix (e.g. `ray_inference_requests_total`). One instance per replica, made in its
constructor: no module-level metric state."""

from __future__ import annotations

from typing import Any, Protocol

LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
ROUND_BUCKETS = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
# Error codes that mean "refused for capacity", as opposed to failures or bad input.
REJECTION_CODES = {"overloaded", "model_loading", "replica_died", "engine_dead", "deployment_unavailable"}


def tags(*keys: str) -> Any:
    # Ray annotates tag_keys as tuple[str] though it takes any number of keys.
    return keys


class RequestMetrics(Protocol):
    def request_finished(self, model: str, route: str, status: int, seconds: float) -> None: ...

    def error(self, model: str, status: int, code: str) -> None: ...

    def pipeline_finished(self, mode: str, rounds: int, steps: list[tuple[str, str]]) -> None: ...


class EngineMetrics(Protocol):
    def first_token(self, model: str, seconds: float) -> None: ...

    def tokens(self, model: str, prompt: int, completion: int) -> None: ...


class NoMetrics:
    """For code paths without Ray (unit tests, tools)."""

    def request_finished(self, model: str, route: str, status: int, seconds: float) -> None:
        return None

    def error(self, model: str, status: int, code: str) -> None:
        return None

    def pipeline_finished(self, mode: str, rounds: int, steps: list[tuple[str, str]]) -> None:
        return None

    def first_token(self, model: str, seconds: float) -> None:
        return None

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        return None


class RayRequestMetrics:
    """Recorded by the ingress: one row per HTTP request, plus errors, rejections and pipelines."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self._requests = metrics.Counter(
            "inference_requests",
            description="HTTP requests by model, route and status.",
            tag_keys=tags("model", "route", "status"),
        )
        self._latency = metrics.Histogram(
            "inference_e2e_latency_seconds",
            description="End-to-end request latency, body included.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=tags("model", "route"),
        )
        self._errors = metrics.Counter(
            "inference_errors",
            description="Error responses by status and OpenAI error code.",
            tag_keys=tags("model", "status", "code"),
        )
        self._rejections = metrics.Counter(
            "inference_rejections",
            description="Requests refused for capacity (429/503).",
            tag_keys=tags("model", "reason"),
        )
        self._rounds = metrics.Histogram(
            "inference_critique_rounds",
            description="Rounds run per pipeline request.",
            boundaries=ROUND_BUCKETS,
            tag_keys=("mode",),
        )
        self._steps = metrics.Counter(
            "inference_pipeline_steps",
            description="Pipeline model calls by mode, role and model.",
            tag_keys=tags("mode", "role", "model"),
        )

    def request_finished(self, model: str, route: str, status: int, seconds: float) -> None:
        self._requests.inc(tags={"model": model, "route": route, "status": str(status)})
        self._latency.observe(seconds, tags={"model": model, "route": route})

    def error(self, model: str, status: int, code: str) -> None:
        self._errors.inc(tags={"model": model, "status": str(status), "code": code})
        if code in REJECTION_CODES:
            self._rejections.inc(tags={"model": model, "reason": code})

    def pipeline_finished(self, mode: str, rounds: int, steps: list[tuple[str, str]]) -> None:
        self._rounds.observe(rounds, tags={"mode": mode})
        for role, model in steps:
            self._steps.inc(tags={"mode": mode, "role": role, "model": model})


class TenantMetrics(Protocol):
    def request(self, tenant: str, status: int, code: str | None) -> None: ...

    def tokens(self, tenant: str, tokens: int) -> None: ...


class NoTenantMetrics:
    def request(self, tenant: str, status: int, code: str | None) -> None:
        return None

    def tokens(self, tenant: str, tokens: int) -> None:
        return None


# Rejections by a tenant's own limits (deployments/ingress/tenancy/quota.py), as opposed to capacity.
QUOTA_CODES = {"rate_limit_exceeded"}


class RayTenantMetrics:
    """Per-tenant requests, tokens (every pipeline step) and quota rejections, by the ingress.
    Labelled by tenant, never by key: keys are secrets and unbounded."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self._requests = metrics.Counter(
            "inference_tenant_requests",
            description="Requests with an API key, by tenant and status.",
            tag_keys=tags("tenant", "status"),
        )
        self._tokens = metrics.Counter(
            "inference_tenant_tokens",
            description="Prompt plus completion tokens charged to a tenant, over every pipeline step.",
            tag_keys=tags(
                "tenant",
            ),
        )
        self._rejections = metrics.Counter(
            "inference_tenant_rejections",
            description="Requests refused or ended by a tenant's own limits (429 rate_limit_exceeded).",
            tag_keys=tags("tenant", "status"),
        )

    def request(self, tenant: str, status: int, code: str | None) -> None:
        self._requests.inc(tags={"tenant": tenant, "status": str(status)})
        if code in QUOTA_CODES:
            self._rejections.inc(tags={"tenant": tenant, "status": str(status)})

    def tokens(self, tenant: str, tokens: int) -> None:
        if tokens > 0:  # Ray's Counter.inc rejects 0
            self._tokens.inc(tokens, tags={"tenant": tenant})


class RayEngineMetrics:
    """Recorded by each model replica, where token counts and first-token time are exact."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self._ttft = metrics.Histogram(
            "inference_ttft_seconds",
            description="Time from the replica receiving a request to its first token.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=tags("model"),
        )
        self._prompt = metrics.Counter(
            "inference_prompt_tokens", description="Prompt tokens processed.", tag_keys=tags("model")
        )
        self._completion = metrics.Counter(
            "inference_completion_tokens", description="Completion tokens generated.", tag_keys=tags("model")
        )

    def first_token(self, model: str, seconds: float) -> None:
        self._ttft.observe(seconds, tags={"model": model})

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        # Ray's Counter.inc rejects 0; a request that failed before its first token counts nothing.
        if prompt > 0:
            self._prompt.inc(prompt, tags={"model": model})
        if completion > 0:
            self._completion.inc(completion, tags={"model": model})
