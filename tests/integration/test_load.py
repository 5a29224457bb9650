"""AC-21.5: concurrent requests.

Five concurrent requests must all succeed (the old QueueFullError must never surface). Under a burst
of 64 streams against the main app, Ray Serve's max_ongoing_requests / max_queued_requests may shed
load, but only cleanly: every request sent is accounted for, every 200 is a complete stream ending
with `data: [DONE]`, a shed request is an OpenAI-style 429 with Retry-After, and there is no 5xx, no
dropped connection and no timeout. (test_backpressure.py forces shedding on the tight-queue app.)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from .support import (
    BASE_URL,
    OK,
    REJECTED,
    STREAM_TIMEOUT,
    auth_headers,
    http_timeout,
    request_outcome,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_model]

BURST = 64
MAX_TOKENS = 8


async def test_five_concurrent_requests(
    client: httpx.AsyncClient, chat_request_factory: Any, response_validator: Any
) -> None:
    requests = [chat_request_factory.simple(f"Request {i}: say hi.", max_tokens=12, seed=i) for i in range(5)]
    responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=r) for r in requests))
    for response in responses:
        assert "QueueFull" not in response.text, response.text[:300]
        assert response.status_code == 200, f"{response.status_code}: {response.text[:300]}"
        response_validator.validate_completion(response.json(), max_tokens=12)
    assert len({r.json()["id"] for r in responses}) == 5, "each completion needs its own id"
    assert len({r.headers["x-request-id"] for r in responses}) == 5


@pytest.mark.slow
async def test_burst_of_64_streams_sheds_cleanly(skip_if_no_models: None, chat_request_factory: Any) -> None:
    payloads = [
        chat_request_factory.streaming(f"Burst {i}: tell me something.", max_tokens=MAX_TOKENS, seed=i)
        for i in range(BURST)
    ]
    limits = httpx.Limits(max_connections=BURST * 2, max_keepalive_connections=BURST * 2)
    started = time.monotonic()
    async with httpx.AsyncClient(
        base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout(STREAM_TIMEOUT), limits=limits
    ) as http:
        outcomes = await asyncio.gather(*(request_outcome(http, "/v1/chat/completions", p) for p in payloads))
    elapsed = time.monotonic() - started

    kinds = Counter(o.kind for o in outcomes)
    statuses = Counter(o.status for o in outcomes)
    print(f"\n{BURST} concurrent streams in {elapsed:.1f}s: kinds {dict(kinds)}, statuses {dict(statuses)}")
    assert sum(kinds.values()) == len(payloads) == BURST, "every request sent must be classified"
    server_errors = [o for o in outcomes if o.status is not None and o.status >= 500]
    assert not server_errors, f"{len(server_errors)} 5xx answers, e.g. {[str(o) for o in server_errors[:3]]}"
    # ok = a 200 stream that ended with data: [DONE], no error event, one finish_reason, usage <= max_tokens.
    problems = [o for o in outcomes if not (o.kind == OK or (o.kind == REJECTED and o.status == 429))]
    examples = [str(o) for o in problems[:5]]
    assert not problems, f"{len(problems)} requests did not end cleanly, e.g. {examples}"
    for shed in (o for o in outcomes if o.kind == REJECTED):
        assert shed.error and shed.error.get("type") == "rate_limit_error", shed
    assert kinds[OK] >= 1, "at least some streams must complete under load"

    # The service recovers once the burst has drained.
    async with httpx.AsyncClient(base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout()) as http:
        after = await http.post(
            "/v1/chat/completions", json=chat_request_factory.simple(max_tokens=4, seed=1)
        )
    assert after.status_code == 200, after.text[:300]
