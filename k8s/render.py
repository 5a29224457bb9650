"""Render one KubeRay RayService per preset into k8s/rayservice/<preset>.yaml.

    python -m k8s.render           # (re)write every k8s/rayservice/<preset>.yaml, drop stale ones
    python -m k8s.render --check   # exit 1, naming the files, if the checked-in ones differ

`serveConfigV2` is serve_config.yaml itself, with the application's `args.preset` set to the preset:
the RayService imports `serve_app.app:build_app` with the same arguments as `serve run
serve_config.yaml` on a GPU node. Before anything is written the arguments are validated with
AppArgs, the preset is loaded from presets/ like build_app loads it, its GPU fit is checked with
check_preset_fits (a preset that does not fit its GPU fails rendering, as it would fail the deploy),
the Serve config is validated with Ray's own ServeDeploySchema, and the manifest with the typed
KubeRay model in k8s/rayservice_schema.py.

The GPU worker group is sized from the preset: `preset.gpu.name` picks the AWS instance family
(GPU_INSTANCE_FAMILIES, the one table to edit for a new GPU), and the smallest size of it with
`preset.gpu.count` GPUs and room for the engines that can share one node is the node type.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from k8s.rayservice_schema import INITIALIZING_TIMEOUT_ANNOTATION, RayService
from serve_app.app import GPU_INGRESS_CPUS, GPU_MODEL_REPLICA_CPUS
from serve_app.config import (
    AppArgs,
    Catalog,
    Preset,
    check_preset_fits,
    list_presets,
    load_catalog,
    load_preset,
)
from serve_app.config.fit import RUNTIME_OVERHEAD_GB, ModelFit

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG_PATH = REPO_ROOT / "serve_config.yaml"
PYPROJECT_PATH = REPO_ROOT / "pyproject.toml"
OUTPUT_DIR = REPO_ROOT / "k8s" / "rayservice"
RENDER_COMMAND = "python -m k8s.render"

BUILDER_IMPORT_PATH = "serve_app.app:build_app"
NAMESPACE = "inference"
# One name for every preset: applying another preset's file is a KubeRay zero-downtime upgrade of the
# same RayService (new RayCluster, traffic switched when it is ready), and the LoadBalancer stays put.
RAYSERVICE_NAME = "inference"
SERVE_SERVICE_NAME = f"{RAYSERVICE_NAME}-serve-svc"
IMAGE_NAME = "inference-cluster"  # built from k8s/Dockerfile; kustomize `images:` points it at ECR
PRESET_LABEL = "inference-cluster/preset"

HF_TOKEN_SECRET = ("hf-token", "token")
API_KEYS_SECRET = "inference-api-keys"  # keys api-key and admin-key, both optional
MODEL_CACHE_CLAIM = "model-cache"  # ReadWriteMany PVC on EFS, k8s/model-cache-pvc.yaml
MODEL_CACHE_PATH = "/root/.cache/huggingface"

DASHBOARD_PORT = 8265
METRICS_PORT = 8080
GCS_PORT = 6379
CLIENT_PORT = 10001

GIB = 1024**3
# The Ray head runs GCS, the dashboard, the Serve controller, an HTTP proxy and the ingress replica
# (num_cpus 1 in serve_app.app) - the model directory takes no CPU and model replicas need a GPU.
HEAD_CPU = "2"
HEAD_MEMORY = "8Gi"
HEAD_RAY_CPUS = str(GPU_INGRESS_CPUS)
HEAD_OBJECT_STORE_BYTES = 1 * GIB
WORKER_OBJECT_STORE_BYTES = 2 * GIB
# Host (not GPU) memory one vLLM engine and its Serve replica use: CUDA context, torch, tokenizer,
# sampler buffers. Plus what the Ray node itself takes (raylet, agent, proxy, object store).
ENGINE_HOST_MEMORY_GIB = 6
RAY_NODE_MEMORY_GIB = 4
# Each model replica asks Ray for 1 CPU (serve_app.app.actor_options); vLLM's engine core and
# detokenizer threads need one more per node outside Ray's accounting.
ENGINE_RAY_CPUS = GPU_MODEL_REPLICA_CPUS
NODE_CPU_HEADROOM = 1
# What a GPU node leaves a pod: one vCPU and a quarter of memory stay for kubelet, the OS and the
# daemonsets (aws-node, kube-proxy, EFS CSI, NVIDIA device plugin, node exporter).
NODE_RESERVED_VCPUS = 1
NODE_ALLOCATABLE_MEMORY_SHARE = 0.75

# Ray's autoscaler keeps an idle GPU worker this long: a new one costs minutes of node boot, image
# pull and model load, so it should not churn between bursts.
WORKER_IDLE_TIMEOUT_S = 600
# After the preStop drain, `ray stop` gets this long before the kubelet kills the container.
RAY_STOP_GRACE_S = 30
# KubeRay fails a new RayService that has not become ready this long after it was created
# (ray.io/initializing-timeout; terminal: delete and re-apply). Budget: GPU node boot, pulling the
# multi-GB image, then the engines' start budget (AppArgs.engine_start_timeout_s), plus slack.
NODE_BOOT_BUDGET_S = 600
IMAGE_PULL_BUDGET_S = 600
INITIALIZING_SLACK_S = 600
# KubeRay < 1.1 read these; later versions accept and ignore them (kept, fitted to model loading,
# for anyone on an older operator). The service threshold is the engine start budget.
DEPLOYMENT_UNHEALTHY_SECOND_THRESHOLD = 600


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
GPU_INSTANCE_FAMILIES: dict[str, GpuFamily] = {
    "NVIDIA L40S": GpuFamily(
        family="g6e",
        gpu_memory_gb=48,
        instance_types=(
            InstanceType("g6e.xlarge", gpus=1, vcpus=4, memory_gib=32),
            InstanceType("g6e.2xlarge", gpus=1, vcpus=8, memory_gib=64),
            InstanceType("g6e.12xlarge", gpus=4, vcpus=48, memory_gib=384),
        ),
    ),
    "NVIDIA A10G": GpuFamily(
        family="g5",
        gpu_memory_gb=24,
        instance_types=(
            InstanceType("g5.xlarge", gpus=1, vcpus=4, memory_gib=16),
            InstanceType("g5.2xlarge", gpus=1, vcpus=8, memory_gib=32),
            InstanceType("g5.12xlarge", gpus=4, vcpus=48, memory_gib=192),
        ),
    ),
}


class RenderError(ValueError):
    """A preset cannot be rendered: unknown GPU, no instance type fits, invalid Serve config."""


@dataclass(frozen=True)
class ProjectInfo:
    version: str
    ray_version: str


def project_info(pyproject: Path = PYPROJECT_PATH) -> ProjectInfo:
    """The image tag (project version) and rayVersion (the pinned ray[serve]) from pyproject.toml."""
    project = tomllib.loads(pyproject.read_text())["project"]
    ray_pins = [d for d in project["dependencies"] if d.replace(" ", "").startswith("ray[serve]==")]
    if len(ray_pins) != 1:
        raise RenderError(f"pyproject.toml must pin ray[serve]==X.Y.Z exactly once, found {ray_pins}")
    return ProjectInfo(version=project["version"], ray_version=ray_pins[0].split("==", 1)[1].strip())


def image_ref(info: ProjectInfo) -> str:
    return f"{IMAGE_NAME}:{info.version}"


def load_serve_config(path: Path = SERVE_CONFIG_PATH) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    apps = config.get("applications") or []
    if len(apps) != 1:
        raise RenderError(f"{path.name}: expected exactly one application, found {len(apps)}")
    if apps[0].get("import_path") != BUILDER_IMPORT_PATH:
        raise RenderError(f"{path.name}: application must import {BUILDER_IMPORT_PATH}")
    return config


def serve_config_for(base: dict[str, Any], preset: str) -> tuple[dict[str, Any], AppArgs]:
    """serve_config.yaml with args.preset set to `preset`, and its arguments validated by AppArgs."""
    config = copy.deepcopy(base)
    app = config["applications"][0]
    app["args"] = {**(app.get("args") or {}), "preset": preset}
    args = AppArgs.model_validate(app["args"])
    if args.profile != "gpu":
        raise RenderError(f"RayServices run the gpu profile; serve_config.yaml says {args.profile!r}")
    from ray.serve.schema import ServeDeploySchema  # pydantic only: no Ray runtime is started

    ServeDeploySchema.model_validate(config)
    return config, args


# --- sizing -------------------------------------------------------------------------------------


def _gpus_needed(fractions: Iterable[float]) -> int:
    """GPUs for these replica fractions, packed first-fit decreasing as Ray packs num_gpus."""
    bins: list[float] = []
    for fraction in sorted(fractions, reverse=True):
        for i, used in enumerate(bins):
            if used + fraction <= 1.0 + 1e-9:
                bins[i] = used + fraction
                break
        else:
            bins.append(fraction)
    return len(bins)


def _replica_fractions(preset: Preset, catalog: Catalog, which: str) -> list[float]:
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
            if used + fraction <= 1.0 + 1e-9:
                bins[i] = used + fraction
                placed += 1
                break
    return max(placed, 1)


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


def size_workers(preset: Preset, catalog: Catalog) -> WorkerSizing:
    family = GPU_INSTANCE_FAMILIES.get(preset.gpu.name)
    if family is None:
        raise RenderError(
            f"preset {preset.name}: no AWS instance family for GPU {preset.gpu.name!r}; "
            f"add it to GPU_INSTANCE_FAMILIES in k8s/render.py (known: {sorted(GPU_INSTANCE_FAMILIES)})"
        )
    if preset.gpu.memory_gb > family.gpu_memory_gb:
        raise RenderError(
            f"preset {preset.name}: sized for {preset.gpu.memory_gb} GB per GPU but {preset.gpu.name} "
            f"({family.family}) has {family.gpu_memory_gb} GB"
        )
    count = preset.gpu.count
    engines = engines_per_node(preset, catalog, count)
    need_cpus = engines * ENGINE_RAY_CPUS + NODE_CPU_HEADROOM
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


def drain_seconds(preset: Preset, catalog: Catalog, args: AppArgs) -> int:
    """How long a stopping pod waits before `ray stop`: the longest Serve graceful shutdown."""
    timeouts = [catalog.get(m).serving.graceful_shutdown_timeout_s for m in preset.models]
    return math.ceil(max([*timeouts, args.ingress.graceful_shutdown_timeout_s]))


def initializing_timeout(args: AppArgs) -> str:
    seconds = NODE_BOOT_BUDGET_S + IMAGE_PULL_BUDGET_S + args.engine_start_timeout_s + INITIALIZING_SLACK_S
    return f"{math.ceil(seconds / 60)}m"


# --- manifest -----------------------------------------------------------------------------------


def _labels(preset: str, info: ProjectInfo) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "inference-cluster",
        "app.kubernetes.io/part-of": "inference-cluster",
        "app.kubernetes.io/version": info.version,
        PRESET_LABEL: preset,
    }


def _env() -> list[dict[str, Any]]:
    secret, key = HF_TOKEN_SECRET
    return [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}},
        {"name": "HF_HOME", "value": MODEL_CACHE_PATH},
        {
            "name": "INFERENCE_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": API_KEYS_SECRET, "key": "api-key", "optional": True}},
        },
        {
            "name": "INFERENCE_ADMIN_KEY",
            "valueFrom": {"secretKeyRef": {"name": API_KEYS_SECRET, "key": "admin-key", "optional": True}},
        },
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]


def _volumes(shm_size: str) -> list[dict[str, Any]]:
    return [
        {"name": "model-cache", "persistentVolumeClaim": {"claimName": MODEL_CACHE_CLAIM}},
        # Ray's object store lives in /dev/shm; the container default (64 MiB) is too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
    ]


def _volume_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "model-cache", "mountPath": MODEL_CACHE_PATH},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]


def _lifecycle(drain_s: int) -> dict[str, Any]:
    # The pod leaves the Service endpoints as soon as it starts terminating; the sleep lets requests
    # and SSE streams already on it finish before Ray shuts down.
    return {"preStop": {"exec": {"command": ["/bin/sh", "-c", f"sleep {drain_s}; ray stop"]}}}


def _port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def build_rayservice(
    preset: Preset, catalog: Catalog, args: AppArgs, serve_config: dict[str, Any], info: ProjectInfo
) -> dict[str, Any]:
    sizing = size_workers(preset, catalog)
    drain_s = drain_seconds(preset, catalog, args)
    serve_port = int(serve_config["http_options"]["port"])
    image = image_ref(info)
    labels = _labels(preset.name, info)
    count = str(preset.gpu.count)

    head_container = {
        "name": "ray-head",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            _port("gcs-server", GCS_PORT),
            _port("dashboard", DASHBOARD_PORT),
            _port("client", CLIENT_PORT),
            _port("metrics", METRICS_PORT),
            _port("serve", serve_port),
        ],
        "env": _env(),
        "resources": {
            "requests": {"cpu": HEAD_CPU, "memory": HEAD_MEMORY},
            "limits": {"cpu": HEAD_CPU, "memory": HEAD_MEMORY},
        },
        "volumeMounts": _volume_mounts(),
        "lifecycle": _lifecycle(drain_s),
    }
    worker_resources = {
        "cpu": str(sizing.ray_cpus),
        "memory": f"{sizing.memory_gib}Gi",
        "nvidia.com/gpu": count,
    }
    worker_container = {
        "name": "ray-worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        # KubeRay's readiness probe checks the Serve proxy on the port named "serve".
        "ports": [_port("metrics", METRICS_PORT), _port("serve", serve_port)],
        "env": _env(),
        "resources": {"requests": dict(worker_resources), "limits": dict(worker_resources)},
        "volumeMounts": _volume_mounts(),
        "lifecycle": _lifecycle(drain_s),
    }
    grace_s = drain_s + RAY_STOP_GRACE_S
    head_pod = {
        "metadata": {"labels": {**labels, "app.kubernetes.io/component": "ray-head"}},
        "spec": {
            "terminationGracePeriodSeconds": grace_s,
            "containers": [head_container],
            "volumes": _volumes(f"{HEAD_OBJECT_STORE_BYTES // GIB + 1}Gi"),
        },
    }
    worker_pod = {
        "metadata": {"labels": {**labels, "app.kubernetes.io/component": "ray-gpu-worker"}},
        "spec": {
            "terminationGracePeriodSeconds": grace_s,
            "nodeSelector": {"node.kubernetes.io/instance-type": sizing.instance.name},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [worker_container],
            "volumes": _volumes(f"{WORKER_OBJECT_STORE_BYTES // GIB + 1}Gi"),
        },
    }
    manifest: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": RAYSERVICE_NAME,
            "labels": labels,
            "annotations": {INITIALIZING_TIMEOUT_ANNOTATION: initializing_timeout(args)},
        },
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "serviceUnhealthySecondThreshold": math.ceil(args.engine_start_timeout_s),
            "deploymentUnhealthySecondThreshold": DEPLOYMENT_UNHEALTHY_SECOND_THRESHOLD,
            "upgradeStrategy": {"type": "NewCluster"},
            "rayClusterDeletionDelaySeconds": drain_s,
            "serveService": {
                "metadata": {
                    "name": SERVE_SERVICE_NAME,
                    "labels": labels,
                    # Network Load Balancer (idle timeout 350 s; a Classic ELB cuts idle streams at 60 s).
                    "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                },
                "spec": {
                    "type": "LoadBalancer",
                    "ports": [
                        {"name": "serve", "port": serve_port, "targetPort": serve_port, "protocol": "TCP"}
                    ],
                },
            },
            "rayClusterConfig": {
                "rayVersion": info.ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {
                    "upscalingMode": "Default",
                    "idleTimeoutSeconds": WORKER_IDLE_TIMEOUT_S,
                    "version": "v2",
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "512Mi"},
                        "limits": {"cpu": "500m", "memory": "512Mi"},
                    },
                },
                "authOptions": {"mode": "token"},
                "headGroupSpec": {
                    "rayStartParams": {
                        "num-cpus": HEAD_RAY_CPUS,
                        "num-gpus": "0",
                        "dashboard-host": "0.0.0.0",
                        "metrics-export-port": str(METRICS_PORT),
                        "object-store-memory": str(HEAD_OBJECT_STORE_BYTES),
                    },
                    "template": head_pod,
                },
                "workerGroupSpecs": [
                    {
                        "groupName": f"gpu-{sizing.instance.name.replace('.', '-')}",
                        "replicas": sizing.initial_nodes,
                        "minReplicas": sizing.min_nodes,
                        "maxReplicas": sizing.max_nodes,
                        "idleTimeoutSeconds": WORKER_IDLE_TIMEOUT_S,
                        "rayStartParams": {
                            "num-cpus": str(sizing.ray_cpus),
                            "num-gpus": count,
                            "metrics-export-port": str(METRICS_PORT),
                            "object-store-memory": str(WORKER_OBJECT_STORE_BYTES),
                        },
                        "template": worker_pod,
                    }
                ],
            },
        },
    }
    RayService.model_validate(manifest)
    return manifest


# --- output -------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: every block reads on its own
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _fit_lines(preset: Preset, fits: list[ModelFit], sizing: WorkerSizing) -> list[str]:
    gpu = preset.gpu
    lines = [
        f"GPU fit (serve_app/config/fit.py) on {gpu.count} x {gpu.name} {gpu.memory_gb:g} GB:",
    ]
    for fit in fits:
        lines.append(
            f"  {fit.model_id}: budget {fit.budget_gb:.1f} GB = weights {fit.weights_gb:.1f} + KV for one "
            f"max-length sequence {fit.kv_min_gb:.2f} + runtime {RUNTIME_OVERHEAD_GB:.1f} "
            f"+ spare {fit.spare_gb:.1f}"
        )
    inst = sizing.instance
    lines.append(
        f"GPU workers: {inst.name} ({inst.gpus} GPU, {inst.vcpus} vCPU, {inst.memory_gib} GiB), "
        f"up to {sizing.engines_per_node} engine(s) per node, {sizing.min_nodes}..{sizing.max_nodes} node(s)"
    )
    return lines


def render_preset(
    name: str, base_config: dict[str, Any] | None = None, info: ProjectInfo | None = None
) -> str:
    """The YAML text of k8s/rayservice/<name>.yaml."""
    base_config = base_config if base_config is not None else load_serve_config()
    info = info or project_info()
    serve_config, args = serve_config_for(base_config, name)
    catalog = load_catalog(args.resolve(args.catalog_path))
    preset = load_preset(args.resolve(args.presets_dir), args.preset, catalog)
    fits = check_preset_fits(preset, catalog)  # raises ConfigError: a preset that does not fit fails here
    manifest = build_rayservice(preset, catalog, args, serve_config, info)
    header = [
        f"Generated by `{RENDER_COMMAND}` from serve_config.yaml and presets/{name}.yaml - do not edit.",
        f"Preset {preset.name}: {preset.title}; models {', '.join(preset.models)}.",
        *_fit_lines(preset, fits, size_workers(preset, catalog)),
    ]
    body = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    return "".join(f"# {line}\n" for line in header) + body


def preset_names() -> list[str]:
    args = AppArgs.model_validate(load_serve_config()["applications"][0].get("args") or {})
    return list_presets(args.resolve(args.presets_dir))


def render_all() -> dict[Path, str]:
    """Every preset's RayService: {output path: YAML text}."""
    base = load_serve_config()
    info = project_info()
    return {OUTPUT_DIR / f"{name}.yaml": render_preset(name, base, info) for name in preset_names()}


def drift(rendered: dict[Path, str]) -> list[str]:
    """Files whose checked-in text differs from `rendered`, is missing, or belongs to no preset."""
    problems = []
    for path, text in rendered.items():
        if not path.is_file():
            problems.append(f"{path.relative_to(REPO_ROOT)} is missing")
        elif path.read_text() != text:
            problems.append(f"{path.relative_to(REPO_ROOT)} differs from its rendering")
    for path in sorted(OUTPUT_DIR.glob("*.yaml")):
        if path not in rendered:
            problems.append(f"{path.relative_to(REPO_ROOT)} belongs to no preset")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=RENDER_COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ; exit 1 if any")
    options = parser.parse_args(argv)
    rendered = render_all()
    problems = drift(rendered)
    if options.check:
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"run `{RENDER_COMMAND}` and commit the result", file=sys.stderr)
        return 1 if problems else 0
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in rendered.items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    for path in sorted(OUTPUT_DIR.glob("*.yaml")):
        if path not in rendered:
            path.unlink()
            print(f"removed {path.relative_to(REPO_ROOT)} (no such preset)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
