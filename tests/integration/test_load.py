"""AC-21.5: concurrent requests.

Five concurrent requests must all succeed (the old QueueFullError must never surface). Under a burst
of 64 streams, Ray Serve's max_ongoing_requests / max_queued_requests may shed load, but only cleanly:
every request ends either as a complete 200 stream or as an OpenAI-style 429/503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from .support import BASE_URL, STREAM_TIMEOUT, auth_headers, http_timeout
from .validators import SSEParser

pytestmark = [pytest.mark.integration, pytest.mark.requires_model]

BURST = 64
CLEAN = {"ok", "shed"}


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


def _valid_retry_after(value: str | None) -> bool:
    if not value:
        return False
    value = value.strip()
    if value.isdigit():
        return True
    try:
        parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return True


def _classify_stream(raw: str) -> tuple[str, str]:
    if not raw.endswith("data: [DONE]\n\n"):
        return "incomplete", raw[-200:]
    events = SSEParser.parse_stream(raw)
    if any(isinstance(e, dict) and "error" in e for e in events):
        return "stream_error", raw[-300:]
    chunks = [e for e in events if isinstance(e, dict)]
    finishes = [
        ch.get("finish_reason") for c in chunks for ch in c.get("choices", []) if ch.get("finish_reason")
    ]
    if len(finishes) != 1 or finishes[0] not in ("stop", "length"):
        return "incomplete", f"finish reasons {finishes}"
    usage = chunks[-1].get("usage") or {}
    if not 0 <= usage.get("completion_tokens", -1) <= 8:
        return "bad_usage", str(usage)
    return "ok", ""


def _classify_rejection(status: int, headers: httpx.Headers, raw: str) -> tuple[str, str]:
    try:
        error = json.loads(raw)
    except ValueError:
        error = None
    if not (
        isinstance(error, dict) and isinstance(error.get("error"), dict) and error["error"].get("message")
    ):
        return "unclean_shed", f"{status} body {raw[:200]!r}"
    if not _valid_retry_after(headers.get("retry-after")):
        return "unclean_shed", f"{status} without a valid Retry-After"
    return "shed", ""


async def _one(http: httpx.AsyncClient, payload: dict[str, Any]) -> tuple[str, str]:
    try:
        async with http.stream("POST", "/v1/chat/completions", json=payload) as response:
            raw = (await response.aread()).decode("utf-8", errors="replace")
            status, headers = response.status_code, response.headers
    except httpx.TimeoutException as exc:
        return "timeout", repr(exc)
    except httpx.TransportError as exc:
        return "connection_error", repr(exc)
    if status == 200:
        return _classify_stream(raw)
    if status in (429, 503):
        return _classify_rejection(status, headers, raw)
    return ("server_error" if status >= 500 else "client_error"), f"{status}: {raw[:200]}"


@pytest.mark.slow
async def test_burst_of_64_streams_sheds_cleanly(skip_if_no_models: None, chat_request_factory: Any) -> None:
    payloads = [
        chat_request_factory.streaming(f"Burst {i}: tell me something.", max_tokens=8, seed=i)
        for i in range(BURST)
    ]
    limits = httpx.Limits(max_connections=BURST * 2, max_keepalive_connections=BURST * 2)
    started = time.monotonic()
    async with httpx.AsyncClient(
        base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout(STREAM_TIMEOUT), limits=limits
    ) as http:
        outcomes = await asyncio.gather(*(_one(http, p) for p in payloads))
    elapsed = time.monotonic() - started

    counts = Counter(kind for kind, _ in outcomes)
    print(f"\n{BURST} concurrent streams in {elapsed:.1f}s: {dict(counts)}")
    problems = [(kind, detail) for kind, detail in outcomes if kind not in CLEAN]
    assert sum(counts.values()) == len(payloads) == BURST, "every request sent must be classified"
    assert not problems, f"{len(problems)} requests did not end cleanly, e.g. {problems[:5]}"
    assert counts["ok"] >= 1, "at least some streams must complete under load"

    # The service recovers once the burst has drained.
    async with httpx.AsyncClient(base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout()) as http:
        after = await http.post(
            "/v1/chat/completions", json=chat_request_factory.simple(max_tokens=4, seed=1)
        )
    assert after.status_code == 200, after.text[:300]
