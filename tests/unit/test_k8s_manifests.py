"""The EKS / KubeRay deployment in k8s/: no cluster, no Ray runtime.

- the checked-in RayServices are exactly what `python -m k8s.render` makes of serve_config.yaml and
  presets/ (no drift), import the same builder, and give each preset a GPU worker group;
- core Kubernetes objects validate against the Kubernetes OpenAPI schema (kubernetes_validate), and
  RayServices against the typed KubeRay model in k8s/rayservice_schema.py;
- the kustomizations build, and the cluster configs offer every GPU instance type a preset uses;
- every metric the Grafana dashboard queries is documented in docs/deploy-eks.md, and the documented
  ray_inference_* metrics are the ones serve_app/metrics.py defines.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from k8s import rayservice_builder, render, render_inputs, sizing
from k8s.rayservice_schema import INITIALIZING_TIMEOUT_ANNOTATION, RayService, go_duration_seconds
from serve_app.config import AppArgs, ConfigError, load_catalog, load_preset

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOC = REPO / "docs" / "deploy-eks.md"
# Kubernetes version the core objects are validated against: the EKS version of the cluster config.
K8S_VERSION = "1.34"
CRD_KINDS = {"RayService", "PodMonitor", "ServiceMonitor", "NodePool", "EC2NodeClass", "ClusterConfig"}
PRESETS = render_inputs.preset_names()
SERVE_CONFIG = yaml.safe_load(render_inputs.SERVE_CONFIG_PATH.read_text())
SERVE_PORT = SERVE_CONFIG["http_options"]["port"]


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _validate_core(obj: dict[str, Any], where: str) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(str(p) for p in error.path)
        pytest.fail(
            f"{where}: {obj['kind']} {obj.get('metadata', {}).get('name')} at {path}: {error.message}"
        )


@pytest.fixture(scope="module")
def rendered() -> dict[Path, str]:
    return render.render_all()


@pytest.fixture(scope="module")
def rayservices() -> dict[str, dict[str, Any]]:
    return {p: yaml.safe_load((render.OUTPUT_DIR / f"{p}.yaml").read_text()) for p in PRESETS}


def _preset(name: str):
    args = AppArgs.model_validate(SERVE_CONFIG["applications"][0]["args"])
    catalog = load_catalog(args.resolve(args.catalog_path))
    return load_preset(args.resolve(args.presets_dir), name, catalog), catalog, args


def _cluster(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterConfig"]


def _gpu_groups(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        g
        for g in _cluster(doc).get("workerGroupSpecs", [])
        if any(
            "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
            for c in g["template"]["spec"]["containers"]
        )
    ]


# --- (a) no drift -------------------------------------------------------------------------------


def test_every_preset_has_a_rayservice() -> None:
    assert PRESETS, "no presets found"
    assert sorted(p.stem for p in render.OUTPUT_DIR.glob("*.yaml")) == sorted(PRESETS), (
        f"k8s/rayservice/ does not hold one file per preset; run `{render.RENDER_COMMAND}`"
    )


def test_checked_in_rayservices_match_their_rendering(rendered: dict[Path, str]) -> None:
    problems = render.drift(rendered)
    assert not problems, (
        "k8s/rayservice/ has drifted from serve_config.yaml, presets/ or the renderer in k8s/: "
        + "; ".join(problems)
        + f". Run `{render.RENDER_COMMAND}` and commit the result."
    )


def test_render_check_mode_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["--check"]) == 0, capsys.readouterr().err


# --- (b) same builder, GPU workers --------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_serve_config_is_serve_config_yaml_with_the_preset(preset: str, rayservices: dict) -> None:
    serve = yaml.safe_load(rayservices[preset]["spec"]["serveConfigV2"])
    expected = copy.deepcopy(SERVE_CONFIG)
    expected["applications"][0]["args"]["preset"] = preset
    # ... with request_timeout_s held under the NLB's idle timeout (test_k8s_gpu_truth.py).
    expected["http_options"]["request_timeout_s"] = serve["http_options"]["request_timeout_s"]
    assert serve == expected
    assert serve["applications"][0]["import_path"] == SERVE_CONFIG["applications"][0]["import_path"]
    assert serve["applications"][0]["import_path"] == "deployments.app:build_app"


@pytest.mark.parametrize("preset", PRESETS)
def test_gpu_worker_group_matches_the_preset_gpu(preset: str, rayservices: dict) -> None:
    doc = rayservices[preset]
    spec, _, _ = _preset(preset)
    groups = _gpu_groups(doc)
    assert len(groups) == 1, f"{preset}: want one GPU worker group, have {len(groups)}"
    group = groups[0]
    family = sizing.GPU_INSTANCE_FAMILIES[spec.gpu.name]
    pod = group["template"]["spec"]
    (container,) = pod["containers"]
    resources = container["resources"]
    assert (
        resources["limits"]["nvidia.com/gpu"]
        == resources["requests"]["nvidia.com/gpu"]
        == str(spec.gpu.count)
    )
    assert resources["limits"] == resources["requests"], "GPU workers should be Guaranteed QoS"
    assert group["rayStartParams"]["num-gpus"] == str(spec.gpu.count)
    assert group["rayStartParams"]["num-cpus"] == resources["limits"]["cpu"]
    instance_type = pod["nodeSelector"]["node.kubernetes.io/instance-type"]
    assert instance_type in {t.name for t in family.instance_types}, f"{instance_type} is not {family.family}"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert (
        0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] >= 1
    )
    assert {"name": "serve", "containerPort": SERVE_PORT, "protocol": "TCP"} in container["ports"], (
        "KubeRay's worker readiness probe checks the Serve proxy on the port named 'serve'"
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_head_is_cpu_only_and_exposes_dashboard_metrics_serve(preset: str, rayservices: dict) -> None:
    head = _cluster(rayservices[preset])["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    (container,) = head["template"]["spec"]["containers"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["dashboard"] == 8265 and ports["metrics"] == 8080 and ports["serve"] == SERVE_PORT
    assert head["rayStartParams"]["metrics-export-port"] == "8080"


@pytest.mark.parametrize("preset", PRESETS)
def test_secrets_cache_drain_and_timeouts(preset: str, rayservices: dict) -> None:
    doc = rayservices[preset]
    preset_spec, catalog, args = _preset(preset)
    # The pod's preStop drain outlasts every Serve graceful budget (README "Drain budgets"), so Ray's
    # own drain and cut run before `ray stop`, and the kubelet's grace outlasts the preStop.
    budgets = [args.serving_overrides.get(m, catalog.get(m).serving) for m in preset_spec.models]
    longest = max(
        [b.graceful_shutdown_timeout_s for b in budgets] + [args.ingress.graceful_shutdown_timeout_s]
    )
    cluster = _cluster(doc)
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
        api_key = env["INFERENCE_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert api_key == {"name": rayservice_builder.API_KEYS_SECRET, "key": "api-key"}  # required
        assert "INFERENCE_DEFAULT_PRESET" not in env, "the preset comes from serveConfigV2 args"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        cache = volumes[mounts["/root/.cache/huggingface"]]
        assert cache["persistentVolumeClaim"]["claimName"] == "model-cache"
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        match = re.search(r"sleep (\d+); ray stop$", command[-1])
        assert match, f"preStop should drain, then `ray stop`: {command}"
        sleep = int(match.group(1))
        assert sleep >= longest, f"preStop drain {sleep} s < the longest graceful budget {longest} s"
        assert pod["spec"]["terminationGracePeriodSeconds"] > sleep
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]
    timeout = go_duration_seconds(doc["metadata"]["annotations"][INITIALIZING_TIMEOUT_ANNOTATION])
    assert timeout > args.engine_start_timeout_s
    assert doc["spec"]["serviceUnhealthySecondThreshold"] >= args.engine_start_timeout_s
    ports = doc["spec"]["serveService"]["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in ports] == [("serve", 443, SERVE_PORT)]


def test_all_presets_share_one_rayservice_name(rayservices: dict) -> None:
    names = {doc["metadata"]["name"] for doc in rayservices.values()}
    assert names == {rayservice_builder.RAYSERVICE_NAME}
    for preset, doc in rayservices.items():
        assert doc["metadata"]["labels"][rayservice_builder.PRESET_LABEL] == preset


def _write_preset(directory: Path, name: str, models: list[str], gpu: dict[str, Any]) -> dict[str, Any]:
    (directory / f"{name}.yaml").write_text(
        yaml.safe_dump({"name": name, "title": name, "models": models, "gpu": gpu})
    )
    base = copy.deepcopy(SERVE_CONFIG)
    base["applications"][0]["args"]["presets_dir"] = str(directory)
    base["applications"][0]["args"]["catalog_path"] = str(REPO / "presets" / "catalog.yaml")
    return base


def test_a_preset_that_does_not_fit_fails_rendering(tmp_path: Path) -> None:
    base = _write_preset(
        tmp_path,
        "too-big",
        ["phi-4", "phi-3-medium-128k"],
        {"name": "NVIDIA L40S", "memory_gb": 48, "count": 1},
    )
    with pytest.raises(ConfigError, match="does not fit"):
        render.render_preset("too-big", base_config=base)


def test_a_gpu_without_an_instance_family_fails_rendering(tmp_path: Path) -> None:
    base = _write_preset(tmp_path, "h100", ["phi-4"], {"name": "NVIDIA H100", "memory_gb": 80, "count": 1})
    with pytest.raises(render_inputs.RenderError, match="GPU_INSTANCE_FAMILIES"):
        render.render_preset("h100", base_config=base)


def test_a_cpu_profile_is_refused() -> None:
    base = copy.deepcopy(SERVE_CONFIG)
    base["applications"][0]["args"]["profile"] = "cpu"
    with pytest.raises(render_inputs.RenderError, match="gpu profile"):
        render.render_preset(PRESETS[0], base_config=base)


# --- (c) core Kubernetes objects ----------------------------------------------------------------


def _core_objects() -> list[tuple[str, dict[str, Any]]]:
    objects: list[tuple[str, dict[str, Any]]] = []
    for path in [
        K8S / "namespace.yaml",
        K8S / "model-cache-pvc.yaml",
        *sorted((K8S / "secrets").glob("*.yaml")),
        K8S / "cluster" / "efs-storageclass.yaml",
    ]:
        objects += [(str(path.relative_to(REPO)), doc) for doc in _load_all(path)]
    for path in sorted(render.OUTPUT_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        where = str(path.relative_to(REPO))
        cluster = _cluster(doc)
        templates = [("head", cluster["headGroupSpec"]["template"])]
        templates += [(g["groupName"], g["template"]) for g in cluster.get("workerGroupSpecs", [])]
        for group, template in templates:
            pod_template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": group},
                "template": template,
            }
            objects.append((f"{where} ({group} pod template)", pod_template))
        service = {"apiVersion": "v1", "kind": "Service", **doc["spec"]["serveService"]}
        objects.append((f"{where} (serveService)", service))
    grafana = yaml.safe_load((K8S / "grafana" / "kustomization.yaml").read_text())
    generator = grafana["configMapGenerator"][0]
    objects.append(
        (
            "k8s/grafana (configMapGenerator)",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"], "labels": grafana["generatorOptions"]["labels"]},
                "data": {f: (K8S / "grafana" / f).read_text() for f in generator["files"]},
            },
        )
    )
    return objects


def test_core_objects_validate_against_kubernetes_schema() -> None:
    objects = _core_objects()
    kinds = {obj["kind"] for _, obj in objects}
    assert {
        "Namespace",
        "PersistentVolumeClaim",
        "Secret",
        "StorageClass",
        "PodTemplate",
        "Service",
        "ConfigMap",
    } <= kinds
    for where, obj in objects:
        assert obj["kind"] not in CRD_KINDS
        _validate_core(obj, where)


def test_kubernetes_schema_catches_a_misspelt_field() -> None:
    template = next(o for _, o in _core_objects() if o["kind"] == "PodTemplate")
    broken = copy.deepcopy(template)
    broken["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_model_cache_is_read_write_many_on_efs() -> None:
    (pvc,) = _load_all(K8S / "model-cache-pvc.yaml")
    (storage_class,) = _load_all(K8S / "cluster" / "efs-storageclass.yaml")
    assert pvc["metadata"]["name"] == rayservice_builder.MODEL_CACHE_CLAIM
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    assert storage_class["provisioner"] == "efs.csi.aws.com"


def test_secret_templates_hold_no_real_secrets() -> None:
    names = set()
    for path in sorted((K8S / "secrets").glob("*.yaml")):
        (secret,) = _load_all(path)
        names.add(secret["metadata"]["name"])
        assert all("REPLACE_ME" in value for value in secret["stringData"].values()), path
    assert names == {"hf-token", rayservice_builder.API_KEYS_SECRET, rayservice_builder.KEYS_FILE_SECRET}


# --- (d) RayService against the typed KubeRay model ---------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_rayservice_validates_against_kuberay_model(preset: str, rayservices: dict) -> None:
    RayService.model_validate(rayservices[preset])


def test_kuberay_model_rejects_unknown_fields_and_non_string_params(rayservices: dict) -> None:
    doc = rayservices[PRESETS[0]]
    misspelt = copy.deepcopy(doc)
    misspelt["spec"]["rayClusterConfig"]["workerGroupSpec"] = misspelt["spec"]["rayClusterConfig"].pop(
        "workerGroupSpecs"
    )
    with pytest.raises(ValidationError, match="workerGroupSpec"):
        RayService.model_validate(misspelt)
    numeric = copy.deepcopy(doc)
    numeric["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0
    with pytest.raises(ValidationError, match="string"):
        RayService.model_validate(numeric)
    bounds = copy.deepcopy(doc)
    bounds["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = 5
    with pytest.raises(ValidationError, match="minReplicas"):
        RayService.model_validate(bounds)


# --- (e) kustomize ------------------------------------------------------------------------------

KUBECTL = shutil.which("kubectl")


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL, "kubectl missing: scripts/setup.sh installs it (these tests fail rather than skip)"
    result = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory.relative_to(REPO)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_root_kustomization_builds_one_preset() -> None:
    docs = _kustomize(K8S)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Namespace", "PersistentVolumeClaim", "RayService"], kinds
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == rayservice_builder.NAMESPACE
        if doc["kind"] in CRD_KINDS:
            RayService.model_validate(doc)
        else:
            _validate_core(doc, "kubectl kustomize k8s/")
    (rayservice,) = [d for d in docs if d["kind"] == "RayService"]
    preset = rayservice["metadata"]["labels"][rayservice_builder.PRESET_LABEL]
    assert preset in PRESETS
    # kustomize's `images:` reaches the containers inside the custom resource
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    cluster = _cluster(rayservice)
    for template in [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]:
        assert template["spec"]["containers"][0]["image"] == f"{image['newName']}:{image['newTag']}"


def test_monitoring_kustomization_builds() -> None:
    docs = _kustomize(K8S / "monitoring")
    by_kind = {d["kind"]: d for d in docs}
    assert sorted(by_kind) == ["ConfigMap", "PodMonitor"]
    dashboard = by_kind["ConfigMap"]
    _validate_core(dashboard, "kubectl kustomize k8s/monitoring")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["inference-dashboard.json"])["uid"] == "inference-cluster"
    monitor = by_kind["PodMonitor"]
    assert monitor["metadata"]["namespace"] == rayservice_builder.NAMESPACE
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    # it selects the Ray pods the RayServices template (head and GPU workers)
    selector = monitor["spec"]["selector"]["matchLabels"]
    components = set(monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    for path in render.OUTPUT_DIR.glob("*.yaml"):
        cluster = _cluster(yaml.safe_load(path.read_text()))
        for template in [cluster["headGroupSpec"]["template"]] + [
            g["template"] for g in cluster["workerGroupSpecs"]
        ]:
            labels = template["metadata"]["labels"]
            assert selector.items() <= labels.items() and labels["app.kubernetes.io/component"] in components
            assert any(p["name"] == "metrics" for p in template["spec"]["containers"][0]["ports"])


# --- cluster configs offer what the presets need ------------------------------------------------


def test_cluster_configs_offer_every_gpu_instance_type(rayservices: dict) -> None:
    (eksctl,) = _load_all(K8S / "cluster" / "eksctl-cluster.yaml")
    assert eksctl["metadata"]["version"] == K8S_VERSION, "validate against the cluster's Kubernetes version"
    gpu_groups = {
        ng["instanceType"]: ng
        for ng in eksctl["managedNodeGroups"]
        if any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in ng.get("taints", []))
    }
    for ng in gpu_groups.values():
        assert ng["labels"]["nvidia.com/gpu.present"] == "true", "the NVIDIA device plugin schedules on it"
    karpenter = {d["kind"]: d for d in _load_all(K8S / "cluster" / "karpenter-gpu-nodepool.yaml")}
    requirements = {r["key"]: r for r in karpenter["NodePool"]["spec"]["template"]["spec"]["requirements"]}
    karpenter_types = set(requirements["node.kubernetes.io/instance-type"]["values"])
    assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"} in karpenter["NodePool"][
        "spec"
    ]["template"]["spec"]["taints"]
    # any preset's GPU can be served by Karpenter
    assert {
        t.name for f in sizing.GPU_INSTANCE_FAMILIES.values() for t in f.instance_types
    } <= karpenter_types
    for preset, doc in rayservices.items():
        for group in _gpu_groups(doc):
            instance_type = group["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]
            assert instance_type in gpu_groups, f"{preset}: no eksctl GPU node group of type {instance_type}"
    cluster_name = eksctl["metadata"]["name"]
    assert eksctl["metadata"]["tags"]["karpenter.sh/discovery"] == cluster_name
    node_class = karpenter["EC2NodeClass"]["spec"]
    assert node_class["subnetSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": cluster_name}}]
    assert node_class["role"] == f"KarpenterNodeRole-{cluster_name}"


# --- (f) Grafana dashboard metrics are documented -----------------------------------------------

# What the service exports (serve_app/metrics.py, `ray_` added by Ray) plus Ray Serve's own.
REQUIRED_METRICS = {
    "ray_inference_requests_total",
    "ray_inference_errors_total",
    "ray_inference_ttft_seconds",
    "ray_inference_e2e_latency_seconds",
    "ray_inference_prompt_tokens_total",
    "ray_inference_completion_tokens_total",
    "ray_inference_rejections_total",
    "ray_inference_critique_rounds",
    "ray_inference_pipeline_steps_total",
    "ray_serve_num_router_requests_total",
    "ray_serve_replica_processing_queries",
    "ray_serve_deployment_queued_queries",
}
_METRIC = re.compile(r"\b(ray_[A-Za-z0-9_]+|vllm:[A-Za-z0-9_:]+)")


def documented_metrics() -> dict[str, str]:
    """{metric: type} from the metrics table of docs/deploy-eks.md (`| `name` | type | ...`)."""
    rows = re.findall(r"^\|\s*`((?:ray_|vllm:)[A-Za-z0-9_:]+)`\s*\|\s*([a-z]+)\s*\|", DOC.read_text(), re.M)
    return dict(rows)


def _queries(dashboard: dict[str, Any]) -> list[str]:
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels += panel.get("panels", [])
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return exprs


def test_dashboard_parses_and_uses_only_documented_metrics() -> None:
    dashboard = json.loads((K8S / "grafana" / "inference-dashboard.json").read_text())
    documented = documented_metrics()
    assert documented, f"no metrics table found in {DOC.relative_to(REPO)}"
    used = set()
    for expr in _queries(dashboard):
        for name in _METRIC.findall(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            used.add(base if documented.get(base) == "histogram" else name)
    assert used, "the dashboard queries no metrics"
    undocumented = sorted(used - set(documented))
    assert not undocumented, f"dashboard metrics missing from the table in docs/deploy-eks.md: {undocumented}"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    assert used >= REQUIRED_METRICS, f"dashboard does not chart {sorted(REQUIRED_METRICS - used)}"


def test_documented_metrics_match_what_the_service_defines() -> None:
    documented = documented_metrics()
    assert set(documented) >= REQUIRED_METRICS
    source = (REPO / "serve_app" / "metrics.py").read_text()
    defined = {
        f"ray_{name}_total" if kind == "Counter" else f"ray_{name}": kind.lower()
        for kind, name in re.findall(r"metrics\.(Counter|Histogram|Gauge)\(\s*\"([a-z0-9_]+)\"", source)
    }
    assert defined, "no ray.serve.metrics definitions found in serve_app/metrics.py"
    ours = {name: kind for name, kind in documented.items() if name.startswith("ray_inference_")}
    assert ours == defined, "docs/deploy-eks.md metric table and serve_app/metrics.py disagree"


def test_the_renderer_does_not_import_the_serve_application() -> None:
    # k8s/ sizes pods from serve_app/config alone: no Ray Serve, no deployments, no builder.
    import subprocess
    import sys

    heavy = ("ray.serve", "deployments.app", "deployments.model.server")
    probe = f"import sys, k8s.render; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
