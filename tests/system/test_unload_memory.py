"""Unload frees the engine's memory; load brings the engine back (README "Load and unload").

Only visible on the machine that runs the cluster: after POST /v1/models/qwen2.5-7b/unload the
replica's vLLM EngineCore child process is gone (its memory returned: the replica's process tree
shrinks by about the engine's resident size), while the Ray replica process itself stays (it keeps
its resource reservation); after POST .../load a new EngineCore child runs under the same replica.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import httpx
import psutil
import pytest
from integration.support import D4_GENERATOR, admin_headers, fetch_models

from .cluster import engine_cores, one_replica, short_chat, tree_rss_mb, wait_ready

pytestmark = [pytest.mark.slow]

MODEL = os.environ.get("INFERENCE_UNLOAD_TEST_MODEL", D4_GENERATOR)


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _until(predicate: Callable[[], bool], timeout: float) -> float:
    """Poll `predicate()` until true; return the seconds it took (fail after `timeout`)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"condition not met within {timeout:.0f}s"
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def test_unload_ends_engine_process_and_load_restarts_it(http: httpx.AsyncClient) -> None:
    if MODEL not in {c["id"] for c in fetch_models()["data"]}:
        pytest.skip(f"{MODEL} is not deployed here")
    await wait_ready(http, [MODEL])
    replica = one_replica(MODEL)
    cores = engine_cores(replica)
    assert len(cores) == 1, f"expected one EngineCore child of replica {replica.pid}: {cores}"
    engine = cores[0]
    engine_mb = engine.memory_info().rss / 2**20
    tree_before = tree_rss_mb(replica)
    available_before = psutil.virtual_memory().available / 2**20
    try:
        started = time.monotonic()
        response = await http.post(f"/v1/models/{MODEL}/unload", headers=admin_headers())
        assert response.status_code == 200 and response.json()["status"] == "unloaded", response.text
        unload_s = time.monotonic() - started
        gone_s = await _until(lambda: _gone(engine), 60)
        assert not engine_cores(replica), f"engine processes remain after unload: {engine_cores(replica)}"
        assert replica.is_running(), "the Ray replica process must stay when its model is unloaded"
        assert one_replica(MODEL).pid == replica.pid
        tree_after = tree_rss_mb(replica)
        available_after = psutil.virtual_memory().available / 2**20
        print(
            f"\nunload of {MODEL}: answered in {unload_s:.1f}s, engine core {engine.pid} gone "
            f"{gone_s:.1f}s later; replica tree RSS {tree_before:.0f} -> {tree_after:.0f} MB "
            f"(engine core was {engine_mb:.0f} MB); host available memory "
            f"{available_before:.0f} -> {available_after:.0f} MB"
        )
        assert tree_after < tree_before - 0.5 * engine_mb, "unloading did not free the engine's memory"

        started = time.monotonic()
        response = await http.post(f"/v1/models/{MODEL}/load", headers=admin_headers())
        assert response.status_code == 200 and response.json()["status"] == "ready", response.text
        load_s = time.monotonic() - started
        new_cores = engine_cores(replica)
        assert len(new_cores) == 1, f"expected one new EngineCore after load: {new_cores}"
        assert new_cores[0].pid != engine.pid
        assert one_replica(MODEL).pid == replica.pid, "load must restart the engine, not the replica"
        print(
            f"load of {MODEL}: ready in {load_s:.1f}s, new engine core {new_cores[0].pid} "
            f"({new_cores[0].memory_info().rss / 2**20:.0f} MB) under the same replica {replica.pid}"
        )
        answer = await http.post("/v1/chat/completions", json=short_chat(MODEL))
        assert answer.status_code == 200, answer.text[:300]
    finally:
        await http.post(f"/v1/models/{MODEL}/load", headers=admin_headers())
        await wait_ready(http, [MODEL])
