"""Build the KubeRay RayService dict of one preset.

The manifest carries the preset's Serve config as `serveConfigV2`, a CPU-only Ray head that runs no
replicas (`num-cpus: 0`: GCS, dashboard, Serve controller, HTTP proxy) and one GPU worker group sized
by k8s/sizing.py that runs the engines and the ingress replica. The Serve Service is a TLS-terminating
NLB, the API key Secret is required, and the GPU pods tell Karpenter not to disrupt them. The
result is validated with the typed KubeRay model in k8s/rayservice_schema.py
before it is returned, so a field the operator would silently drop fails rendering instead.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from deployments.ingress.tenancy.keys import ALLOW_ANONYMOUS_ENV, REQUIRE_API_KEY_ENV
from k8s.rayservice_schema import INITIALIZING_TIMEOUT_ANNOTATION, RayService
from k8s.render_inputs import HAPROXY_HARD_STOP_AFTER_S, ProjectInfo
from k8s.sizing import WorkerSizing, size_workers
from serve_app.config import AppArgs, Catalog, Preset

NAMESPACE = "inference"
# One name for every preset: applying another preset's file is a KubeRay zero-downtime upgrade of the
# same RayService (new RayCluster, traffic switched when it is ready), and the LoadBalancer stays put.
RAYSERVICE_NAME = "inference"
SERVE_SERVICE_NAME = f"{RAYSERVICE_NAME}-serve-svc"
IMAGE_NAME = "inference-cluster"  # built from k8s/Dockerfile; kustomize `images:` points it at ECR
PRESET_LABEL = "inference-cluster/preset"

HF_TOKEN_SECRET = ("hf-token", "token")
API_KEYS_SECRET = "inference-api-keys"  # key api-key required; admin-key and allow-anonymous optional
# The ingress refuses to start without an API key unless the Secret says allow-anonymous: "true"
# (deployments/ingress/http_guard.py): an internet-facing endpoint is never open by accident.
# The tenants' keys file (README "Tenants"), optional: mounted as a file so that an edit of the Secret
# reaches the pods (kubelet swaps the file) and is reloaded without a restart.
KEYS_FILE_SECRET = "inference-keys-file"  # key keys.yaml
KEYS_FILE_DIR = "/etc/inference/keys"
MODEL_CACHE_CLAIM = "model-cache"  # ReadWriteMany PVC on EFS, k8s/model-cache-pvc.yaml
MODEL_CACHE_PATH = "/root/.cache/huggingface"

DASHBOARD_PORT = 8265
METRICS_PORT = 8080
GCS_PORT = 6379
CLIENT_PORT = 10001

GIB = 1024**3
# The Ray head runs GCS, the dashboard, the Serve controller and an HTTP proxy. As in KubeRay's
# samples it advertises no CPUs to Ray, so no replica that needs one (the ingress) lands there: the
# ingress runs on the GPU workers (k8s/sizing.py counts its CPU), and a busy head never slows it.
HEAD_CPU = "2"
HEAD_MEMORY = "8Gi"
HEAD_RAY_CPUS = "0"

# The Serve Service: an internet-facing AWS Network Load Balancer terminating TLS on 443 with an ACM
# certificate, forwarding to the Serve port. A TLS listener's idle timeout is fixed at 350 s, so
# serveConfigV2's request_timeout_s is held below it (k8s/render_inputs.py): a request Serve would
# still be working on is never cut silently by the NLB.
TLS_PORT = 443
# kustomization.yaml patches this with the real certificate ARN (docs/deploy-eks.md, step 10); an NLB
# with it unreplaced fails to provision instead of serving plain HTTP.
ACM_CERTIFICATE_PLACEHOLDER = "arn:aws:acm:REGION:ACCOUNT_ID:certificate/SET-ME"
NLB_ANNOTATIONS = {
    "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
    "service.beta.kubernetes.io/aws-load-balancer-ssl-cert": ACM_CERTIFICATE_PLACEHOLDER,
    "service.beta.kubernetes.io/aws-load-balancer-ssl-ports": str(TLS_PORT),
}
# Karpenter never drains a node for consolidation or drift while a pod with this runs: replacing
# the one GPU worker would be a 10-20 minute outage. Upgrades roll through a RayService NewCluster
# upgrade instead (docs/deploy-eks.md, "How upgrades roll").
DO_NOT_DISRUPT_ANNOTATION = "karpenter.sh/do-not-disrupt"
HEAD_OBJECT_STORE_BYTES = 1 * GIB
WORKER_OBJECT_STORE_BYTES = 2 * GIB

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


def image_ref(info: ProjectInfo) -> str:
    return f"{IMAGE_NAME}:{info.version}"


def drain_seconds(preset: Preset, catalog: Catalog, args: AppArgs) -> int:
    """How long a stopping pod waits before `ray stop`: the longest Serve graceful shutdown."""
    timeouts = [
        args.serving_overrides.get(m, catalog.get(m).serving).graceful_shutdown_timeout_s
        for m in preset.models
    ]
    return math.ceil(max([*timeouts, args.ingress.graceful_shutdown_timeout_s]))


def initializing_timeout(args: AppArgs) -> str:
    seconds = NODE_BOOT_BUDGET_S + IMAGE_PULL_BUDGET_S + args.engine_start_timeout_s + INITIALIZING_SLACK_S
    return f"{math.ceil(seconds / 60)}m"


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
            "valueFrom": {"secretKeyRef": {"name": API_KEYS_SECRET, "key": "api-key"}},
        },
        {"name": REQUIRE_API_KEY_ENV, "value": "1"},
        {
            "name": ALLOW_ANONYMOUS_ENV,
            "valueFrom": {
                "secretKeyRef": {"name": API_KEYS_SECRET, "key": "allow-anonymous", "optional": True}
            },
        },
        {
            "name": "INFERENCE_ADMIN_KEY",
            "valueFrom": {"secretKeyRef": {"name": API_KEYS_SECRET, "key": "admin-key", "optional": True}},
        },
        {"name": "INFERENCE_KEYS_FILE", "value": f"{KEYS_FILE_DIR}/keys.yaml"},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        # Ray Serve's high-throughput mode, as scripts/cluster.sh runs it (docs/benchmarks.md):
        # HAProxy on the Serve port, the ingress replica serving HTTP itself, gRPC between replicas.
        {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"},
        {"name": "RAY_SERVE_THROUGHPUT_OPTIMIZED", "value": "1"},
        {"name": "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S", "value": str(HAPROXY_HARD_STOP_AFTER_S)},
    ]


def _volumes(shm_size: str) -> list[dict[str, Any]]:
    return [
        {"name": "model-cache", "persistentVolumeClaim": {"claimName": MODEL_CACHE_CLAIM}},
        # Ray's object store lives in /dev/shm; the container default (64 MiB) is too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
        {"name": "keys-file", "secret": {"secretName": KEYS_FILE_SECRET, "optional": True}},
    ]


def _volume_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "model-cache", "mountPath": MODEL_CACHE_PATH},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "keys-file", "mountPath": KEYS_FILE_DIR, "readOnly": True},
    ]


def _lifecycle(drain_s: int) -> dict[str, Any]:
    # The pod leaves the Service endpoints as soon as it starts terminating; the sleep lets requests
    # and SSE streams already on it finish before Ray shuts down.
    return {"preStop": {"exec": {"command": ["/bin/sh", "-c", f"sleep {drain_s}; ray stop"]}}}


def _port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def _head_group_spec(image: str, labels: dict[str, str], serve_port: int, drain_s: int) -> dict[str, Any]:
    container = {
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
    pod = {
        "metadata": {
            "labels": {**labels, "app.kubernetes.io/component": "ray-head"},
            "annotations": {DO_NOT_DISRUPT_ANNOTATION: "true"},
        },
        "spec": {
            "terminationGracePeriodSeconds": drain_s + RAY_STOP_GRACE_S,
            "containers": [container],
            "volumes": _volumes(f"{HEAD_OBJECT_STORE_BYTES // GIB + 1}Gi"),
        },
    }
    return {
        "rayStartParams": {
            "num-cpus": HEAD_RAY_CPUS,
            "num-gpus": "0",
            "dashboard-host": "0.0.0.0",
            "metrics-export-port": str(METRICS_PORT),
            "object-store-memory": str(HEAD_OBJECT_STORE_BYTES),
        },
        "template": pod,
    }


def _gpu_worker_group_spec(
    sizing: WorkerSizing,
    gpus_per_node: str,
    image: str,
    labels: dict[str, str],
    serve_port: int,
    drain_s: int,
) -> dict[str, Any]:
    resources = {
        "cpu": str(sizing.ray_cpus),
        "memory": f"{sizing.memory_gib}Gi",
        "nvidia.com/gpu": gpus_per_node,
    }
    container = {
        "name": "ray-worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        # KubeRay's readiness probe checks the Serve proxy on the port named "serve".
        "ports": [_port("metrics", METRICS_PORT), _port("serve", serve_port)],
        "env": _env(),
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": _volume_mounts(),
        "lifecycle": _lifecycle(drain_s),
    }
    pod = {
        "metadata": {
            "labels": {**labels, "app.kubernetes.io/component": "ray-gpu-worker"},
            "annotations": {DO_NOT_DISRUPT_ANNOTATION: "true"},
        },
        "spec": {
            "terminationGracePeriodSeconds": drain_s + RAY_STOP_GRACE_S,
            "nodeSelector": {"node.kubernetes.io/instance-type": sizing.instance.name},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [container],
            "volumes": _volumes(f"{WORKER_OBJECT_STORE_BYTES // GIB + 1}Gi"),
        },
    }
    return {
        "groupName": f"gpu-{sizing.instance.name.replace('.', '-')}",
        "replicas": sizing.initial_nodes,
        "minReplicas": sizing.min_nodes,
        "maxReplicas": sizing.max_nodes,
        "idleTimeoutSeconds": WORKER_IDLE_TIMEOUT_S,
        "rayStartParams": {
            "num-cpus": str(sizing.ray_cpus),
            "num-gpus": gpus_per_node,
            "metrics-export-port": str(METRICS_PORT),
            "object-store-memory": str(WORKER_OBJECT_STORE_BYTES),
        },
        "template": pod,
    }


def _serve_service(labels: dict[str, str], serve_port: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": SERVE_SERVICE_NAME,
            "labels": labels,
            "annotations": dict(NLB_ANNOTATIONS),
        },
        "spec": {
            "type": "LoadBalancer",
            # Named "serve": KubeRay merges it with the head's serve port by that name.
            "ports": [{"name": "serve", "port": TLS_PORT, "targetPort": serve_port, "protocol": "TCP"}],
        },
    }


def build_rayservice(
    preset: Preset, catalog: Catalog, args: AppArgs, serve_config: dict[str, Any], info: ProjectInfo
) -> dict[str, Any]:
    sizing = size_workers(preset, catalog)
    drain_s = drain_seconds(preset, catalog, args)
    serve_port = int(serve_config["http_options"]["port"])
    image = image_ref(info)
    labels = _labels(preset.name, info)
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
            "serveService": _serve_service(labels, serve_port),
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
                "headGroupSpec": _head_group_spec(image, labels, serve_port, drain_s),
                "workerGroupSpecs": [
                    _gpu_worker_group_spec(sizing, str(preset.gpu.count), image, labels, serve_port, drain_s)
                ],
            },
        },
    }
    RayService.model_validate(manifest)
    return manifest
