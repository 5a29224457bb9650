"""Load the catalog and presets from YAML into validated pydantic objects."""

from __future__ import annotations

from pathlib import Path

import yaml

from serve_app.config.schema import Catalog, Preset


class ConfigError(ValueError):
    """A catalog or preset is invalid or does not fit its GPU; the message names the numbers."""


def load_catalog(path: Path) -> Catalog:
    return Catalog.model_validate(yaml.safe_load(path.read_text()))


def load_preset(presets_dir: Path, name: str, catalog: Catalog) -> Preset:
    path = presets_dir / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in presets_dir.glob("*.yaml") if p.stem != "catalog")
        raise ConfigError(f"unknown preset {name!r}; available: {available}")
    preset = Preset.model_validate(yaml.safe_load(path.read_text()))
    if preset.name != name:
        raise ConfigError(f"{path} declares name {preset.name!r}, expected {name!r}")
    missing = [m for m in preset.models if m not in {spec.id for spec in catalog.models}]
    if missing:
        raise ConfigError(f"preset {name} names models missing from the catalog: {missing}")
    return preset


def list_presets(presets_dir: Path) -> list[str]:
    return sorted(p.stem for p in presets_dir.glob("*.yaml") if p.stem != "catalog")
