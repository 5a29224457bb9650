"""The service's Prometheus metrics move when requests are served.

Ray exports them on its metrics endpoint (the head node's metrics export port), which is not part of
the OpenAI API: INFERENCE_METRICS_URL says where it is (scripts/cluster.sh: http://127.0.0.1:9101/metrics).
Without it reachable the test skips, unless INFERENCE_REQUIRE_SERVICE=1.
"""

from __future__ import annotations

import asyncio
import os
import re
import time

import httpx
import pytest

from .support import REQUIRE_SERVICE

METRICS_URL = os.environ.get("INFERENCE_METRICS_URL", "http://127.0.0.1:9101/metrics")
# Ray's metrics agent exports on an interval; allow it a few rounds.
EXPORT_WAIT_S = 60.0

pytestmark = [pytest.mark.integration, pytest.mark.requires_model]


def counter_total(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} ([0-9.e+-]+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get(METRICS_URL)
    response.raise_for_status()
    return response.text


@pytest.fixture
async def metrics_client(skip_if_service_unavailable: None) -> httpx.AsyncClient:
    client = httpx.AsyncClient(timeout=10)
    try:
        await scrape(client)
    except httpx.HTTPError as exc:
        await client.aclose()
        message = f"Ray metrics endpoint {METRICS_URL} not reachable ({type(exc).__name__})"
        if REQUIRE_SERVICE:
            pytest.fail(message)
        pytest.skip(message)
    return client


async def test_requests_tokens_and_errors_are_counted(
    metrics_client: httpx.AsyncClient, client: httpx.AsyncClient, model_id: str
) -> None:
    before = await scrape(metrics_client)
    labels = {"model": model_id, "route": "/v1/chat/completions", "status": "200"}
    requests_before = counter_total(before, "ray_inference_requests_total", **labels)
    tokens_before = counter_total(before, "ray_inference_completion_tokens_total", model=model_id)
    errors_before = counter_total(before, "ray_inference_errors_total", status="404", code="model_not_found")

    sent_tokens = 0
    for seed in range(3):
        response = await client.post(
            "/v1/chat/completions",
            json={
                "model": model_id,
                "messages": [{"role": "user", "content": "count me"}],
                "max_tokens": 8,
                "seed": seed,
            },
        )
        assert response.status_code == 200
        sent_tokens += response.json()["usage"]["completion_tokens"]
    missing = await client.post(
        "/v1/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
    )
    assert missing.status_code == 404

    deadline = time.monotonic() + EXPORT_WAIT_S
    while True:
        after = await scrape(metrics_client)
        requests = counter_total(after, "ray_inference_requests_total", **labels) - requests_before
        tokens = counter_total(after, "ray_inference_completion_tokens_total", model=model_id) - tokens_before
        errors = (
            counter_total(after, "ray_inference_errors_total", status="404", code="model_not_found")
            - errors_before
        )
        if (requests >= 3 and tokens >= sent_tokens and errors >= 1) or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    # Other tests may run concurrently against a shared cluster, hence >= rather than ==.
    assert requests >= 3, f"requests counter moved by {requests}"
    assert tokens >= sent_tokens, f"completion tokens moved by {tokens}, served {sent_tokens}"
    assert errors >= 1, f"404 errors moved by {errors}"
    for histogram in ("ray_inference_e2e_latency_seconds_count", "ray_inference_ttft_seconds_count"):
        assert counter_total(after, histogram) > 0, f"{histogram} has no samples"
    assert "ray_serve_" in after, "Ray Serve's own metrics are missing"
    assert re.search(r"^ray_vllm[:_]", after, re.M), "vLLM's engine metrics are not exported through Ray"
