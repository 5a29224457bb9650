"""Check, before anything is deployed, that a preset fits the GPU it targets.

vLLM pre-allocates `gpu_memory_utilization` x the GPU memory torch reports (not the nominal size)
per engine. Inside that share it needs the weights, its runtime (CUDA context, the activation peak of
its profiling run, and the CUDA graphs it captures by default), and at least one full
`max_model_len` sequence of KV cache; what is left is KV cache shared by the concurrent requests.
Ray packs replicas onto GPUs by `num_gpus`. All of that must hold, on one GPU per model replica, and
`max_model_len` may not exceed the checkpoint's `max_position_embeddings` (vLLM refuses it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from serve_app.config.loading import ConfigError
from serve_app.config.schema import Catalog, GpuTarget, ModelSpec, Preset

logger = logging.getLogger("ray.serve")

# vLLM profiles memory and refuses to start when the utilisations on one GPU sum above 1.
MAX_TOTAL_UTILIZATION = 0.95

# Total memory torch.cuda.mem_get_info reports, in GB (1e9): what vLLM multiplies
# gpu_memory_utilization by. It is below the marketing size (the driver and ECC keep some).
TORCH_TOTAL_MEMORY_GB: dict[str, float] = {
    "NVIDIA L40S": 47.8,  # 44.5 GiB of the nominal 48 GB
    "NVIDIA A10G": 23.7,  # 22.1 GiB of the nominal 24 GB
}
# A GPU not in the table is taken as this share of its preset's nominal memory_gb.
UNKNOWN_GPU_USABLE_SHARE = 0.95

# The runtime vLLM needs beside weights and KV cache, modelled by model size (GB, per B params):
# - the CUDA context, NCCL and cuBLAS workspaces (non-torch memory), about 1 GB whatever the model;
# - the activation peak of the profiling forward pass over max_num_batched_tokens, growing with the
#   hidden and MLP sizes, hence with the parameter count;
# - the CUDA graphs vLLM captures by default (unless enforce_eager) since 0.21 and counts in its
#   profile: a fixed part per captured batch size plus a part growing with the layers.
CUDA_CONTEXT_GB = 1.0
ACTIVATION_GB_PER_B_PARAMS = 0.08
CUDA_GRAPH_BASE_GB = 0.5
CUDA_GRAPH_GB_PER_B_PARAMS = 0.05

# A request of typical length (prompt + completion) when judging whether a replica's KV cache holds
# `max_ongoing_requests` at once; below that, vLLM queues or preempts inside the replica.
TYPICAL_REQUEST_TOKENS = 2048


def usable_memory_gb(gpu: GpuTarget) -> float:
    """The GPU memory torch reports for `gpu`: what vLLM's gpu_memory_utilization is a share of."""
    return TORCH_TOTAL_MEMORY_GB.get(gpu.name, gpu.memory_gb * UNKNOWN_GPU_USABLE_SHARE)


def runtime_overhead_gb(spec: ModelSpec, *, cuda_graphs: bool = True) -> float:
    """CUDA context + activation peak + (unless eager) CUDA graphs, by model size."""
    params_b = spec.architecture.params_b
    graphs = CUDA_GRAPH_BASE_GB + CUDA_GRAPH_GB_PER_B_PARAMS * params_b if cuda_graphs else 0.0
    return CUDA_CONTEXT_GB + ACTIVATION_GB_PER_B_PARAMS * params_b + graphs


@dataclass(frozen=True)
class ModelFit:
    model_id: str
    budget_gb: float
    weights_gb: float
    kv_min_gb: float
    runtime_gb: float
    kv_bytes_per_token: int
    max_ongoing_requests: int
    warnings: tuple[str, ...] = field(default=())

    @property
    def kv_capacity_gb(self) -> float:
        """KV cache vLLM will allocate: the budget less weights and runtime."""
        return self.budget_gb - self.weights_gb - self.runtime_gb

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache one replica holds, shared by its concurrent requests."""
        return max(0, int(self.kv_capacity_gb * 1e9 // self.kv_bytes_per_token))

    @property
    def spare_gb(self) -> float:
        """KV cache beyond one max-length sequence; negative means the engine will not start."""
        return self.kv_capacity_gb - self.kv_min_gb


def model_fit(spec: ModelSpec, gpu: GpuTarget, max_ongoing_requests: int | None = None) -> ModelFit:
    ongoing = spec.serving.max_ongoing_requests if max_ongoing_requests is None else max_ongoing_requests
    fit = ModelFit(
        model_id=spec.id,
        budget_gb=spec.gpu_memory_utilization * usable_memory_gb(gpu),
        weights_gb=spec.weights_gb,
        kv_min_gb=spec.kv_bytes_per_token * spec.max_model_len / 1e9,
        runtime_gb=runtime_overhead_gb(spec),
        kv_bytes_per_token=spec.kv_bytes_per_token,
        max_ongoing_requests=ongoing,
    )
    wanted = ongoing * TYPICAL_REQUEST_TOKENS
    if fit.spare_gb >= 0 and fit.kv_capacity_tokens < wanted:
        warning = (
            f"{spec.id}: KV cache holds {fit.kv_capacity_tokens} tokens per replica, less than "
            f"max_ongoing_requests {ongoing} x {TYPICAL_REQUEST_TOKENS} typical tokens = {wanted}; "
            "vLLM will queue or preempt inside the replica under full load"
        )
        fit = replace(fit, warnings=(warning,))
    return fit


def _model_problems(spec: ModelSpec, fit: ModelFit, gpu: GpuTarget) -> list[str]:
    problems = []
    limit = spec.architecture.max_position_embeddings
    if spec.max_model_len > limit:
        problems.append(
            f"{spec.id}: max_model_len {spec.max_model_len} > the checkpoint's max_position_embeddings "
            f"{limit} (vLLM refuses a longer context without RoPE scaling)"
        )
    if fit.spare_gb < 0:
        problems.append(
            f"{fit.model_id}: budget {fit.budget_gb:.1f} GB of {gpu.name} "
            f"({usable_memory_gb(gpu):.1f} GB usable) < weights {fit.weights_gb:.1f} GB + runtime "
            f"{fit.runtime_gb:.2f} GB + KV cache for one max-length sequence {fit.kv_min_gb:.2f} GB"
        )
    return problems


def check_preset_fits(
    preset: Preset, catalog: Catalog, max_ongoing: dict[str, int] | None = None
) -> list[ModelFit]:
    """Return each model's fit, or raise ConfigError naming every number that does not add up.

    `max_ongoing` overrides a model's catalog `max_ongoing_requests` (AppArgs.serving_overrides).
    Warnings (KV cache short of max_ongoing_requests typical requests) are logged and kept on the fits.
    """
    specs = [catalog.get(model_id) for model_id in preset.models]
    gpu = preset.gpu
    problems: list[str] = []
    fits = [model_fit(spec, gpu, (max_ongoing or {}).get(spec.id)) for spec in specs]
    for spec, fit in zip(specs, fits, strict=True):
        problems += _model_problems(spec, fit, gpu)
    # Pack onto GPUs in catalog order, first-fit by Ray fraction, as Ray's scheduler would.
    gpus: list[list[ModelSpec]] = []
    for spec in specs:
        for placed in gpus:
            if sum(s.gpu_fraction for s in placed) + spec.gpu_fraction <= 1.0 + 1e-9:
                placed.append(spec)
                break
        else:
            gpus.append([spec])
    if len(gpus) > gpu.count:
        problems.append(
            f"GPU fractions {[s.gpu_fraction for s in specs]} need {len(gpus)} GPUs; "
            f"the preset targets {gpu.count}"
        )
    for index, placed in enumerate(gpus):
        total = sum(s.gpu_memory_utilization for s in placed)
        if total > MAX_TOTAL_UTILIZATION + 1e-9:
            problems.append(
                f"GPU {index} ({gpu.name}, {gpu.memory_gb:.0f} GB): gpu_memory_utilization of "
                f"{[s.id for s in placed]} sums to {total:.2f} > {MAX_TOTAL_UTILIZATION}"
            )
    if problems:
        raise ConfigError(f"preset {preset.name} does not fit: " + "; ".join(problems))
    for fit in fits:
        logger.info(
            "preset %s: %s holds %d tokens of KV cache per replica (%.2f GB after weights %.1f GB and "
            "runtime %.2f GB)",
            preset.name,
            fit.model_id,
            fit.kv_capacity_tokens,
            fit.kv_capacity_gb,
            fit.weights_gb,
            fit.runtime_gb,
        )
        for warning in fit.warnings:
            logger.warning("preset %s: %s", preset.name, warning)
    return fits
