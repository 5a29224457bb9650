"""What would break on the first real EKS cluster, checked without one (issue 12).

- every rendered RayService, the kustomize build and the Karpenter / PodMonitor manifests validate
  against the real CRDs of the pinned operator versions (tests/crds), with pruning made an error;
- the head runs no replicas (num-cpus 0) and the GPU workers have CPUs for the engines, the ingress
  and at least 6 vCPUs per GPU;
- the Serve Service terminates TLS on the NLB, and Serve gives up on a request before the NLB's idle
  timeout would cut it; the API key Secret is required unless explicitly opted out;
- GPU pods are not disrupted by Karpenter, the AMI is pinned to a release with an R580+ driver in both
  the NodePool and the eksctl node groups, and the GPU limit leaves room for a NewCluster upgrade.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.engine.gpu_driver import MIN_DRIVER_MAJOR
from deployments.ingress.tenancy.keys import KeyRing, MissingApiKey
from k8s import rayservice_builder, render, render_inputs, sizing
from serve_app.config import AppArgs, load_catalog, load_preset

from .crd_schema import CRD_DIR, crd_errors

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
PRESETS = render_inputs.preset_names()
SERVE_CONFIG = yaml.safe_load(render_inputs.SERVE_CONFIG_PATH.read_text())
# The EKS AMI release the NodePool alias and the eksctl node groups pin, and its NVIDIA driver
# (awslabs/amazon-eks-ami CHANGELOG, release v20260714: kmod-nvidia-latest-dkms 580.159.03).
PINNED_AMI_RELEASE = "20260714"
PINNED_AMI_DRIVER = "580.159.03"


def _rayservice(preset: str) -> dict[str, Any]:
    return yaml.safe_load((render.OUTPUT_DIR / f"{preset}.yaml").read_text())


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pods(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = doc["spec"]["rayClusterConfig"]
    pods = {"head": cluster["headGroupSpec"]["template"]}
    pods.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return pods


# --- real CRDs ---------------------------------------------------------------------------------


def test_vendored_crds_are_the_pinned_versions() -> None:
    notes = (CRD_DIR / "README.md").read_text()
    from k8s.rayservice_schema import KUBERAY_VERSION

    assert f"v{KUBERAY_VERSION}" in notes
    deploy_doc = (REPO / "docs" / "deploy-eks.md").read_text()
    assert f"| {KUBERAY_VERSION} |" in deploy_doc
    karpenter = re.search(r"Karpenter \(optional.*\| ([\d.]+) \|", deploy_doc)
    assert karpenter and f"v{karpenter.group(1)}" in notes


@pytest.mark.parametrize("preset", PRESETS)
def test_rendered_rayservice_validates_against_kuberay_crd(preset: str) -> None:
    assert crd_errors(_rayservice(preset)) == []


def test_crd_validation_catches_pruned_fields_and_wrong_types() -> None:
    doc = copy.deepcopy(_rayservice("D4"))
    worker = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    worker["rayStartParams"]["num-cpus"] = 7  # map[string]string in KubeRay
    worker["idleTimeoutSecond"] = 600  # misspelt: the API server would prune it
    errors = crd_errors(doc)
    assert any("num-cpus: 7 is not of type 'string'" in e for e in errors), errors
    assert any("'idleTimeoutSecond' was unexpected" in e for e in errors), errors


@pytest.mark.parametrize("path", ["cluster/karpenter-gpu-nodepool.yaml", "monitoring/podmonitor.yaml"])
def test_cluster_manifests_validate_against_their_crds(path: str) -> None:
    docs = _load_all(K8S / path)
    assert docs
    for doc in docs:
        assert crd_errors(doc) == [], f"{path}: {doc['kind']}"


def test_kubectl_is_installed_so_no_kustomize_test_skips() -> None:
    # scripts/setup.sh installs it (Debian package); the kustomize tests fail, not skip, without it.
    assert shutil.which("kubectl"), "kubectl missing: run scripts/setup.sh"


def test_kustomize_build_validates_against_the_crds() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl missing: run scripts/setup.sh"
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    (rayservice,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "RayService"]
    assert crd_errors(rayservice) == []
    # the kustomization's TLS patch reaches the Service annotations
    annotations = rayservice["spec"]["serveService"]["metadata"]["annotations"]
    assert "service.beta.kubernetes.io/aws-load-balancer-ssl-cert" in annotations


# --- head, CPUs ------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_head_runs_no_replicas_and_workers_have_cpus_for_engines_and_ingress(preset: str) -> None:
    doc = _rayservice(preset)
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    args = AppArgs.model_validate(SERVE_CONFIG["applications"][0]["args"])
    catalog = load_catalog(args.resolve(args.catalog_path))
    preset_obj = load_preset(args.resolve(args.presets_dir), preset, catalog)
    workers = sizing.size_workers(preset_obj, catalog)
    (group,) = cluster["workerGroupSpecs"]
    ray_cpus = int(group["rayStartParams"]["num-cpus"])
    gpus = int(group["rayStartParams"]["num-gpus"])
    # Ray CPUs for every engine that can share the node, plus the ingress replica.
    assert ray_cpus >= workers.engines_per_node * sizing.ENGINE_RAY_CPUS + sizing.INGRESS_RAY_CPUS
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["cpu"]) >= sizing.MIN_VCPUS_PER_GPU * gpus
    assert int(limits["cpu"]) >= workers.engines_per_node * sizing.ENGINE_HOST_VCPUS


def test_d4_gets_six_or_more_cpus_for_its_one_gpu() -> None:
    (group,) = _rayservice("D4")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert group["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == "g6e.2xlarge"
    assert int(group["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]) >= 6


# --- exposure -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_serve_service_is_tls_on_the_nlb_and_times_out_before_it(preset: str) -> None:
    doc = _rayservice(preset)
    service = doc["spec"]["serveService"]
    annotations = service["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"].startswith("arn:aws:acm:")
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-ports"] == "443"
    assert [p["port"] for p in service["spec"]["ports"]] == [443]
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert serve["http_options"]["request_timeout_s"] < render_inputs.NLB_IDLE_TIMEOUT_S


@pytest.mark.parametrize("preset", PRESETS)
def test_haproxy_never_cuts_a_request_serve_still_allows(preset: str) -> None:
    # HAProxy's reloaded-out process cuts its connections hard-stop-after a reload (every replica
    # start or stop): that must not come before the longest request Serve lets run.
    doc = _rayservice(preset)
    timeout = yaml.safe_load(doc["spec"]["serveConfigV2"])["http_options"]["request_timeout_s"]
    for name, pod in _pods(doc).items():
        for container in pod["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert float(env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"]) >= timeout, (name, env)


def test_kustomization_replaces_the_certificate_placeholder_in_one_place() -> None:
    (patch,) = yaml.safe_load((K8S / "tls-certificate.patch.yaml").read_text()) and [
        op for op in yaml.safe_load((K8S / "tls-certificate.patch.yaml").read_text())
    ]
    assert patch["path"].endswith("aws-load-balancer-ssl-cert")
    assert patch["value"] == rayservice_builder.ACM_CERTIFICATE_PLACEHOLDER


@pytest.mark.parametrize("preset", PRESETS)
def test_api_key_secret_is_required(preset: str) -> None:
    for name, pod in _pods(_rayservice(preset)).items():
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert "optional" not in env["INFERENCE_API_KEY"]["valueFrom"]["secretKeyRef"], name
        assert env["INFERENCE_REQUIRE_API_KEY"]["value"] == "1", name
        anonymous = env["INFERENCE_ALLOW_ANONYMOUS"]["valueFrom"]["secretKeyRef"]
        assert anonymous == {"name": "inference-api-keys", "key": "allow-anonymous", "optional": True}


def test_key_policy_refuses_to_start_open_unless_opted_out(tmp_path: Path) -> None:
    def ring(**env: str) -> KeyRing:
        return KeyRing.from_env(lambda: 0.0, env)

    required = {"INFERENCE_REQUIRE_API_KEY": "1"}
    with pytest.raises(MissingApiKey, match="allow-anonymous"):
        ring(**required, INFERENCE_API_KEY=" ")
    assert ring(**required, INFERENCE_API_KEY="sk-1").table.guards_inference
    assert not ring(**required, INFERENCE_ALLOW_ANONYMOUS="true").table.guards_inference
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("keys:\n  - {key: sk-tenant-1, tenant: a}\n")
    assert ring(**required, INFERENCE_KEYS_FILE=str(keys_file)).table.guards_inference, "a keys file suffices"
    # local runs (no requirement) stay open without a key, as before
    assert not ring().table.guards_inference


# --- disruption and the AMI -----------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_ray_pods_tell_karpenter_not_to_disrupt_them(preset: str) -> None:
    for name, pod in _pods(_rayservice(preset)).items():
        assert pod["metadata"]["annotations"][rayservice_builder.DO_NOT_DISRUPT_ANNOTATION] == "true", name


def test_nodepool_pins_the_ami_does_not_expire_and_has_room_for_an_upgrade() -> None:
    docs = {d["kind"]: d for d in _load_all(K8S / "cluster" / "karpenter-gpu-nodepool.yaml")}
    (term,) = docs["EC2NodeClass"]["spec"]["amiSelectorTerms"]
    assert term == {"alias": f"al2023@v{PINNED_AMI_RELEASE}"}
    pool = docs["NodePool"]["spec"]
    assert pool["template"]["spec"]["expireAfter"] == "Never"
    gpus_at_max = {}
    for preset in PRESETS:
        (group,) = _rayservice(preset)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        gpus_at_max[preset] = group["maxReplicas"] * int(group["rayStartParams"]["num-gpus"])
    # A NewCluster upgrade runs the old and the new RayCluster at once.
    assert int(pool["limits"]["nvidia.com/gpu"]) >= 2 * max(gpus_at_max.values()), gpus_at_max


def test_eksctl_gpu_node_groups_pin_the_same_ami_release() -> None:
    (config,) = _load_all(K8S / "cluster" / "eksctl-cluster.yaml")
    version = config["metadata"]["version"]
    gpu_groups = [ng for ng in config["managedNodeGroups"] if "nvidia.com/gpu.present" in ng["labels"]]
    assert gpu_groups
    for group in gpu_groups:
        release = group.get("releaseVersion", "")
        assert re.fullmatch(rf"{re.escape(version)}\.\d+-{PINNED_AMI_RELEASE}", release), group["name"]
    assert int(PINNED_AMI_DRIVER.split(".")[0]) >= MIN_DRIVER_MAJOR


def test_deploy_doc_states_the_driver_minimum_and_the_pinned_release() -> None:
    text = (REPO / "docs" / "deploy-eks.md").read_text()
    assert f"R{MIN_DRIVER_MAJOR}" in text and PINNED_AMI_DRIVER in text and f"v{PINNED_AMI_RELEASE}" in text
