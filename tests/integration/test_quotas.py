"""Per-key quotas from the keys file (tests/keys.test.yaml, copied and pointed at by
INFERENCE_KEYS_FILE in scripts/test_all.sh), driven through the official `openai` SDK.

Each test uses keys of its own. Buckets refill continuously (a limit per minute), so every bound
below allows for the refill during the time the test measured itself, never for a guessed speed.
The reload tests rewrite the keys file, so they need it on this machine (INFERENCE_KEYS_FILE).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from .support import (
    ADMIN_KEY,
    API_KEY,
    BASE_URL,
    D4_GENERATOR,
    REQUIRE_SERVICE,
    TEST_TIMEOUT,
    TIGHT_BASE_URL,
    auth_headers,
    http_timeout,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_model]

KEYS_FILE = os.environ.get("INFERENCE_KEYS_FILE", "")
METRICS_URL = os.environ.get("INFERENCE_METRICS_URL", "http://127.0.0.1:9101/metrics")
TIGHT_MODEL = "llama-3.2-3b"
REQUEST_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)
TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
RESET = re.compile(r"^(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
MESSAGES: Any = [{"role": "user", "content": "Say hi."}]
# How long the concurrency slot of a finished stream may take to come back.
SLOT_RELEASE_TIMEOUT_S = 10.0


def _keys() -> dict[str, dict[str, Any]]:
    if not KEYS_FILE or not Path(KEYS_FILE).is_file():
        message = "INFERENCE_KEYS_FILE is not set to the cluster's keys file (scripts/test_all.sh sets it)"
        if REQUIRE_SERVICE:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    entries = yaml.safe_load(Path(KEYS_FILE).read_text())["keys"]
    return {entry["tenant"]: entry for entry in entries}


@pytest.fixture
def keys(skip_if_service_unavailable: None) -> dict[str, dict[str, Any]]:
    return _keys()


def sdk(key: str, base_url: str = BASE_URL, retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key=key, max_retries=retries, timeout=TEST_TIMEOUT
    )


async def chat(client: openai.AsyncOpenAI, model: str = D4_GENERATOR, **extra: Any) -> Any:
    """One small chat completion; returns the raw response (headers) or raises the SDK's error."""
    args: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 4, **extra}
    return await client.chat.completions.with_raw_response.create(**args)


def assert_reset(value: str) -> None:
    assert RESET.match(value), f"x-ratelimit-reset-* {value!r} is not in OpenAI's duration format"


def assert_limited(error: openai.RateLimitError, kind: str) -> int:
    """OpenAI's 429: code rate_limit_exceeded, type requests|tokens, Retry-After from the refill."""
    body = error.body if isinstance(error.body, dict) else {}
    assert error.status_code == 429
    assert (body.get("code"), body.get("type")) == ("rate_limit_exceeded", kind), body
    retry_after = int(error.response.headers["retry-after"])
    assert 1 <= retry_after <= 60, retry_after
    assert int(error.response.headers["retry-after-ms"]) <= retry_after * 1000
    return retry_after


async def test_requests_per_minute_trips_with_openai_headers(keys: dict[str, dict[str, Any]]) -> None:
    entry = keys["team-rpm"]
    limit = entry["requests_per_minute"]
    client = sdk(entry["key"])
    started, admitted, remaining = time.monotonic(), 0, []
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(limit + 5):
            raw = await chat(client)
            admitted += 1
            for name in REQUEST_HEADERS:
                assert name in raw.headers, f"{name} missing: {dict(raw.headers)}"
            assert all(name not in raw.headers for name in TOKEN_HEADERS)
            assert int(raw.headers["x-ratelimit-limit-requests"]) == limit
            assert_reset(raw.headers["x-ratelimit-reset-requests"])
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    elapsed = time.monotonic() - started
    refilled = elapsed * limit / 60
    assert limit <= admitted <= limit + refilled + 1, (admitted, elapsed)
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] <= 1 + refilled, remaining
    retry_after = assert_limited(refused.value, "requests")
    # One request refills in 60/limit s: Retry-After is at most that, rounded up.
    assert retry_after <= 60 / limit + 1
    for name in REQUEST_HEADERS:
        assert name in refused.value.response.headers
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    await client.close()
    # Per-tenant metrics: requests and the rejection, labelled by tenant and never by key.
    assert await until_metric("ray_inference_tenant_rejections_total", "team-rpm", 1) >= 1
    assert await until_metric("ray_inference_tenant_requests_total", "team-rpm", admitted + 1) >= admitted + 1
    async with httpx.AsyncClient(timeout=10) as http:
        assert entry["key"] not in (await http.get(METRICS_URL)).text


async def test_the_sdk_retry_honours_retry_after(keys: dict[str, dict[str, Any]]) -> None:
    """The SDK sleeps Retry-After (retry-after-ms) and its retry is admitted: the wait is the refill."""
    entry = keys["team-sdk"]
    limit = entry["requests_per_minute"]
    plain = sdk(entry["key"])
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(limit + 5):
            await chat(plain)
    waited_for = int(refused.value.response.headers["retry-after-ms"]) / 1000
    retrying = sdk(entry["key"], retries=2)
    started = time.monotonic()
    raw = await chat(retrying)
    took = time.monotonic() - started
    assert raw.http_response.status_code == 200
    # The SDK waited (about Retry-After, as the refill needed), and needed no second retry.
    assert took >= min(waited_for, 60 / limit) * 0.5, (took, waited_for)
    assert took <= 2 * (60 / limit) + TEST_TIMEOUT / 4
    await plain.close()
    await retrying.close()


async def test_tokens_per_minute_trips(keys: dict[str, dict[str, Any]]) -> None:
    entry = keys["team-tpm"]
    limit = entry["tokens_per_minute"]
    client = sdk(entry["key"])
    spent, seen, spends, started = 0, [], [], time.monotonic()
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(60):
            raw = await chat(client, max_tokens=32)
            for name in TOKEN_HEADERS:
                assert name in raw.headers, f"{name} missing: {dict(raw.headers)}"
            assert int(raw.headers["x-ratelimit-limit-tokens"]) == limit
            seen.append(int(raw.headers["x-ratelimit-remaining-tokens"]))
            spends.append(raw.parse().usage.total_tokens)
            spent += spends[-1]
            if len(seen) == 1:
                # A non-streamed answer is charged before it is sent: its headers count it already.
                refill = (time.monotonic() - started) * limit / 60
                assert limit - spent <= seen[0] <= limit - spent + refill + 1, (seen, spent)
    refilled = (time.monotonic() - started) * limit / 60
    # Admitted while tokens remained: what was spent is the limit, overshot by at most the last answer.
    assert limit <= spent + 1 <= limit + refilled + max(spends) + 1, (spent, seen)
    assert_limited(refused.value, "tokens")
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    await client.close()


async def test_stream_tokens_are_charged_without_showing_usage(keys: dict[str, dict[str, Any]]) -> None:
    """A stream is charged from its usage chunk; a client that did not ask for usage sees none."""
    entry = keys["team-tpm-stream"]
    client = sdk(entry["key"])
    stream = await client.chat.completions.create(
        model=D4_GENERATOR, messages=MESSAGES, max_tokens=16, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.usage is None and chunk.choices for chunk in chunks)
    raw = await chat(client)
    remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert remaining < entry["tokens_per_minute"], "the stream's tokens were not charged"
    await client.close()


async def test_concurrency_limit_trips_and_frees(keys: dict[str, dict[str, Any]]) -> None:
    entry = keys["team-conc"]
    client = sdk(entry["key"])
    body = {
        "model": D4_GENERATOR,
        "messages": MESSAGES,
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    async with (
        httpx.AsyncClient(base_url=BASE_URL, timeout=http_timeout()) as http,
        http.stream(
            "POST", "/v1/chat/completions", json=body, headers=auth_headers(entry["key"])
        ) as open_one,
    ):
        assert open_one.status_code == 200
        lines = aiter(open_one.aiter_lines())
        assert (await anext(lines)).startswith("data: ")  # the stream is open
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(client)
        assert_limited(refused.value, "requests")
        assert "concurrent" in refused.value.message
        async for _ in lines:
            pass
    # The slot is given back when the server finishes the response, a moment after the client has
    # read its last bytes: wait for it (bounded), then it must be free.
    deadline = time.monotonic() + SLOT_RELEASE_TIMEOUT_S
    while True:
        try:
            raw = await chat(client)
            break
        except openai.RateLimitError as exc:
            if "concurrent" not in exc.message or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert raw.http_response.status_code == 200
    await client.close()


async def test_pipeline_steps_are_all_charged(keys: dict[str, dict[str, Any]]) -> None:
    """Every step of a critique pipeline is charged: the tenant's tokens counter grows by exactly the
    pipeline's usage (the sum over its steps)."""
    entry = keys["team-pipe"]
    before = await tenant_total("ray_inference_tenant_tokens_total", "team-pipe")
    client = sdk(entry["key"])
    response = await client.chat.completions.create(
        model=D4_GENERATOR,
        messages=MESSAGES,
        max_tokens=8,
        extra_body={"orchestration": {"mode": "critique", "rounds": 1}},
    )
    await client.close()
    assert response.model_extra is not None and response.usage is not None
    steps = response.model_extra["orchestration"]["steps"]
    assert len(steps) >= 2
    assert response.usage.total_tokens == sum(step["usage"]["total_tokens"] for step in steps)
    expected = before + response.usage.total_tokens
    total = await until_metric("ray_inference_tenant_tokens_total", "team-pipe", expected)
    assert total == expected


async def test_a_pipeline_over_budget_ends_with_an_error_event(keys: dict[str, dict[str, Any]]) -> None:
    """The first step spends more than the key's tokens per minute: the next step is refused, and
    the stream ends with a rate_limit_exceeded error event and [DONE], not a silent cut."""
    entry = keys["team-cut"]
    body = {
        "model": D4_GENERATOR,
        "messages": MESSAGES,
        "max_tokens": 2 * entry["tokens_per_minute"],
        "ignore_eos": True,
        "stream": True,
        "orchestration": {"mode": "critique", "rounds": 1},
    }
    events = []
    async with (
        httpx.AsyncClient(base_url=BASE_URL, timeout=http_timeout()) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=auth_headers(entry["key"])) as stream,
    ):
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "tokens"), error
    assert "critic step" in error["message"] and "tokens per min" in error["message"], error


async def test_admin_and_user_roles(keys: dict[str, dict[str, Any]]) -> None:
    user, ops = keys["team-user"]["key"], keys["ops"]["key"]
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=http_timeout()) as http:
        for action in ("load", "unload"):
            refused = await http.post(f"/v1/models/{D4_GENERATOR}/{action}", headers=auth_headers(user))
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["type"] == "permission_error"
        if ADMIN_KEY and ADMIN_KEY != API_KEY:
            legacy_user = await http.post(f"/v1/models/{D4_GENERATOR}/load", headers=auth_headers(API_KEY))
            assert legacy_user.status_code == 403, legacy_user.text
        loaded = await http.post(f"/v1/models/{D4_GENERATOR}/load?wait=60", headers=auth_headers(ops))
        assert loaded.status_code == 200 and loaded.json()["status"] == "ready", loaded.text
        # The key's models list bounds what it may address.
        other = await http.post(
            "/v1/chat/completions",
            json={"model": "deepseek-r1-7b", "messages": MESSAGES, "max_tokens": 2},
            headers=auth_headers(user),
        )
        assert other.status_code == 403 and other.json()["error"]["code"] == "model_not_allowed", other.text
        # The legacy INFERENCE_API_KEY keeps working, unlimited: no rate-limit headers.
        legacy = await http.post(
            "/v1/chat/completions",
            json={"model": D4_GENERATOR, "messages": MESSAGES, "max_tokens": 2},
            headers=auth_headers(API_KEY),
        )
        assert legacy.status_code == 200 and "x-ratelimit-limit-requests" not in legacy.headers


async def test_an_oversized_request_id_is_not_echoed(skip_if_service_unavailable: None) -> None:
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=http_timeout()) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": D4_GENERATOR, "messages": MESSAGES, "max_tokens": 2},
            headers={**auth_headers(API_KEY), "x-request-id": "x" * 5000},
        )
    assert response.status_code == 200, response.text
    response_id = response.json()["id"]
    assert len(response_id) <= 128 and "x" * 129 not in response_id
    # Our id is on the response for the client to quote. Ray Serve's RequestIdMiddleware, which wraps
    # the application, also echoes the client's header as it came: the app cannot remove that one.
    echoed = response.headers.get_list("x-request-id")
    print("x-request-id header lengths that reached the client:", [len(v) for v in echoed])
    assert any(response_id.endswith(value) or value == response_id for value in echoed), echoed


# ---------------------------------------------------------------- reload


@pytest.fixture
def keys_file(keys: dict[str, dict[str, Any]]) -> Iterator[Path]:
    path = Path(KEYS_FILE)
    original = path.read_text()
    try:
        yield path
    finally:
        path.write_text(original)


def rewrite(path: Path, text: str) -> None:
    # As a Kubernetes Secret volume does: a new file swapped in, never a half-written one.
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    os.replace(staged, path)


async def until_status(key: str, status: int, within_s: float = 30) -> int:
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=http_timeout()) as http:
        while True:
            answer = (await http.get("/v1/models", headers=auth_headers(key))).status_code
            if answer == status or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.5)


async def test_a_reload_takes_effect_and_a_bad_file_is_refused(keys_file: Path) -> None:
    original = keys_file.read_text()
    added = "sk-test-reloaded-0001"
    assert await until_status(added, 401, within_s=0) == 401
    document = yaml.safe_load(original)
    document["keys"].append({"key": added, "tenant": "team-reloaded", "requests_per_minute": 100})
    rewrite(keys_file, yaml.safe_dump(document))
    assert await until_status(added, 200) == 200, "the new key was not accepted after a reload"

    # A bad file (an unknown field) is refused: the policy in force, with the added key, stays.
    document["keys"].append({"key": "sk-test-never-00001", "tenant": "x", "requests_per_mnute": 1})
    rewrite(keys_file, yaml.safe_dump(document))
    await asyncio.sleep(5)  # several reload checks
    assert await until_status(added, 200, within_s=0) == 200
    assert await until_status("sk-test-never-00001", 401, within_s=0) == 401
    rewrite(keys_file, "keys: [\n")  # not even YAML
    await asyncio.sleep(5)
    assert await until_status(added, 200, within_s=0) == 200

    rewrite(keys_file, original)
    assert await until_status(added, 401) == 401, "a key removed from the file still works"


# ---------------------------------------------------------------- two ingress replicas


async def test_the_limit_holds_across_two_ingress_replicas(keys: dict[str, dict[str, Any]]) -> None:
    """The tight app runs two ingress replicas. A key's requests, spread over both (a new connection
    each), are admitted in total as one bucket allows, not once per replica."""
    entry = keys["team-multi"]
    limit = entry["requests_per_minute"]
    before = await tenant_by_replica("ray_inference_tenant_requests_total", "team-multi")
    started, statuses = time.monotonic(), []
    for _ in range(3 * limit):
        client = sdk(entry["key"], base_url=TIGHT_BASE_URL)  # its own connection pool
        try:
            await chat(client, model=TIGHT_MODEL, max_tokens=1)
            statuses.append(200)
        except openai.RateLimitError as error:
            assert_limited(error, "requests")
            statuses.append(429)
        finally:
            await client.close()
    elapsed = time.monotonic() - started
    admitted = statuses.count(200)
    assert limit <= admitted <= limit + elapsed * limit / 60 + 1, (statuses, elapsed)
    deadline = time.monotonic() + 40
    while True:
        after = await tenant_by_replica("ray_inference_tenant_requests_total", "team-multi")
        served = {replica: n - before.get(replica, 0) for replica, n in after.items()}
        if sum(served.values()) >= len(statuses) or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    assert sum(served.values()) == len(statuses), served
    busy = [replica for replica, n in served.items() if n > 0]
    assert len(busy) == 2, f"the requests did not reach both ingress replicas: {served}"


# ---------------------------------------------------------------- metrics helpers


async def scrape() -> AsyncIterator[tuple[str, dict[str, str], float]]:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(METRICS_URL)).text
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)\{(.*)\} ([0-9.e+]+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            yield match.group(1), labels, float(match.group(3))


async def tenant_total(metric: str, tenant: str) -> float:
    return sum([v async for name, labels, v in scrape() if name == metric and labels.get("tenant") == tenant])


async def tenant_by_replica(metric: str, tenant: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    async for name, labels, value in scrape():
        if name == metric and labels.get("tenant") == tenant:
            replica = labels.get("replica", "?")
            totals[replica] = totals.get(replica, 0) + value
    return totals


async def until_metric(metric: str, tenant: str, expected: float, within_s: float = 40) -> float:
    """Ray exports metrics every few seconds: wait for the count to arrive (or overshoot)."""
    deadline = time.monotonic() + within_s
    while True:
        total = await tenant_total(metric, tenant)
        if total >= expected or time.monotonic() > deadline:
            return total
        await asyncio.sleep(2)
