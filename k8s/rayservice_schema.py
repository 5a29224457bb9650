"""Typed model of the KubeRay `ray.io/v1` RayService fields this project sets (KubeRay v1.7.0).

Written from the operator's Go types (ray-operator/apis/ray/v1/rayservice_types.go and
raycluster_types.go at v1.7.0). Every model is `extra="forbid"` and strict: the API server prunes
unknown fields of a custom resource without a word, so a misspelt `workerGroupSpec` or an integer
where the CRD wants a string (`rayStartParams` is map[string]string) would otherwise only show up
as a cluster that silently ignores the setting.

The pod templates and the serve Service inside a RayService are core Kubernetes objects; they stay
plain dicts here and the tests validate them against the Kubernetes OpenAPI schema instead
(kubernetes_validate, as `PodTemplate` and `Service`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

KUBERAY_VERSION = "1.7.0"
# KubeRay: RayService names must be DNS-1035 labels of at most 47 characters (MaxRayServiceNameLength).
MAX_RAYSERVICE_NAME_LENGTH = 47
INITIALIZING_TIMEOUT_ANNOTATION = "ray.io/initializing-timeout"

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i?|[mkMGTPE]|)$")

Quantity = str


class K8sModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class ObjectMeta(K8sModel):
    name: str = Field(max_length=MAX_RAYSERVICE_NAME_LENGTH)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns1035(cls, value: str) -> str:
        if not _DNS1035.match(value):
            raise ValueError(f"RayService name {value!r} is not a DNS-1035 label")
        return value

    @field_validator("annotations")
    @classmethod
    def _initializing_timeout(cls, value: dict[str, str]) -> dict[str, str]:
        timeout = value.get(INITIALIZING_TIMEOUT_ANNOTATION)
        if timeout is not None and not (
            (timeout.isdigit() and int(timeout) > 0) or _GO_DURATION.match(timeout)
        ):
            raise ValueError(f"{INITIALIZING_TIMEOUT_ANNOTATION}={timeout!r}: want a Go duration or seconds")
        return value


class ResourceRequirements(K8sModel):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, value: dict[str, str]) -> dict[str, str]:
        bad = {k: v for k, v in value.items() if not _QUANTITY.match(v)}
        if bad:
            raise ValueError(f"not Kubernetes quantities: {bad}")
        return value


class AutoscalerOptions(K8sModel):
    """`spec.rayClusterConfig.autoscalerOptions`: the in-tree Ray autoscaler sidecar."""

    upscaling_mode: Literal["Default", "Aggressive", "Conservative"] | None = None
    idle_timeout_seconds: int | None = Field(None, ge=0)
    resources: ResourceRequirements | None = None
    version: Literal["v1", "v2"] | None = None


class AuthOptions(K8sModel):
    """Ray token authentication; KubeRay generates the token Secret unless `secretName` names one."""

    mode: Literal["disabled", "token"]
    secret_name: str | None = None


class HeadGroupSpec(K8sModel):
    ray_start_params: dict[str, str]
    template: dict[str, Any]
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] | None = None


class WorkerGroupSpec(K8sModel):
    group_name: str = Field(min_length=1)
    replicas: int = Field(ge=0)
    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=0)
    num_of_hosts: int | None = Field(None, ge=1)
    idle_timeout_seconds: int | None = Field(None, ge=0)
    ray_start_params: dict[str, str]
    template: dict[str, Any]

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroupSpec:
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"worker group {self.group_name}: want minReplicas <= replicas <= maxReplicas, got "
                f"{self.min_replicas} / {self.replicas} / {self.max_replicas}"
            )
        return self


class RayClusterSpec(K8sModel):
    ray_version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    enable_in_tree_autoscaling: bool | None = None
    autoscaler_options: AutoscalerOptions | None = None
    auth_options: AuthOptions | None = None
    head_group_spec: HeadGroupSpec
    worker_group_specs: list[WorkerGroupSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_groups(self) -> RayClusterSpec:
        names = [g.group_name for g in self.worker_group_specs]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate worker group names: {names}")
        return self


class UpgradeStrategy(K8sModel):
    type: Literal["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]


class RayServiceSpec(K8sModel):
    serve_config_v2: str = Field(min_length=1)
    ray_cluster_config: RayClusterSpec
    # Deprecated in KubeRay >= 1.1 (accepted by the CRD, not read by the operator); see docs/deploy-eks.md.
    service_unhealthy_second_threshold: int | None = Field(None, ge=0)
    deployment_unhealthy_second_threshold: int | None = Field(None, ge=0)
    serve_service: dict[str, Any] | None = None
    upgrade_strategy: UpgradeStrategy | None = None
    ray_cluster_deletion_delay_seconds: int | None = Field(None, ge=0)
    exclude_head_pod_from_serve_svc: bool | None = None

    @field_validator("serve_config_v2")
    @classmethod
    def _serve_config_is_yaml(cls, value: str) -> str:
        parsed = yaml.safe_load(value)
        if not isinstance(parsed, dict) or not isinstance(parsed.get("applications"), list):
            raise ValueError("serveConfigV2 must be a YAML mapping with an `applications` list")
        return value


class RayService(K8sModel):
    api_version: Literal["ray.io/v1"]
    kind: Literal["RayService"]
    metadata: ObjectMeta
    spec: RayServiceSpec


def go_duration_seconds(value: str) -> float:
    """Seconds of a `ray.io/initializing-timeout` value (Go duration such as "45m", or integer seconds)."""
    if value.isdigit():
        return float(value)
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, _, unit in re.findall(r"(\d+(\.\d+)?)(ns|us|µs|ms|s|m|h)", value):
        total += float(number) * units[unit]
    return total


__all__ = [
    "INITIALIZING_TIMEOUT_ANNOTATION",
    "KUBERAY_VERSION",
    "AutoscalerOptions",
    "HeadGroupSpec",
    "RayClusterSpec",
    "RayService",
    "RayServiceSpec",
    "WorkerGroupSpec",
    "go_duration_seconds",
]
