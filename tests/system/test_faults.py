"""Fault injection: SIGKILL the vLLM engine process of qwen2.5-7b while it streams.

README "Load and unload": an engine that dies on its own fails the replica's health check, so Ray
replaces the replica; requests in flight on it get a 503 with Retry-After (or, once their stream has
started, an error event followed by [DONE]); a stream never hangs. The scenario runs once (a
module fixture) and the tests below check its record:

* every in-flight request ends cleanly and in bounded time: a complete 200 stream, a stream ending
  with `data: {"error": ...}` then `data: [DONE]`, or a 503 OpenAI error with Retry-After; never a
  timeout or a reset connection;
* a new request to qwen2.5-7b succeeds again within RECOVERY_BOUND_S (the measured time is printed);
* deepseek-r1-7b keeps answering throughout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from integration.support import (
    BASE_URL,
    D4_CRITIC,
    D4_GENERATOR,
    OK,
    REJECTED,
    STREAM_ERROR,
    Outcome,
    auth_headers,
    fetch_models,
    http_timeout,
    request_outcome,
)

from .cluster import engine_cores, long_stream, one_replica, replica_processes, short_chat, wait_ready

pytestmark = [pytest.mark.slow]

VICTIM = os.environ.get("FAULT_TEST_MODEL", D4_GENERATOR)
BYSTANDER = os.environ.get("FAULT_TEST_BYSTANDER", D4_CRITIC)
IN_FLIGHT = 8
MAX_TOKENS = 400
RECOVERY_BOUND_S = float(os.environ.get("FAULT_RECOVERY_BOUND_S", "240"))
IN_FLIGHT_BOUND_S = 120.0  # an in-flight request that has not ended by then counts as hung


@dataclass
class KillRecord:
    in_flight: list[Outcome]
    recovery_s: float | None
    probes: list[tuple[float, int | None, str]]  # (seconds after the kill, status, error code/detail)
    bystander: list[tuple[float, int | None]]
    old_engine_pid: int
    new_engine_pids: list[int] = field(default_factory=list)


async def _probe(http: httpx.AsyncClient, model: str) -> tuple[int | None, str, str | None]:
    try:
        response = await http.post("/v1/chat/completions", json=short_chat(model), timeout=http_timeout(60))
    except httpx.HTTPError as exc:
        return None, repr(exc), None
    if response.status_code == 200:
        return 200, "", None
    try:
        error = response.json()["error"]
        detail = f"{error.get('type')}/{error.get('code')}"
    except (ValueError, KeyError, TypeError):
        detail = response.text[:100]
    return response.status_code, detail, response.headers.get("retry-after")


@pytest.fixture(scope="module")
async def engine_kill() -> KillRecord:
    ids = {c["id"]: c for c in fetch_models()["data"]}
    for model in (VICTIM, BYSTANDER):
        if model not in ids:
            pytest.skip(f"{model} is not deployed here")
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout(IN_FLIGHT_BOUND_S), limits=limits
    ) as http:
        await wait_ready(http, [VICTIM, BYSTANDER])
        replica = one_replica(VICTIM)
        cores = engine_cores(replica)
        assert len(cores) == 1, f"expected one EngineCore child of replica {replica.pid}: {cores}"
        victim = cores[0]

        firsts = [asyncio.Event() for _ in range(IN_FLIGHT)]
        streams = [
            asyncio.ensure_future(
                request_outcome(
                    http,
                    "/v1/chat/completions",
                    long_stream(VICTIM, MAX_TOKENS),
                    total_timeout=IN_FLIGHT_BOUND_S,
                    first_chunk=first,
                )
            )
            for first in firsts
        ]
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), 60)
        running = sum(not s.done() for s in streams)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        print(f"\nSIGKILL engine core {victim.pid} of replica {replica.pid} with {running} streams in flight")

        bystander: list[tuple[float, int | None]] = []
        recovered = asyncio.Event()

        async def watch_bystander() -> None:
            while not recovered.is_set():
                status, _, _ = await _probe(http, BYSTANDER)
                bystander.append((time.monotonic() - killed_at, status))
                await asyncio.sleep(1)

        watcher = asyncio.ensure_future(watch_bystander())
        in_flight = list(await asyncio.gather(*streams))

        probes: list[tuple[float, int | None, str]] = []
        recovery_s = None
        while time.monotonic() - killed_at < RECOVERY_BOUND_S:
            status, detail, retry_after = await _probe(http, VICTIM)
            probes.append((time.monotonic() - killed_at, status, f"{detail} retry-after={retry_after}"))
            if status == 200:
                recovery_s = time.monotonic() - killed_at
                break
            await asyncio.sleep(1)
        recovered.set()
        await watcher

        new_cores = [c.pid for r in replica_processes(VICTIM) for c in engine_cores(r)]
        record = KillRecord(in_flight, recovery_s, probes, bystander, victim.pid, new_cores)
        print(f"in-flight outcomes: {Counter(o.kind for o in in_flight)}")
        for outcome in in_flight:
            print(f"  {outcome}")
        shown = Counter((status, detail) for _, status, detail in probes)
        print(f"probes of {VICTIM} after the kill: {dict(shown)}")
        print(
            f"recovery: {VICTIM} answered again {recovery_s and round(recovery_s, 1)}s after the kill; "
            f"new engine pids {new_cores}; {BYSTANDER}: {Counter(s for _, s in bystander)}"
        )
        # Leave the cluster as we found it, whatever the tests below conclude.
        await wait_ready(http, [VICTIM, BYSTANDER])
        return record


def test_in_flight_requests_end_cleanly(engine_kill: KillRecord) -> None:
    assert len(engine_kill.in_flight) == IN_FLIGHT, "every request sent must be accounted for"
    unclean: list[Outcome] = []
    for outcome in engine_kill.in_flight:
        clean = (
            outcome.kind == OK
            or (outcome.kind == STREAM_ERROR and outcome.error is not None)
            or (outcome.kind == REJECTED and outcome.status == 503)
        )
        if not clean:
            unclean.append(outcome)
    assert not unclean, f"in-flight requests that hung, were reset or ended malformed: {unclean}"
    assert all(o.seconds < IN_FLIGHT_BOUND_S for o in engine_kill.in_flight)


def test_victim_recovers_within_bound(engine_kill: KillRecord) -> None:
    assert engine_kill.recovery_s is not None, (
        f"{VICTIM} did not answer within {RECOVERY_BOUND_S:.0f}s of the engine kill; "
        f"last probes {engine_kill.probes[-3:]}"
    )
    print(f"\nmeasured recovery after the engine kill: {engine_kill.recovery_s:.1f}s")
    assert engine_kill.new_engine_pids, "no engine process runs for the model after recovery"
    assert engine_kill.old_engine_pid not in engine_kill.new_engine_pids
    # No probe may hang or be reset while the replica is replaced.
    dropped = [p for p in engine_kill.probes if p[1] is None]
    assert not dropped, f"probes dropped during recovery: {dropped[:3]}"


def test_bystander_kept_answering(engine_kill: KillRecord) -> None:
    statuses = Counter(status for _, status in engine_kill.bystander)
    assert engine_kill.bystander, "the bystander was never probed"
    assert set(statuses) == {200}, f"{BYSTANDER} during {VICTIM}'s recovery: {dict(statuses)}"


def test_dead_engine_errors_are_503_not_500(engine_kill: KillRecord) -> None:
    stream_errors = [o.error for o in engine_kill.in_flight if o.kind == STREAM_ERROR and o.error]
    internal = [e for e in stream_errors if e.get("type") == "internal_error"]
    assert not internal, f"in-flight streams ended with internal errors: {internal[:2]}"
    failed_probes = [p for p in engine_kill.probes if p[1] not in (200, 503)]
    assert not failed_probes, f"requests to the dead engine got {failed_probes[:3]} (want 503 + Retry-After)"
    assert all("retry-after=None" not in p[2] for p in engine_kill.probes if p[1] == 503)
