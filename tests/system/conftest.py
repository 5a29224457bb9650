"""System tests: they need local process access to the cluster (its Ray replica processes and vLLM
engine processes, and `scripts/cluster.sh deploy`), so they run only on the machine that runs it.

They speak HTTP through the integration suite's configuration (INFERENCE_BASE_URL, INFERENCE_API_KEY,
...), and skip when INFERENCE_BASE_URL is not this machine. A local service that is down is a skip,
or a failure with INFERENCE_REQUIRE_SERVICE=1 (as in CI, where they run after the integration suite:
`python -m pytest tests/system -v`). They are destructive (engine kill, redeploys, unload) and
restore the cluster to its starting state; each takes one to a few minutes.

Environment, besides the integration suite's: INFERENCE_APP_NAME (the Serve application of
INFERENCE_BASE_URL, "inference"), INFERENCE_SERVE_CONFIG or SERVE_CONFIG (the config the cluster
runs, tests/serve_config.test.yaml), RUN_DIR (scripts/cluster.sh's run directory, .run).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import yaml
from integration.support import (
    BASE_URL,
    MODEL_LOAD_TIMEOUT,
    auth_headers,
    ensure_service,
    http_timeout,
)

from .cluster import APP, SERVE_CONFIG, is_local_url, replica_processes, skip_or_fail

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session", autouse=True)
def local_cluster() -> None:
    """Skip unless INFERENCE_BASE_URL is this machine and its Serve replicas are visible here."""
    if not is_local_url(BASE_URL):
        pytest.skip(f"system tests need local process access; INFERENCE_BASE_URL={BASE_URL} is not local")
    ensure_service()
    if not replica_processes("ingress"):
        skip_or_fail(
            f"{BASE_URL} answers but no process titled ray::ServeReplica:{APP}:ingress runs here "
            "(another user's or container's cluster? set INFERENCE_APP_NAME)"
        )


@pytest.fixture(scope="session")
def serve_config() -> dict[str, Any]:
    if not SERVE_CONFIG.is_file():
        skip_or_fail(f"serve config {SERVE_CONFIG} not found (set INFERENCE_SERVE_CONFIG)")
    return dict(yaml.safe_load(SERVE_CONFIG.read_text()))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=BASE_URL,
        headers=auth_headers(),
        timeout=http_timeout(MODEL_LOAD_TIMEOUT + 30),
        limits=limits,
    ) as client:
        yield client
