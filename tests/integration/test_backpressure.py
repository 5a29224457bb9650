"""Backpressure: a full Ray Serve queue answers 429 with Retry-After, cleanly, and the app recovers.

Runs against a deliberately tight app (tests/serve_config.test.yaml's "tight": one llama-3.2-3b
replica with max_ongoing_requests 2, max_queued_requests 2, backpressure 429, Retry-After 1), found at
INFERENCE_TIGHT_BASE_URL (default: INFERENCE_BASE_URL + "/tight"). A deployment without such an app
skips these tests, unless INFERENCE_REQUIRE_SERVICE=1, which makes its absence a failure.

Every request sent is classified: a complete 200 stream ending with `data: [DONE]`, or a 429 whose
body is an OpenAI error object (type rate_limit_error, code overloaded) with a Retry-After header.
Nothing else is allowed: no 5xx, no dropped connection, no timeout, no truncated stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from .support import (
    OK,
    REJECTED,
    STREAM_TIMEOUT,
    TIGHT_BASE_URL,
    Outcome,
    auth_headers,
    http_timeout,
    request_outcome,
    require_tight_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_model]

BURST = 24
# Long enough (~0.5 s on the CPU profile) that the 2 running + 2 queued slots are busy when the rest
# of the burst arrives.
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def tight_model() -> str:
    return require_tight_model()


def _payload(model: str, i: int, stream: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": f"Burst request {i}: tell me a story."}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.7,
        "seed": i,
    }
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    return payload


async def _burst(model: str, stream: bool, size: int = BURST) -> list[Outcome]:
    limits = httpx.Limits(max_connections=size * 2, max_keepalive_connections=size * 2)
    async with httpx.AsyncClient(
        base_url=TIGHT_BASE_URL, headers=auth_headers(), timeout=http_timeout(STREAM_TIMEOUT), limits=limits
    ) as http:
        return list(
            await asyncio.gather(
                *(
                    request_outcome(http, "/v1/chat/completions", _payload(model, i, stream))
                    for i in range(size)
                )
            )
        )


def _check_burst(outcomes: list[Outcome], sent: int, label: str) -> Counter[str]:
    kinds = Counter(o.kind for o in outcomes)
    statuses = Counter(o.status for o in outcomes)
    retry_afters = Counter(o.retry_after for o in outcomes if o.status == 429)
    print(
        f"\n{label}: {sent} sent -> statuses {dict(statuses)}, kinds {dict(kinds)}, "
        f"Retry-After values {dict(retry_afters)}, slowest {max(o.seconds for o in outcomes):.1f}s"
    )
    assert len(outcomes) == sum(kinds.values()) == sent, "every request sent must be classified"
    server_errors = [str(o) for o in outcomes if o.status is not None and o.status >= 500]
    assert not server_errors, f"{len(server_errors)} 5xx answers: {server_errors[:3]}"
    dropped = [str(o) for o in outcomes if o.status is None]
    assert not dropped, f"{len(dropped)} connection errors/timeouts: {dropped[:3]}"
    # OK means: 200, ended with data: [DONE], no error event, one finish_reason, usage <= max_tokens.
    bad = [str(o) for o in outcomes if not (o.kind == OK or (o.kind == REJECTED and o.status == 429))]
    assert not bad, f"{len(bad)} requests ended neither as a complete 200 nor as a clean 429: {bad[:3]}"
    for shed in (o for o in outcomes if o.status == 429):
        assert shed.error is not None, shed
        assert shed.error.get("type") == "rate_limit_error", shed.error
        assert shed.error.get("code") == "overloaded", shed.error
        assert "param" in shed.error, shed.error
    assert kinds[REJECTED] >= 1, f"a burst of {sent} against a queue of 2+2 must shed some requests"
    assert kinds[OK] >= 1, "the requests that got a slot must complete"
    return kinds


async def _still_answers(model: str, retry_after_s: float) -> None:
    """After the burst (and the advertised Retry-After), an ordinary request succeeds."""
    await asyncio.sleep(retry_after_s)
    headers = auth_headers()
    async with httpx.AsyncClient(base_url=TIGHT_BASE_URL, headers=headers, timeout=http_timeout()) as http:
        deadline = time.monotonic() + 30
        while True:
            response = await http.post("/v1/chat/completions", json=_payload(model, 999, stream=False))
            if response.status_code != 429 or time.monotonic() > deadline:
                break
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
        models = await http.get("/v1/models")
    assert response.status_code == 200, f"after the burst: {response.status_code} {response.text[:300]}"
    assert response.json()["usage"]["completion_tokens"] <= MAX_TOKENS
    cards = {c["id"]: c for c in models.json()["data"]}
    assert cards[model]["status"] == "ready", cards[model]


@pytest.mark.slow
async def test_streaming_burst_sheds_with_429(tight_model: str) -> None:
    outcomes = await _burst(tight_model, stream=True)
    _check_burst(outcomes, BURST, f"streaming burst on {TIGHT_BASE_URL}")
    retry_after = max(float(o.retry_after or 1) for o in outcomes if o.status == 429)
    await _still_answers(tight_model, retry_after)


@pytest.mark.slow
async def test_non_streaming_burst_sheds_with_429(tight_model: str) -> None:
    outcomes = await _burst(tight_model, stream=False, size=16)
    _check_burst(outcomes, 16, f"non-streaming burst on {TIGHT_BASE_URL}")
    retry_after = max(float(o.retry_after or 1) for o in outcomes if o.status == 429)
    await _still_answers(tight_model, retry_after)
