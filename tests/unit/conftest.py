"""Shared fixtures of the unit suite: no Ray cluster, no vLLM, no network; everything runs in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) from anywhere
    sys.path.insert(0, str(PROJECT_ROOT))

from serve_app.config import Catalog, Preset, check_preset_fits, load_catalog, load_preset  # noqa: E402
from serve_app.config.fit import ModelFit  # noqa: E402

from .support import CATALOG_PATH, PRESETS_DIR  # noqa: E402


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(CATALOG_PATH)


@pytest.fixture(scope="session")
def d4_preset(catalog: Catalog) -> Preset:
    return load_preset(PRESETS_DIR, "D4", catalog)


@pytest.fixture(scope="session")
def d4_fits(d4_preset: Preset, catalog: Catalog) -> list[ModelFit]:
    return check_preset_fits(d4_preset, catalog)


def pytest_configure(config: pytest.Config) -> None:
    # Ray's own modules trip pydantic deprecation warnings on import; they are not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:ray.*")


@pytest.fixture(scope="session", autouse=True)
def _no_ray_cluster():
    """The unit suite may import Ray but must never start it (no ray.init, no serve.run)."""
    yield
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "a unit test started a Ray cluster"
