"""The typed application builder: `import_path: deployments.app:build_app` plus `args`.

It validates the arguments, catalog and preset, refuses a preset that does not fit its GPU, and
binds one deployment per model, the model directory, and the ingress that holds their handles.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application

from deployments.engine.vllm_engine import EngineConfig
from deployments.ingress.deployment import Ingress
from deployments.model.replica import DrainBudgets
from deployments.model.server import ModelServer
from deployments.model_directory import ModelDirectory
from deployments.quota_store import QuotaStore
from serve_app.config import (
    AppArgs,
    ConfigError,
    ModelSpec,
    check_preset_fits,
    load_catalog,
    load_preset,
)
from serve_app.config.budgets import check_drain_budgets, deregistration_window_s
from serve_app.config.resources import (
    CPU_GPU_MEMORY_UTILIZATION,
    CPU_INGRESS_CPUS,
    GPU_INGRESS_CPUS,
    GPU_MODEL_REPLICA_CPUS,
)
from serve_app.tracing import TracingSettings

logger = logging.getLogger("ray.serve")


def engine_config(spec: ModelSpec, args: AppArgs, tracing: TracingSettings | None = None) -> EngineConfig:
    # vLLM exports its own per-request span to the same endpoint (its `otlp_traces_endpoint`).
    engine_traces = tracing.traces_endpoint if tracing is not None and tracing.engine_spans else None
    if args.profile == "cpu":
        return EngineConfig(
            model_path=str(args.cpu.checkpoint_path()),
            served_model_id=spec.id,
            dtype=args.cpu.dtype,
            max_model_len=args.cpu.max_model_len,
            gpu_memory_utilization=CPU_GPU_MEMORY_UTILIZATION,
            reasoning_parser=spec.reasoning_parser,
            tool_parser=spec.tool_parser,
            enforce_eager=True,
            cpu=True,
            stream_interval=args.stream_interval,
            otlp_traces_endpoint=engine_traces,
        )
    return EngineConfig(
        model_path=spec.hf_source,
        served_model_id=spec.id,
        dtype=spec.dtype,
        max_model_len=spec.max_model_len,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        quantization=spec.quantization,
        reasoning_parser=spec.reasoning_parser,
        tool_parser=spec.tool_parser,
        stream_interval=args.stream_interval,
        otlp_traces_endpoint=engine_traces,
    )


def actor_options(
    spec: ModelSpec,
    args: AppArgs,
    tracing: TracingSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    engine_traced = tracing is not None and tracing.engine_spans
    env = tracing.engine_env(environ or {}) if tracing is not None and engine_traced else {}
    if args.profile == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(args.cpu.kv_cache_space_gb)
        return {"num_cpus": args.cpu.num_cpus, "runtime_env": {"env_vars": env}}
    options: dict[str, Any] = {"num_gpus": spec.gpu_fraction, "num_cpus": GPU_MODEL_REPLICA_CPUS}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return options


def build_app(raw_args: dict[str, Any] | None = None) -> Application:
    args = AppArgs.model_validate(raw_args or {})
    catalog = load_catalog(args.resolve(args.catalog_path))
    preset = load_preset(args.resolve(args.presets_dir), args.resolved_preset(), catalog)
    # The fit check is about GPUs; the CPU profile runs tiny checkpoints but keeps the real numbers
    # visible (GET /v1/presets/{name}) so a preset that would not fit its GPU is still refused.
    overrides = {m: o.max_ongoing_requests for m, o in args.serving_overrides.items()}
    fits = check_preset_fits(preset, catalog, overrides)
    unknown = set(args.serving_overrides) - set(preset.models)
    if unknown:
        raise ConfigError(f"serving_overrides name models outside preset {preset.name}: {sorted(unknown)}")
    serving = {m: args.serving_overrides.get(m, catalog.get(m).serving) for m in preset.models}
    # Serve's environment variables are those `ray start` had, which the builder's process shares.
    check_drain_budgets(args, serving, deregistration_window_s(os.environ))
    if args.profile == "cpu" and not args.cpu.checkpoint_path().joinpath("config.json").is_file():
        raise FileNotFoundError(
            f"CPU profile checkpoint missing at {args.cpu.checkpoint_path()}; "
            "build it with: python -m scripts.tiny_checkpoint"
        )
    logger.info("building preset %s (%s profile): %s", preset.name, args.profile, list(preset.models))
    # Off unless an OTLP endpoint is configured; resolved once here and handed to every deployment.
    tracing = args.tracing.settings(os.environ)
    if tracing is not None:
        logger.info("tracing: exporting spans over OTLP %s to %s", tracing.protocol, tracing.traces_endpoint)

    directory = ModelDirectory.bind(list(preset.models))  # type: ignore[attr-defined]
    handles = {}
    for model_id in preset.models:
        spec = catalog.get(model_id)
        deployment = serve.deployment(ModelServer).options(  # type: ignore[attr-defined]
            name=model_id,
            ray_actor_options=actor_options(spec, args, tracing, os.environ),
            **serving[model_id].deployment_options(),
        )
        budgets = DrainBudgets(
            unload_s=serving[model_id].unload_drain_s(),
            shutdown_s=serving[model_id].graceful_shutdown_timeout_s,
            margin_s=args.shutdown_cut_margin_s,
        )
        handles[model_id] = deployment.bind(
            model_id,
            engine_config(spec, args, tracing),
            args.limits,
            directory,
            budgets,
            args.stream_batch_ms / 1000,
            args.engine_start_timeout_s,
        )
    ingress_cpus = CPU_INGRESS_CPUS if args.profile == "cpu" else GPU_INGRESS_CPUS
    ingress = serve.deployment(Ingress).options(  # type: ignore[attr-defined]
        name="ingress",
        ray_actor_options={"num_cpus": ingress_cpus},
        **args.ingress.deployment_options(),
    )
    # Rate-limit counters shared by every ingress replica of this application (one replica: the
    # ledger is the single source of truth; ingress replicas lease from it).
    quota_store = serve.deployment(QuotaStore).options(  # type: ignore[attr-defined]
        name="quota-store", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000
    )
    return ingress.bind(args, catalog, preset, fits, handles, directory, quota_store.bind(), tracing)
