"""Check, before anything is deployed, that a preset fits the GPU it targets.

vLLM pre-allocates `gpu_memory_utilization` x total GPU memory per engine, and needs the weights
plus at least one full `max_model_len` sequence of KV cache inside that share. Ray packs replicas
onto GPUs by `num_gpus`. Both must hold, on one GPU per model replica.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.config.loading import ConfigError
from serve_app.config.schema import Catalog, ModelSpec, Preset

# CUDA context, activations and sampler scratch that vLLM needs beyond weights and KV cache.
RUNTIME_OVERHEAD_GB = 1.0
# vLLM profiles memory and refuses to start when the utilisations on one GPU sum above 1.
MAX_TOTAL_UTILIZATION = 0.95


@dataclass(frozen=True)
class ModelFit:
    model_id: str
    budget_gb: float
    weights_gb: float
    kv_min_gb: float

    @property
    def spare_gb(self) -> float:
        return self.budget_gb - self.weights_gb - self.kv_min_gb - RUNTIME_OVERHEAD_GB


def model_fit(spec: ModelSpec, gpu_memory_gb: float) -> ModelFit:
    kv_min_gb = spec.kv_bytes_per_token * spec.max_model_len / 1e9
    return ModelFit(spec.id, spec.gpu_memory_utilization * gpu_memory_gb, spec.weights_gb, kv_min_gb)


def check_preset_fits(preset: Preset, catalog: Catalog) -> list[ModelFit]:
    """Return each model's fit, or raise ConfigError naming every number that does not add up."""
    specs = [catalog.get(model_id) for model_id in preset.models]
    gpu = preset.gpu
    problems: list[str] = []
    fits = [model_fit(spec, gpu.memory_gb) for spec in specs]
    for fit in fits:
        if fit.spare_gb < 0:
            problems.append(
                f"{fit.model_id}: budget {fit.budget_gb:.1f} GB of {gpu.name} < weights "
                f"{fit.weights_gb:.1f} GB + KV cache for one max-length sequence "
                f"{fit.kv_min_gb:.2f} GB + runtime {RUNTIME_OVERHEAD_GB:.1f} GB"
            )
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
    return fits
