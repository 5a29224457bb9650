"""What a rendering reads besides the presets: serve_config.yaml and pyproject.toml.

serve_config.yaml is the Serve config every RayService carries as `serveConfigV2`; pyproject.toml
gives the image tag (the project version) and the rayVersion (the pinned ray[serve]). Both are
validated here, before any manifest is built, so a broken input fails rendering rather than the deploy.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from serve_app.config import AppArgs, list_presets

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG_PATH = REPO_ROOT / "serve_config.yaml"
PYPROJECT_PATH = REPO_ROOT / "pyproject.toml"

BUILDER_IMPORT_PATH = "deployments.app:build_app"
# The NLB in front of a RayService drops a connection idle for 350 s (fixed on TLS listeners). A
# non-streamed request sends nothing until it is done, so Serve must give up first and answer
# (408/504) rather than the NLB cutting it silently: request_timeout_s is held this far below it.
NLB_IDLE_TIMEOUT_S = 350
NLB_TIMEOUT_MARGIN_S = 20
# HAProxy reloads whenever a replica starts or stops, and its reloaded-out process cuts the
# connections it still carries this long after (Ray's default, 120 s, is shorter than a request may
# run). No request outlives the NLB's idle timeout, so that bounds it.
HAPROXY_HARD_STOP_AFTER_S = NLB_IDLE_TIMEOUT_S


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


def load_serve_config(path: Path = SERVE_CONFIG_PATH) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    apps = config.get("applications") or []
    if len(apps) != 1:
        raise RenderError(f"{path.name}: expected exactly one application, found {len(apps)}")
    if apps[0].get("import_path") != BUILDER_IMPORT_PATH:
        raise RenderError(f"{path.name}: application must import {BUILDER_IMPORT_PATH}")
    return config


def serve_config_for(base: dict[str, Any], preset: str) -> tuple[dict[str, Any], AppArgs]:
    """serve_config.yaml with args.preset set to `preset` and request_timeout_s under the NLB's idle
    timeout, and its arguments validated by AppArgs."""
    config = copy.deepcopy(base)
    http = config.setdefault("http_options", {})
    limit = NLB_IDLE_TIMEOUT_S - NLB_TIMEOUT_MARGIN_S
    if http.get("request_timeout_s") is None or http["request_timeout_s"] > limit:
        http["request_timeout_s"] = limit
    app = config["applications"][0]
    app["args"] = {**(app.get("args") or {}), "preset": preset}
    args = AppArgs.model_validate(app["args"])
    if args.profile != "gpu":
        raise RenderError(f"RayServices run the gpu profile; serve_config.yaml says {args.profile!r}")
    from ray.serve.schema import ServeDeploySchema  # pydantic only: no Ray runtime is started

    ServeDeploySchema.model_validate(config)
    return config, args


def preset_names() -> list[str]:
    """Every preset in the presets directory serve_config.yaml points at."""
    args = AppArgs.model_validate(load_serve_config()["applications"][0].get("args") or {})
    return list_presets(args.resolve(args.presets_dir))
