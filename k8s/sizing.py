"""GPU worker sizing: which AWS instance type a preset's GPU worker group runs on, and how many.

`preset.gpu.name` picks the AWS instance family (GPU_INSTANCE_FAMILIES, the one table to edit for a
new GPU), and the smallest size of it with `preset.gpu.count` GPUs and room for the engines that can
share one node, the ingress replica and at least MIN_VCPUS_PER_GPU vCPUs per GPU is the node type.
Node counts come from packing the models' replica GPU fractions the
way Ray packs num_gpus.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from k8s.render_inputs import RenderError
from serve_app.config import Catalog, Preset
from serve_app.config.resources import GPU_INGRESS_CPUS, GPU_MODEL_REPLICA_CPUS

# Host (not GPU) memory one vLLM engine and its Serve replica use: CUDA context, torch, tokenizer,
# sampler buffers. Plus what the Ray node itself takes (raylet, agent, proxy, object store).
ENGINE_HOST_MEMORY_GIB = 6
RAY_NODE_MEMORY_GIB = 4
# Each model replica asks Ray for 1 CPU (deployments.app.actor_options), but a vLLM engine keeps
# more busy than that: the replica process (API, tokenizing, detokenizing) and the EngineCore process
# whose scheduler loop spins a core while it serves. The ingress replica (1 Ray CPU) runs on the GPU
# workers too: the head advertises no CPUs (k8s/rayservice_builder.py).
ENGINE_RAY_CPUS = GPU_MODEL_REPLICA_CPUS
ENGINE_HOST_VCPUS = 2
INGRESS_RAY_CPUS = GPU_INGRESS_CPUS
NODE_CPU_HEADROOM = 1
# Floor per GPU, as the GPU instance anchors (g6e.2xlarge, g5.2xlarge: 8 vCPUs per GPU) and vLLM's
# guidance (2+ cores per engine, plus tokenization) have it: a 4-vCPU xlarge starves two engines.
MIN_VCPUS_PER_GPU = 6
# What a GPU node leaves a pod: one vCPU and a quarter of memory stay for kubelet, the OS and the
# daemonsets (aws-node, kube-proxy, EFS CSI, NVIDIA device plugin, node exporter).
NODE_RESERVED_VCPUS = 1
NODE_ALLOCATABLE_MEMORY_SHARE = 0.75
# Float slack when summing replica GPU fractions: fractions that add up to exactly 1 must fit one GPU
# even when float rounding lands the sum a hair above 1.0.
_FRACTION_EPSILON = 1e-9


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    vcpus: int
    memory_gib: int

    @property
    def pod_cpus(self) -> int:
        return self.vcpus - NODE_RESERVED_VCPUS

    @property
    def pod_memory_gib(self) -> int:
        return int(self.memory_gib * NODE_ALLOCATABLE_MEMORY_SHARE)


@dataclass(frozen=True)
class GpuFamily:
    family: str
    gpu_memory_gb: float
    instance_types: tuple[InstanceType, ...]  # smallest first


# preset.gpu.name -> AWS EC2 instance family with that GPU. The one table to edit for a new GPU; the
# eksctl node groups and the Karpenter NodePool in k8s/cluster/ must offer the types presets use
# (tests/unit/test_k8s_manifests.py checks that).
# The 4-vCPU xlarge sizes are left out: below MIN_VCPUS_PER_GPU, no preset could use them.
GPU_INSTANCE_FAMILIES: dict[str, GpuFamily] = {
    "NVIDIA L40S": GpuFamily(
        family="g6e",
        gpu_memory_gb=48,
        instance_types=(
            InstanceType("g6e.2xlarge", gpus=1, vcpus=8, memory_gib=64),
            InstanceType("g6e.12xlarge", gpus=4, vcpus=48, memory_gib=384),
        ),
    ),
    "NVIDIA A10G": GpuFamily(
        family="g5",
        gpu_memory_gb=24,
        instance_types=(
            InstanceType("g5.2xlarge", gpus=1, vcpus=8, memory_gib=32),
            InstanceType("g5.12xlarge", gpus=4, vcpus=48, memory_gib=192),
        ),
    ),
}


@dataclass(frozen=True)
class WorkerSizing:
    instance: InstanceType
    family: GpuFamily
    engines_per_node: int
    min_nodes: int
    initial_nodes: int
    max_nodes: int
    ray_cpus: int
    memory_gib: int


def _gpus_needed(fractions: Iterable[float]) -> int:
    """GPUs for these replica fractions, packed first-fit decreasing as Ray packs num_gpus."""
    bins: list[float] = []
    for fraction in sorted(fractions, reverse=True):
        for i, used in enumerate(bins):
            if used + fraction <= 1.0 + _FRACTION_EPSILON:
                bins[i] = used + fraction
                break
        else:
            bins.append(fraction)
    return len(bins)


def _replica_fractions(preset: Preset, catalog: Catalog, which: str) -> list[float]:
    """One GPU fraction per model replica, at the `which` ("min", "initial" or "max") replica count."""
    fractions: list[float] = []
    for model_id in preset.models:
        spec = catalog.get(model_id)
        scaling = spec.serving.autoscaling
        initial = scaling.min_replicas if scaling.initial_replicas is None else scaling.initial_replicas
        count = {"min": scaling.min_replicas, "initial": initial, "max": scaling.max_replicas}[which]
        fractions += [spec.gpu_fraction] * count
    return fractions


def engines_per_node(preset: Preset, catalog: Catalog, gpus_per_node: int) -> int:
    """Most model replicas that can share one node's GPUs (smallest fractions first)."""
    fractions = sorted(_replica_fractions(preset, catalog, "max"))
    placed = 0
    bins = [0.0] * gpus_per_node
    for fraction in fractions:
        for i, used in enumerate(bins):
            if used + fraction <= 1.0 + _FRACTION_EPSILON:
                bins[i] = used + fraction
                placed += 1
                break
    return max(placed, 1)


def size_workers(preset: Preset, catalog: Catalog) -> WorkerSizing:
    family = GPU_INSTANCE_FAMILIES.get(preset.gpu.name)
    if family is None:
        raise RenderError(
            f"preset {preset.name}: no AWS instance family for GPU {preset.gpu.name!r}; "
            f"add it to GPU_INSTANCE_FAMILIES in k8s/sizing.py (known: {sorted(GPU_INSTANCE_FAMILIES)})"
        )
    if preset.gpu.memory_gb > family.gpu_memory_gb:
        raise RenderError(
            f"preset {preset.name}: sized for {preset.gpu.memory_gb} GB per GPU but {preset.gpu.name} "
            f"({family.family}) has {family.gpu_memory_gb} GB"
        )
    count = preset.gpu.count
    engines = engines_per_node(preset, catalog, count)
    need_cpus = max(
        engines * ENGINE_HOST_VCPUS + INGRESS_RAY_CPUS + NODE_CPU_HEADROOM, count * MIN_VCPUS_PER_GPU
    )
    need_memory = engines * ENGINE_HOST_MEMORY_GIB + RAY_NODE_MEMORY_GIB
    candidates = [t for t in family.instance_types if t.gpus == count]
    fitting = [t for t in candidates if t.pod_cpus >= need_cpus and t.pod_memory_gib >= need_memory]
    if not fitting:
        raise RenderError(
            f"preset {preset.name}: no {family.family} instance with {count} GPU(s) leaves {need_cpus} vCPUs "
            f"and {need_memory} GiB for {engines} engine(s); have {[t.name for t in candidates]}"
        )
    instance = fitting[0]

    def nodes(which: str) -> int:
        fractions = _replica_fractions(preset, catalog, which)
        return math.ceil(_gpus_needed(fractions) / count) if fractions else 0

    max_nodes = nodes("max")
    if max_nodes < 1:
        raise RenderError(f"preset {preset.name}: max_replicas of every model is 0")
    return WorkerSizing(
        instance=instance,
        family=family,
        engines_per_node=engines,
        min_nodes=nodes("min"),
        initial_nodes=nodes("initial"),
        max_nodes=max_nodes,
        ray_cpus=instance.pod_cpus,
        memory_gib=instance.pod_memory_gib,
    )
