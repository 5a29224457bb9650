"""Graceful update: redeploy a changed config while long streams are in flight.

The change is the inference app's `args.limits.max_messages` (256 -> 8). `limits` is an argument of
the ingress *and* of every model deployment (deployments/model/server.py `ModelServer.__init__(...,
limits, ...)`; deployments/app.py binds `args.limits`), so the ingress and both model replicas must be
replaced (new engines). Observed with Ray 2.60: Serve gives *every* deployment of an application
whose args changed a new version, so the ModelDirectory (same args) restarts too; it starts from the
desired states kept in Ray's GCS key-value store, so a model unloaded before the redeploy stays
unloaded (tests/system/test_unload_survives_redeploy.py); the "tight" app is untouched. Old replicas
finish their in-flight requests first (graceful_shutdown_timeout_s: models 60 s, the ingress 90 s,
since behind HAProxy it still accepts requests for 30 s after it starts stopping); what is still
open 5 s before a budget ends gets an error event (serve_app/draining.py).

Asserted: streams started before the deploy end with `data: [DONE]` and no error event (they are
sized to fit the budgets even on a machine four times slower than the fastest seen); streams started
while it runs end the same way, or, when the budget of the replica they reached ran out first (a
slower machine), with a restart error event (`service_restarting`, `model_restarting`) and
`data: [DONE]`, or a 503 with Retry-After and that code when the stream had not started (it was
still waiting for a new model replica), never with a cut connection. HAProxy's `hard-stop-after`
must outlast the streams (scripts/cluster.sh): a reloaded-out HAProxy process cut one at 120 s.
Then: the new limit is in force; the service answers; exactly the predicted replicas were replaced.
The original config is redeployed at the end (and checked). Both update times are printed.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from integration.support import (
    D4_CRITIC,
    D4_GENERATOR,
    OK,
    REJECTED,
    STREAM_ERROR,
    Outcome,
    fetch_models,
    request_outcome,
)

from .cluster import (
    APP,
    SERVE_CONFIG,
    app_config,
    deploy,
    long_stream,
    replica_pids,
    require_running,
    short_chat,
    wait_ready,
)

pytestmark = [pytest.mark.slow]

MODELS = [D4_GENERATOR, D4_CRITIC]
NEW_MAX_MESSAGES = 8
RESTART_CODES = {"service_restarting", "model_restarting"}
STREAM_TOKENS = 1500  # several seconds each
WAVE_EVERY_S = 10.0  # while the deploy runs, new long streams start this often


def _clean_restart(label: str, outcome: Outcome) -> bool:
    """A stream admitted during the deploy whose replica's budget ran out: an error event saying so,
    or, when its response had not started (it waited for a new model replica), a 503 with
    Retry-After saying so."""
    restart = (outcome.error or {}).get("code") in RESTART_CODES
    stream_ended = outcome.kind == STREAM_ERROR
    refused = outcome.kind == REJECTED and outcome.status == 503 and outcome.retry_after is not None
    return label.startswith("during") and restart and (stream_ended or refused)


def _messages(count: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"message {i}"} for i in range(count)]


async def _stream_wave(
    http: httpx.AsyncClient, label: str, out: list[tuple[str, Outcome]], started: asyncio.Event | None = None
) -> None:
    firsts = [asyncio.Event() for _ in MODELS]
    tasks = [
        request_outcome(
            http,
            "/v1/chat/completions",
            long_stream(model, STREAM_TOKENS),
            total_timeout=300,
            first_chunk=first,
        )
        for model, first in zip(MODELS, firsts, strict=True)
    ]
    gathered = asyncio.gather(*tasks)
    if started is not None:
        await asyncio.gather(*(f.wait() for f in firsts))
        started.set()
    for model, outcome in zip(MODELS, await gathered, strict=True):
        out.append((f"{label} {model}", outcome))


async def test_redeploy_with_streams_in_flight(
    http: httpx.AsyncClient, serve_config: dict[str, Any], tmp_path: Path
) -> None:
    deployed = {c["id"] for c in fetch_models()["data"]}
    if not set(MODELS) <= deployed:
        pytest.skip(f"needs {MODELS} deployed; found {sorted(deployed)}")
    await require_running(serve_config)
    await wait_ready(http, MODELS)

    changed = copy.deepcopy(serve_config)
    args = app_config(changed, APP).setdefault("args", {})
    old_max = args.setdefault("limits", {}).get("max_messages", 256)
    assert old_max > NEW_MAX_MESSAGES + 1
    args["limits"]["max_messages"] = NEW_MAX_MESSAGES
    changed_path = tmp_path / "serve_config.changed.yaml"
    changed_path.write_text(yaml.safe_dump(changed, sort_keys=False))

    before = replica_pids(serve_config)
    outcomes: list[tuple[str, Outcome]] = []
    try:
        # Streams in flight before the deploy starts.
        in_flight = asyncio.Event()
        first_wave = asyncio.ensure_future(_stream_wave(http, "before", outcomes, in_flight))
        await asyncio.wait_for(in_flight.wait(), 60)

        deploying = asyncio.ensure_future(deploy(changed_path))
        waves: list[asyncio.Future[None]] = []
        while not deploying.done():  # and streams started while the update runs
            waves.append(
                asyncio.ensure_future(
                    _stream_wave(http, f"during+{len(waves) * WAVE_EVERY_S:.0f}s", outcomes)
                )
            )
            await asyncio.wait([deploying], timeout=WAVE_EVERY_S)
        update_s = deploying.result()
        await asyncio.gather(first_wave, *waves)
        after = replica_pids(serve_config)

        print(f"\nupdate (max_messages {old_max} -> {NEW_MAX_MESSAGES}) took {update_s:.1f}s until ready")
        print(f"stream outcomes: {Counter(o.kind for _, o in outcomes)}")
        for label, outcome in outcomes:
            print(f"  {label}: {outcome}")
        replaced = sorted(k for k in before if before[k] != after.get(k))
        kept = sorted(k for k in before if before[k] == after.get(k))
        print(f"replicas replaced: {replaced}; kept: {kept}")

        bad = [(label, str(o)) for label, o in outcomes if o.kind != OK and not _clean_restart(label, o)]
        assert not bad, f"streams that did not finish with [DONE] (or a clean restart error): {bad}"
        for label, outcome in outcomes:
            if outcome.kind == OK:
                assert outcome.usage and outcome.usage["completion_tokens"] == STREAM_TOKENS, (label, outcome)

        # The new config is in force, and the service answers.
        await wait_ready(http, MODELS)
        response = await http.post(
            "/v1/chat/completions", json={**short_chat(MODELS[0]), "messages": _messages(9)}
        )
        assert response.status_code == 400, (
            f"max_messages={NEW_MAX_MESSAGES} not in force: {response.text[:300]}"
        )
        assert response.json()["error"]["param"] == "messages", response.text

        # Serve gives every deployment of an app whose args changed a new version, so all of the
        # app's replicas restart, the ModelDirectory included (it restores its desired states from
        # the GCS); other applications keep their processes.
        predicted = {k for k in before if k.startswith(f"{APP}:")}
        assert set(replaced) == predicted, f"replaced {replaced}, predicted {sorted(predicted)}"
    finally:
        restore_s = await deploy(SERVE_CONFIG)
        await wait_ready(http, MODELS)
        print(f"restoring {SERVE_CONFIG.name} took {restore_s:.1f}s until ready")
    response = await http.post(
        "/v1/chat/completions", json={**short_chat(MODELS[0]), "messages": _messages(9)}
    )
    assert response.status_code == 200, f"original max_messages not restored: {response.text[:300]}"
