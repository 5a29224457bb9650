"""Arguments of the application builder (`import_path: deployments.app:build_app` plus `args`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field

from serve_app.config.schema import ServingOptions, Strict
from serve_app.tracing import TracingSettings, resolve_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PRESET_ENV_VAR = "INFERENCE_DEFAULT_PRESET"


class CpuProfile(Strict):
    """How the CPU profile serves every catalog id from one small local checkpoint."""

    checkpoint: str = Field(
        "models/tiny-llama",
        description="Local checkpoint directory (relative paths are from the project root).",
    )
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Engine dtype on the CPU.")
    max_model_len: int = Field(2048, gt=0, description="Context length of the CPU engines.")
    kv_cache_space_gb: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE for each engine.")
    num_cpus: float = Field(0.5, gt=0, description="Ray `num_cpus` of one model replica.")

    def checkpoint_path(self) -> Path:
        path = Path(self.checkpoint)
        return path if path.is_absolute() else PROJECT_ROOT / path


class RequestLimits(Strict):
    max_body_bytes: int = Field(1_000_000, gt=0, description="Larger request bodies get 413.")
    max_messages: int = Field(256, gt=0, description="Most messages one chat request may carry.")
    max_n: int = Field(8, ge=1, description="Most choices (`n`) one request may ask for.")


class TracingOptions(Strict):
    """OpenTelemetry tracing (README "Tracing"). Off unless an OTLP endpoint is known: this block's
    or the standard OTEL_EXPORTER_OTLP_* variables of the environment Ray was started with."""

    enabled: bool | None = Field(
        None,
        description="true: trace (an endpoint is required); false: never, whatever the environment "
        "says; unset: trace when an endpoint is configured.",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="Base OTLP endpoint, as OTEL_EXPORTER_OTLP_ENDPOINT (http/protobuf: /v1/traces "
        "is appended). Unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT.",
    )
    protocol: Literal["http/protobuf", "grpc"] | None = Field(
        None,
        description="OTLP transport. Unset: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else "
        "OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.",
    )
    service_name: str | None = Field(
        None,
        description="service.name of the ingress's spans (vLLM's get the suffix -vllm). Unset: "
        "OTEL_SERVICE_NAME, else inference.",
    )
    engine_spans: bool = Field(
        True, description="Whether each vLLM engine exports its own per-request span (llm_request)."
    )

    def settings(self, environ: Mapping[str, str]) -> TracingSettings | None:
        return resolve_settings(
            enabled=self.enabled,
            endpoint=self.otlp_endpoint,
            protocol=self.protocol,
            service_name=self.service_name,
            engine_spans=self.engine_spans,
            environ=environ,
        )


class AppArgs(Strict):
    """The `args` block of serve_config.yaml."""

    preset: str = Field(
        "D4", description=f"Preset to deploy; the {PRESET_ENV_VAR} environment variable overrides it."
    )
    preset_from_env: bool = Field(
        True,
        description=f"Whether {PRESET_ENV_VAR} may override `preset` (off for extra apps in a config).",
    )
    profile: Literal["gpu", "cpu"] = Field(
        "gpu", description="gpu: real weights on GPUs. cpu: tiny local checkpoint on vllm-cpu."
    )
    cpu: CpuProfile = Field(default_factory=CpuProfile, description="Settings of the CPU profile.")
    presets_dir: str = Field("presets", description="Directory of preset YAML files.")
    catalog_path: str = Field("presets/catalog.yaml", description="The model catalog YAML.")
    ingress: ServingOptions = Field(
        # 90 s of graceful shutdown: behind HAProxy (Serve's high-throughput mode) a stopping
        # ingress replica still accepts requests for Ray's 30 s deregistration window
        # (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S), and a stream admitted at its end must
        # still get the models' 60 s to finish.
        default_factory=lambda: ServingOptions(
            max_ongoing_requests=256, max_queued_requests=512, graceful_shutdown_timeout_s=90
        ),
        description="Ray Serve admission settings of the ingress deployment.",
    )
    limits: RequestLimits = Field(default_factory=RequestLimits, description="Request size limits.")
    serving_overrides: dict[str, ServingOptions] = Field(
        default_factory=dict,
        description="Per-model replacements of the catalog's serving block (admission, autoscaling).",
    )
    stream_interval: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "vLLM's stream_interval: after the first token (always sent at once), stream every N "
            "tokens. Each chunk crosses two Ray hops, so N > 1 trades smoothness for throughput."
        ),
    )
    stream_batch_ms: float = Field(
        0,
        ge=0,
        le=200,
        description=(
            "After a stream's first event (sent at once), the model replica sends the SSE events "
            "ready within this window as one Ray item; each event is still one OpenAI chunk. "
            "0 sends every event as its own item. Cuts Ray's per-item streaming cost at a "
            "bounded delay (deployments/model/stream_batching.py)."
        ),
    )
    critique_step_timeout_s: float = Field(
        120, gt=0, description="Timeout of one model call inside a pipeline."
    )
    shutdown_cut_margin_s: float = Field(
        5,
        ge=2,
        le=60,
        description=(
            "How long before Ray's force-kill of a stopping replica the requests still open end "
            "with an error. Covers the time to notice the stop (up to 2 s) and to send the errors."
        ),
    )
    tracing: TracingOptions = Field(
        default_factory=TracingOptions, description="OpenTelemetry tracing; off by default."
    )
    engine_start_timeout_s: float = Field(
        900,
        gt=0,
        description=(
            "How long a model replica waits for its engine to start (load, warm-up) before it "
            "reports the model failed; KubeRay's timeouts are sized from it too."
        ),
    )

    def resolved_preset(self) -> str:
        if not self.preset_from_env:
            return self.preset
        return os.environ.get(PRESET_ENV_VAR) or self.preset

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else PROJECT_ROOT / path
