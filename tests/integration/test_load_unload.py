"""Load and unload over HTTP (README "Load and unload"), against any deployment of the D4 generator.

POST /v1/models/{id}/unload stops admitting requests (409 model_not_loaded), lets in-flight requests
finish, then shuts the engine down; POST /v1/models/{id}/load starts it again. Both are idempotent
and safe to call concurrently. Every test restores the model to loaded in a `finally`, so the rest of
the suite finds the deployment as it was. (That unload really frees the engine's memory can only be
seen on the machine that runs it: tests/system/test_unload_memory.py.)

INFERENCE_UNLOAD_TEST_MODEL picks another model than qwen2.5-7b.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from .support import (
    BASE_URL,
    D4_GENERATOR,
    MODEL_LOAD_TIMEOUT,
    OK,
    REQUIRE_SERVICE,
    STREAM_TIMEOUT,
    admin_headers,
    auth_headers,
    ensure_model_ready,
    fetch_models,
    http_timeout,
    request_outcome,
    require_model_card,
)
from .validators import ResponseValidator

pytestmark = [pytest.mark.integration, pytest.mark.requires_model, pytest.mark.slow]

MODEL = os.environ.get("INFERENCE_UNLOAD_TEST_MODEL", D4_GENERATOR)
# How long a model directory keeps a replica's last report (deployments/model_directory.py).
REPORT_TTL_S = 15.0


def _chat(model: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": 3,
        **extra,
    }


def _long_stream(model: str, max_tokens: int, n: int = 1) -> dict[str, Any]:
    # ignore_eos: the random-weight test model would otherwise stop at a random point.
    return _chat(
        model,
        max_tokens,
        n=n,
        ignore_eos=True,
        stream=True,
        stream_options={"include_usage": True},
    )


@pytest.fixture
def model() -> str:
    """The model to unload, ready; skip when this deployment does not serve it."""
    require_model_card(MODEL)
    return MODEL


@pytest.fixture
def other_model(model: str) -> str | None:
    """Another ready model of the deployment (the critic in D4), if there is one."""
    cards = fetch_models()["data"]
    return next((c["id"] for c in cards if c["id"] != model and c.get("status") == "ready"), None)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout(MODEL_LOAD_TIMEOUT + 30)
    ) as client:
        yield client


async def _unload(http: httpx.AsyncClient, model: str, **params: Any) -> httpx.Response:
    return await http.post(f"/v1/models/{model}/unload", headers=admin_headers(), params=params)


async def _load(http: httpx.AsyncClient, model: str, **params: Any) -> httpx.Response:
    return await http.post(f"/v1/models/{model}/load", headers=admin_headers(), params=params)


async def restore_loaded(model: str) -> None:
    """Bring the model back to ready whatever happened (the `finally` of every test here)."""
    async with httpx.AsyncClient(
        base_url=BASE_URL, headers=admin_headers(), timeout=http_timeout(MODEL_LOAD_TIMEOUT + 30)
    ) as http:
        try:
            response = await http.post(f"/v1/models/{model}/load", params={"wait": MODEL_LOAD_TIMEOUT})
            if response.status_code == 200 and response.json().get("status") == "ready":
                return
        except httpx.HTTPError as exc:
            print(f"restoring {model}: {exc!r}; polling its card")
    await asyncio.to_thread(ensure_model_ready, model)


async def _timed(call: Any, started: float) -> tuple[httpx.Response, float]:
    """Await an HTTP call; return its response and when it answered (seconds since `started`)."""
    response = await call
    return response, time.monotonic() - started


def _card(cards: list[dict[str, Any]], model: str) -> dict[str, Any]:
    return next(c for c in cards if c["id"] == model)


async def test_unload_and_load_cycle(http: httpx.AsyncClient, model: str, other_model: str | None) -> None:
    try:
        # Three concurrent unloads: each only sets the desired state; all see the same end state.
        started = time.monotonic()
        unloads = await asyncio.gather(*(_unload(http, model) for _ in range(3)))
        unload_s = time.monotonic() - started
        for response in unloads:
            assert response.status_code == 200, f"unload: {response.status_code} {response.text[:300]}"
            assert response.json()["status"] == "unloaded", response.json()
            assert response.json()["id"] == model
        print(f"\nunload of {model} (3 concurrent calls): {unload_s:.1f}s")

        listed = (await http.get("/v1/models")).json()
        assert _card(listed["data"], model)["status"] == "unloaded", listed
        card = (await http.get(f"/v1/models/{model}")).json()
        assert card["status"] == "unloaded", card

        # Requests to an unloaded model: 409 model_not_loaded, streaming or not, chat or completion.
        for path, payload in (
            ("/v1/chat/completions", _chat(model)),
            ("/v1/chat/completions", _chat(model, stream=True)),
            ("/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 4}),
        ):
            response = await http.post(path, json=payload)
            error = ResponseValidator.validate_error(response, 409)
            assert error["code"] == "model_not_loaded", error
            assert error["type"] == "invalid_request_error", error

        # A pipeline naming it as generator is refused up front (400), not half-run.
        if other_model is not None:
            critique = _chat(
                other_model,
                orchestration={"mode": "critique", "generator": model, "critic": other_model, "rounds": 1},
            )
            response = await http.post("/v1/chat/completions", json=critique)
            error = ResponseValidator.validate_error(response, 400)
            assert error["param"] == "orchestration.generator", error
            # The rest of the deployment keeps serving.
            response = await http.post("/v1/chat/completions", json=_chat(other_model))
            assert response.status_code == 200, response.text[:300]

        # Unloaded on purpose, the model does not make the service unready (a deploy waits on it).
        ready = await http.get("/health/ready")
        assert ready.status_code == 200, f"readiness with {model} unloaded: {ready.text[:300]}"
        assert ready.json()["models"][model] == "unloaded", ready.json()

        # Unloading again is a no-op.
        again = await _unload(http, model)
        assert again.status_code == 200 and again.json()["status"] == "unloaded", again.text[:300]

        # Three concurrent loads: all answer 200 ready once the engine is up.
        started = time.monotonic()
        loads = await asyncio.gather(*(_load(http, model) for _ in range(3)))
        load_s = time.monotonic() - started
        for response in loads:
            assert response.status_code == 200, f"load: {response.status_code} {response.text[:300]}"
            assert response.json()["status"] == "ready", response.json()
        print(f"load of {model} (3 concurrent calls): {load_s:.1f}s")

        response = await http.post("/v1/chat/completions", json=_chat(model))
        assert response.status_code == 200, response.text[:300]
        ResponseValidator.validate_completion(response.json(), max_tokens=8)
        stream = await request_outcome(http, "/v1/chat/completions", _chat(model, stream=True))
        assert stream.kind == OK, stream
        assert (await http.get("/health/ready")).status_code == 200
    finally:
        await restore_loaded(model)


async def test_load_during_unload_converges_to_ready(http: httpx.AsyncClient, model: str) -> None:
    """Unload without waiting, then load while the engine is shutting down: load answers 200 only
    once the engine is back, and requests succeed right after."""
    try:
        response = await _unload(http, model, wait=0)
        assert response.status_code in (200, 202), response.text[:300]
        assert response.json()["status"] in ("ready", "unloading", "unloaded"), response.json()
        await asyncio.sleep(1.5)  # the replica has picked the unload up (it reconciles every second)
        started = time.monotonic()
        response = await _load(http, model)
        assert response.status_code == 200, f"load: {response.status_code} {response.text[:300]}"
        assert response.json()["status"] == "ready", response.json()
        print(f"\nload during unload of {model}: ready after {time.monotonic() - started:.1f}s")
        for _ in range(3):
            response = await http.post("/v1/chat/completions", json=_chat(model))
            assert response.status_code == 200, f"right after load said ready: {response.text[:300]}"
    finally:
        await restore_loaded(model)


async def _watch_card(
    http: httpx.AsyncClient, model: str, until: asyncio.Future[Any], started: float
) -> list[tuple[float, str, dict[str, int]]]:
    seen: list[tuple[float, str, dict[str, int]]] = []
    while not until.done():
        card = (await http.get(f"/v1/models/{model}")).json()
        seen.append((time.monotonic() - started, card.get("status", "?"), card.get("replicas", {})))
        await asyncio.sleep(0.5)
    return seen


async def test_unload_drains_in_flight_stream(http: httpx.AsyncClient, model: str) -> None:
    """A stream admitted before the unload still finishes with [DONE] (drain); new requests get 409
    meanwhile; the unload answers once the model is unloaded."""
    max_tokens = 1200  # a few seconds on the CPU profile, well within the drain budget
    first = asyncio.Event()
    try:
        started = time.monotonic()
        stream = asyncio.ensure_future(
            request_outcome(http, "/v1/chat/completions", _long_stream(model, max_tokens), first_chunk=first)
        )
        await asyncio.wait_for(first.wait(), STREAM_TIMEOUT)
        assert not stream.done(), f"the stream ended before the unload could start: {stream.result()}"
        unload_at = time.monotonic() - started
        unload = asyncio.ensure_future(_timed(_unload(http, model), started))
        watcher = asyncio.ensure_future(_watch_card(http, model, unload, started))

        probes: list[int] = []
        while not stream.done():
            response = await http.post("/v1/chat/completions", json=_chat(model, max_tokens=2))
            probes.append(response.status_code)
            await asyncio.sleep(0.5)
        outcome = await stream
        stream_end = time.monotonic() - started
        response, unload_end = await unload
        seen = await watcher

        print(
            f"\nstream of {max_tokens} tokens: first chunk, unload at {unload_at:.1f}s, stream ended "
            f"at {stream_end:.1f}s ({outcome.kind}), unload answered {response.status_code} at "
            f"{unload_end:.1f}s; card states {sorted({s for _, s, _ in seen})}; probe statuses {probes}"
        )
        assert outcome.kind == OK, f"the in-flight stream did not finish cleanly: {outcome}"
        assert outcome.usage and outcome.usage["completion_tokens"] == max_tokens, outcome.usage
        assert response.status_code == 200 and response.json()["status"] == "unloaded", response.text
        assert set(probes) <= {200, 409}, f"requests during the drain: {probes}"
        assert 409 in probes, "new requests must be refused while the model drains"
        assert "unloading" in {s for _, s, _ in seen}, f"card never said unloading: {seen}"
        assert unload_end >= stream_end - 0.5, "unload answered before the drained stream ended"
    finally:
        await restore_loaded(model)


async def _seconds_per_token(http: httpx.AsyncClient, model: str, streams: int, n: int) -> float:
    """Generation time per token of `streams` concurrent streams of `n` choices on this machine,
    measured on a short run of that shape (from the last first chunk to the last end)."""
    tokens = 128
    firsts = [asyncio.Event() for _ in range(streams)]
    tasks = [
        asyncio.ensure_future(
            request_outcome(http, "/v1/chat/completions", _long_stream(model, tokens, n), first_chunk=first)
        )
        for first in firsts
    ]
    await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), STREAM_TIMEOUT)
    flowing = time.monotonic()
    outcomes = await asyncio.gather(*tasks)
    assert all(o.kind == OK for o in outcomes), [str(o) for o in outcomes]
    return (time.monotonic() - flowing) / tokens


async def test_unload_status_stays_unloading_during_long_drain(http: httpx.AsyncClient, model: str) -> None:
    """While requests admitted before the unload are still streaming, the model must not be reported
    unloaded, and POST unload must not answer 200 'unloaded', however long the drain takes (within
    the model's drain budget). The streams are sized from this machine's measured speed to run
    about half the budget (at most 30 s): long enough to outlast the directory's report TTL, short
    enough to finish before the drain's cut."""
    streams, n = 8, 8
    card = require_model_card(model)
    budget = float(card.get("unload_drain_timeout_s") or 60)
    target_s = min(30.0, budget / 2)
    if target_s < REPORT_TTL_S + 5:
        skip_or_fail(f"{model}'s drain budget ({budget} s) is too short to outlast the report TTL")
    per_token = await _seconds_per_token(http, model, streams, n)
    cap = int(card.get("max_model_len") or 2048) - 64
    max_tokens = max(128, min(cap, int(target_s / per_token)))
    print(f"\n{per_token * 1000:.1f} ms/token at {streams} x n={n}: {max_tokens} tokens, ~{target_s:.0f}s")
    firsts = [asyncio.Event() for _ in range(streams)]
    try:
        started = time.monotonic()
        tasks = [
            asyncio.ensure_future(
                request_outcome(
                    http, "/v1/chat/completions", _long_stream(model, max_tokens, n), first_chunk=first
                )
            )
            for first in firsts
        ]
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), STREAM_TIMEOUT)
        unload_at = time.monotonic() - started
        unload = asyncio.ensure_future(_timed(_unload(http, model), started))
        all_streams = asyncio.gather(*tasks)
        watcher = asyncio.ensure_future(_watch_card(http, model, all_streams, started))
        outcomes = await all_streams
        stream_end = time.monotonic() - started
        seen = await watcher
        response, unload_end = await unload

        print(
            f"{streams} streams x n={n} x {max_tokens} tokens: unload at {unload_at:.1f}s, streams "
            f"ended at {stream_end:.1f}s ({[o.kind for o in outcomes]}), unload answered "
            f"{response.status_code} {response.json().get('status')} at {unload_end:.1f}s"
        )
        for at, status, replicas in seen:
            print(f"  {at:5.1f}s  {status:10s} {replicas}")
        assert all(o.kind == OK for o in outcomes), [str(o) for o in outcomes]
        if stream_end - unload_at < REPORT_TTL_S + 3:
            skip_or_fail(
                f"the drain took only {stream_end - unload_at:.1f}s ({max_tokens} tokens, capped at "
                f"{cap}); it must outlast the report TTL"
            )
        early = [(at, status, replicas) for at, status, replicas in seen if at < stream_end - 1]
        wrong = [entry for entry in early if entry[1] == "unloaded" or not entry[2]]
        assert not wrong, f"reported unloaded (or without replicas) while streams ran: {wrong[:3]}"
        assert unload_end >= stream_end - 1, (
            f"unload answered 200 'unloaded' at {unload_end:.1f}s, streams ran until {stream_end:.1f}s"
        )
    finally:
        await restore_loaded(model)


def skip_or_fail(message: str) -> None:
    """A check that cannot be made here: a failure where the service is required (CI), else a skip."""
    if REQUIRE_SERVICE:
        pytest.fail(message + " (INFERENCE_REQUIRE_SERVICE=1)", pytrace=False)
    pytest.skip(message)


@dataclass
class Probe:
    at: float  # seconds after the load call when the request was sent
    seconds: float  # how long its answer took
    status: int
    code: str | None
    retry_after: str | None


@pytest.fixture(scope="module")
async def requests_while_loading() -> list[Probe]:
    """Unload, then load without waiting, and send a chat request every 0.3 s until one succeeds."""
    require_model_card(MODEL)
    seen: list[Probe] = []
    async with httpx.AsyncClient(
        base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout(MODEL_LOAD_TIMEOUT + 30)
    ) as http:
        try:
            response = await _unload(http, MODEL)
            assert response.status_code == 200, response.text[:300]
            response = await _load(http, MODEL, wait=0)
            assert response.status_code in (200, 202), response.text[:300]
            started = time.monotonic()
            while time.monotonic() - started < MODEL_LOAD_TIMEOUT:
                sent = time.monotonic()
                response = await http.post("/v1/chat/completions", json=_chat(MODEL, max_tokens=2))
                code = None
                if response.status_code != 200:
                    code = ResponseValidator.validate_error(response).get("code")
                retry_after = response.headers.get("retry-after")
                seen.append(
                    Probe(sent - started, time.monotonic() - sent, response.status_code, code, retry_after)
                )
                if response.status_code == 200:
                    break
                await asyncio.sleep(0.3)
        finally:
            await restore_loaded(MODEL)
    print(f"\nrequests while {MODEL} loads (sent at / took / status / code):")
    for probe in seen:
        print(f"  {probe.at:5.1f}s  {probe.seconds:5.2f}s  {probe.status}  {probe.code}")
    return seen


async def test_requests_while_loading_are_refused_cleanly(requests_while_loading: list[Probe]) -> None:
    """Until the engine is up, requests get 409 (not yet loading) or 503 with Retry-After (loading);
    then they are served."""
    statuses = {p.status for p in requests_while_loading}
    assert requests_while_loading[-1].status == 200, f"never served again: {requests_while_loading[-3:]}"
    assert statuses <= {409, 503, 200}, requests_while_loading
    assert 503 in statuses, "the loading phase was never observed"
    for probe in requests_while_loading:
        if probe.status == 409:
            assert probe.code == "model_not_loaded", probe
        if probe.status == 503:
            assert probe.retry_after and probe.retry_after.isdigit(), f"503 without Retry-After: {probe}"


async def test_requests_while_loading_say_model_loading(requests_while_loading: list[Probe]) -> None:
    codes = {p.code for p in requests_while_loading if p.status == 503}
    assert codes == {"model_loading"}, f"503 codes while loading: {codes}"


async def test_replica_stays_responsive_while_loading(requests_while_loading: list[Probe]) -> None:
    refused = [p for p in requests_while_loading if p.status != 200]
    slow = [p for p in refused if p.seconds > 5]
    assert not slow, f"refusals took up to {max(p.seconds for p in slow):.1f}s while the engine loaded"
