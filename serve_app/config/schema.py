"""Pydantic models for the model catalog, presets and the application builder's arguments.

Everything here is `extra="forbid"`: a misspelt key in YAML is an error at load time, not a silently
ignored setting on a GPU node an hour later.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(StrEnum):
    generator = "generator"
    critic = "critic"
    judge = "judge"
    general = "general"


class OrchestrationMode(StrEnum):
    single = "single"
    critique = "critique"
    ensemble = "ensemble"


class Architecture(Strict):
    """Shape numbers the GPU fit check needs to size the KV cache."""

    params_b: float = Field(gt=0, description="Parameter count in billions.")
    num_layers: int = Field(gt=0, description="Transformer layers.")
    num_kv_heads: int = Field(gt=0, description="Key/value heads (GQA groups).")
    head_dim: int = Field(gt=0, description="Dimension of one attention head.")
    max_position_embeddings: int = Field(
        gt=0,
        description="The checkpoint's config.json max_position_embeddings: the longest context vLLM "
        "accepts as max_model_len (without VLLM_ALLOW_LONG_MAX_MODEL_LEN).",
    )


class AutoscalingOptions(Strict):
    """Ray Serve `autoscaling_config`, restricted to the fields this project sets."""

    # Scale-to-zero is not offered: a request arriving at zero replicas would wait for an engine
    # start (about 40 s on the CPU profile, minutes on a GPU). Unload frees memory instead.
    min_replicas: int = Field(1, ge=1, description="Replicas kept even when idle.")
    max_replicas: int = Field(1, ge=1, description="Upper bound on replicas.")
    initial_replicas: int | None = Field(None, ge=1, description="Replicas at deploy time; defaults to min.")
    target_ongoing_requests: float = Field(
        8, gt=0, description="Ongoing requests per replica that the autoscaler aims for."
    )
    upscale_delay_s: float = Field(10, ge=0, description="Seconds of sustained load before adding replicas.")
    downscale_delay_s: float = Field(300, ge=0, description="Seconds of low load before removing replicas.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class ServingOptions(Strict):
    """Ray Serve admission settings: these *are* the queue. Nothing else queues requests."""

    max_ongoing_requests: int = Field(
        16, ge=1, description="Requests a replica runs at once; vLLM batches these together."
    )
    max_queued_requests: int = Field(
        64,
        ge=-1,
        description="Requests waiting for a replica before callers get 429/503; -1 means unbounded.",
    )
    autoscaling: AutoscalingOptions = Field(
        default_factory=AutoscalingOptions, description="Ray Serve autoscaling for this deployment."
    )
    backpressure_status: Literal[429, 503] = Field(
        429, description="Status of requests rejected because max_queued_requests is full."
    )
    retry_after_s: float = Field(2, ge=0, description="Retry-After sent with backpressure rejections.")
    health_check_period_s: float = Field(10, gt=0, description="How often Ray calls check_health.")
    health_check_timeout_s: float = Field(30, gt=0, description="How long a health check may take.")
    graceful_shutdown_timeout_s: float = Field(
        60,
        gt=0,
        description=(
            "Ray's graceful shutdown budget: how long a stopping replica (redeploy, downscale) lets "
            "open requests finish before Ray kills it. Requests still open `shutdown_cut_margin_s` "
            "before the kill end with a 503 / error event (code service_restarting or "
            "model_restarting) instead of being cut."
        ),
    )
    unload_drain_timeout_s: float | None = Field(
        None,
        gt=0,
        description=(
            "How long an unload lets open requests finish before they end with a 503 / error event "
            "(code model_unloading) and the engine stops; default: graceful_shutdown_timeout_s."
        ),
    )

    def unload_drain_s(self) -> float:
        if self.unload_drain_timeout_s is None:
            return self.graceful_shutdown_timeout_s
        return self.unload_drain_timeout_s

    def deployment_options(self) -> dict[str, object]:
        """Keyword arguments for `serve.deployment(...).options()`."""
        scaling = self.autoscaling
        return {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "autoscaling_config": {
                "min_replicas": scaling.min_replicas,
                "max_replicas": scaling.max_replicas,
                "initial_replicas": scaling.initial_replicas,
                "target_ongoing_requests": scaling.target_ongoing_requests,
                "upscale_delay_s": scaling.upscale_delay_s,
                "downscale_delay_s": scaling.downscale_delay_s,
            },
            "backpressure_config": {
                "status_code": self.backpressure_status,
                "retry_after_s": self.retry_after_s,
            },
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }


class ModelSpec(Strict):
    """One catalog entry: what to load and how much of a GPU it may take."""

    id: str = Field(description="Public model id, as clients send it in `model`.")
    hf_source: str = Field(description="Hugging Face repository of the weights.")
    description: str = Field(description="What this model is good at.")
    architecture: Architecture = Field(description="Shape numbers for the memory fit check.")
    weights_gb: float = Field(gt=0, description="Size of the weights in GB at the chosen dtype.")
    gpu_fraction: float = Field(gt=0, le=1, description="Ray `num_gpus` of one replica.")
    gpu_memory_utilization: float = Field(
        gt=0, le=0.98, description="Share of the whole GPU's memory that vLLM may take."
    )
    max_model_len: int = Field(gt=0, description="Context length the engine is started with.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weight and activation dtype."
    )
    quantization: str | None = Field(None, description="vLLM quantization method, if any.")
    reasoning_parser: str | None = Field(
        None,
        description="vLLM reasoning parser name (e.g. deepseek_r1); its output goes to reasoning_content.",
    )
    tool_parser: str | None = Field(
        None,
        description=(
            "vLLM tool parser name (e.g. hermes) that finds the model's own tool-call markup, needed "
            'for tool_choice "auto"; without one, only named and "required" tool choices are served.'
        ),
    )
    role_hints: tuple[Role, ...] = Field((Role.general,), description="Roles this model suits.")
    serving: ServingOptions = Field(
        default_factory=ServingOptions, description="Ray Serve admission and autoscaling settings."
    )

    @property
    def kv_bytes_per_token(self) -> int:
        # K and V, per layer, per KV head, at 2 bytes (fp16/bf16 KV cache).
        a = self.architecture
        return 2 * a.num_layers * a.num_kv_heads * a.head_dim * 2


class Catalog(Strict):
    models: tuple[ModelSpec, ...] = Field(description="Every model this service can deploy.")

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        ids = [m.id for m in self.models]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate model ids in catalog: {ids}")
        return self

    def get(self, model_id: str) -> ModelSpec:
        for model in self.models:
            if model.id == model_id:
                return model
        raise KeyError(model_id)


class GpuTarget(Strict):
    name: str = Field(description="GPU the preset is sized for, e.g. 'NVIDIA A10G'.")
    memory_gb: float = Field(gt=0, description="Memory of one GPU in GB.")
    count: int = Field(1, ge=1, description="GPUs on the node the preset is sized for.")


class Preset(Strict):
    """A named set of models with roles, e.g. D4: qwen2.5-7b generator + deepseek-r1-7b critic."""

    name: str = Field(description="Preset id, e.g. D4.")
    title: str = Field(description="Human-readable name.")
    models: tuple[str, ...] = Field(min_length=1, description="Catalog ids to deploy.")
    roles: dict[str, Role] = Field(default_factory=dict, description="Role of each model id.")
    orchestration_mode: OrchestrationMode = Field(
        OrchestrationMode.single, description="Default pipeline for requests that name none."
    )
    gpu: GpuTarget = Field(description="The GPU this preset must fit on.")
    critique_max_rounds: int = Field(2, ge=1, le=5, description="Default critique rounds.")

    @model_validator(mode="after")
    def _roles_name_models(self) -> Preset:
        unknown = set(self.roles) - set(self.models)
        if unknown:
            raise ValueError(f"roles name models outside the preset: {sorted(unknown)}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"preset lists a model twice: {list(self.models)}")
        if self.orchestration_mode is OrchestrationMode.critique:
            have = set(self.roles.values())
            if not {Role.generator, Role.critic} <= have:
                raise ValueError("critique mode needs one generator and one critic role")
        return self

    def model_with_role(self, role: Role) -> str | None:
        return next((m for m, r in self.roles.items() if r is role), None)
