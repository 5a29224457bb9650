"""Validate custom resources against the openAPIV3Schema of a real CRD (vendored under tests/crds).

The API server prunes fields a structural CRD schema does not name, silently: a misspelt key in a
RayService is accepted and then ignored. To catch that here, every object schema that lists
`properties` (and does not say `x-kubernetes-preserve-unknown-fields`) is validated as if it had
`additionalProperties: false`, which is what pruning amounts to.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parents[1] / "crds"
CRD_FILES = {
    ("ray.io", "RayService"): "ray.io_rayservices.yaml",
    ("karpenter.sh", "NodePool"): "karpenter.sh_nodepools.yaml",
    ("karpenter.k8s.aws", "EC2NodeClass"): "karpenter.k8s.aws_ec2nodeclasses.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
}


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    group, version = api_version.split("/")
    # The RayService CRD is 1 MB of YAML: libyaml's loader reads it in a fraction of PyYAML's time.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRD_DIR / CRD_FILES[(group, kind)]).read_text(), Loader=loader)
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = _closed(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    # metadata is the API server's ObjectMeta, not part of the CRD schema.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def crd_errors(obj: dict[str, Any]) -> list[str]:
    """Every schema violation of `obj`, as "path: message", or [] when it validates."""
    validator = crd_validator(obj["apiVersion"], obj["kind"])
    return sorted(
        "/".join(str(p) for p in error.absolute_path) + f": {error.message}"
        for error in validator.iter_errors(obj)
    )
