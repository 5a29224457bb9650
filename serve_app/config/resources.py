"""Ray resources of each replica, shared by the application builder (deployments/app.py) and the
Kubernetes renderer (k8s/sizing.py), which sizes pods from the same numbers without importing the
builder (and with it Ray Serve and every deployment)."""

from __future__ import annotations

# vLLM on the GPU sizes its KV cache from gpu_memory_utilization; on the CPU it ignores it and
# reads VLLM_CPU_KVCACHE_SPACE, but still refuses values above what a "device" would allow.
CPU_GPU_MEMORY_UTILIZATION = 0.05
# Ray CPUs per replica on a GPU node.
GPU_MODEL_REPLICA_CPUS = 1
GPU_INGRESS_CPUS = 1
# Ray CPUs of the ingress on the CPU profile (each model's are `AppArgs.cpu.num_cpus`).
CPU_INGRESS_CPUS = 0.25
