"""Configuration shared by every process: the catalog, presets, the builder's arguments, the fit check
and the drain budgets. Pydantic, `extra="forbid"`."""

from serve_app.config.app_args import AppArgs, CpuProfile, RequestLimits
from serve_app.config.fit import check_preset_fits
from serve_app.config.loading import ConfigError, list_presets, load_catalog, load_preset
from serve_app.config.schema import (
    Catalog,
    ModelSpec,
    OrchestrationMode,
    Preset,
    Role,
    ServingOptions,
)

__all__ = [
    "AppArgs",
    "Catalog",
    "ConfigError",
    "CpuProfile",
    "ModelSpec",
    "OrchestrationMode",
    "Preset",
    "RequestLimits",
    "Role",
    "ServingOptions",
    "check_preset_fits",
    "list_presets",
    "load_catalog",
    "load_preset",
]
