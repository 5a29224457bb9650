"""A model unloaded before a redeploy stays unloaded after it (README "Load and unload").

Serve gives every deployment of an application whose args changed a new version, so a redeploy
restarts the app's ModelDirectory with its model replicas; the directory keeps desired states in
Ray's GCS key-value store (deployments/desired_state_store.py) and starts from them.

On the "tight" app (one model, the cheapest to restart): unload llama-3.2-3b, redeploy the app with
changed args (`limits.max_messages`), and check that its directory and model replica were replaced,
that the model's card says unloaded with the new replica reporting unloaded, that the new replica
never started an engine, and that a chat request gets 409 model_not_loaded. Then load it back and
redeploy the original config: the model comes back ready (its "loaded" is kept as well). The
cluster is left as it was found, also when the test fails.
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from integration.support import (
    MODEL_LOAD_TIMEOUT,
    TIGHT_BASE_URL,
    admin_headers,
    auth_headers,
    http_timeout,
)

from .cluster import (
    APP,
    SERVE_CONFIG,
    app_config,
    deploy,
    engine_cores,
    one_replica,
    replica_pids,
    require_running,
    running_apps,
    short_chat,
    wait_ready,
)

pytestmark = [pytest.mark.slow]

TIGHT_APP = "tight"
MODEL = "llama-3.2-3b"  # the tight app's only model (preset single-llama-3.2-3b)
CHANGED_MAX_MESSAGES = 200
REPORT_WAIT_S = 60.0  # a new replica reports to its directory within seconds of starting


async def _card(tight: httpx.AsyncClient) -> dict[str, Any]:
    response = await tight.get(f"/v1/models/{MODEL}")
    assert response.status_code == 200, response.text
    card: dict[str, Any] = response.json()
    return card


async def _reported_card(tight: httpx.AsyncClient) -> dict[str, Any]:
    """The model's card once a replica of the new deployment has reported to the new directory
    (before that the directory answers from its desired state alone)."""
    deadline = time.monotonic() + REPORT_WAIT_S
    card = await _card(tight)
    while not card.get("replicas") and time.monotonic() < deadline:
        await asyncio.sleep(1)
        card = await _card(tight)
    return card


async def test_an_unloaded_model_stays_unloaded_across_a_redeploy(
    serve_config: dict[str, Any], tmp_path: Path
) -> None:
    apps = {a["name"] for a in serve_config["applications"]}
    if TIGHT_APP not in apps:
        pytest.skip(f"needs the {TIGHT_APP!r} app of tests/serve_config.test.yaml; found {sorted(apps)}")
    expected = await require_running(serve_config)

    changed = copy.deepcopy(serve_config)
    args = app_config(changed, TIGHT_APP).setdefault("args", {})
    assert args.setdefault("limits", {}).get("max_messages", 256) != CHANGED_MAX_MESSAGES
    args["limits"]["max_messages"] = CHANGED_MAX_MESSAGES
    changed_path = tmp_path / "serve_config.changed.yaml"
    changed_path.write_text(yaml.safe_dump(changed, sort_keys=False))

    async with httpx.AsyncClient(
        base_url=TIGHT_BASE_URL, headers=auth_headers(), timeout=http_timeout(MODEL_LOAD_TIMEOUT + 30)
    ) as tight:
        await wait_ready(tight, [MODEL])
        before = replica_pids(serve_config)
        try:
            response = await tight.post(f"/v1/models/{MODEL}/unload", headers=admin_headers())
            assert response.status_code == 200 and response.json()["status"] == "unloaded", response.text

            # cluster.sh waits for every app's /health/ready: a model unloaded on purpose does not
            # hold the tight app back (it is ready once its new replica reports "unloaded").
            update_s = await deploy(changed_path)
            after = replica_pids(serve_config)
            replaced = sorted(k for k in before if before[k] != after.get(k))
            print(f"\nredeploy of {TIGHT_APP}, {MODEL} unloaded: {update_s:.1f}s; replaced {replaced}")
            # The premise: the redeploy restarted the directory (else this tests nothing) and the
            # model's replica; other apps keep their processes.
            assert f"{TIGHT_APP}:ModelDirectory" in replaced, replaced
            assert f"{TIGHT_APP}:{MODEL}" in replaced, replaced
            assert not [k for k in replaced if k.startswith(f"{APP}:")], replaced

            card = await _reported_card(tight)
            assert card["status"] == "unloaded", f"{MODEL} after the redeploy: {card}"
            assert card["replicas"] == {"unloaded": 1}, card
            assert not engine_cores(one_replica(MODEL, TIGHT_APP)), "the new replica started an engine"
            listed = {c["id"]: c for c in (await tight.get("/v1/models")).json()["data"]}
            assert listed[MODEL]["status"] == "unloaded", listed
            response = await tight.post("/v1/chat/completions", json=short_chat(MODEL))
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "model_not_loaded", response.text

            response = await tight.post(
                f"/v1/models/{MODEL}/load", headers=admin_headers(), params={"wait": MODEL_LOAD_TIMEOUT}
            )
            assert response.status_code == 200 and response.json()["status"] == "ready", response.text
        finally:
            try:
                await tight.post(
                    f"/v1/models/{MODEL}/load", headers=admin_headers(), params={"wait": MODEL_LOAD_TIMEOUT}
                )
            except httpx.HTTPError as exc:
                print(f"loading {MODEL} back: {exc!r}")
            restore_s = await deploy(SERVE_CONFIG)  # waits until every app, tight too, is ready
            print(f"restoring {SERVE_CONFIG.name} took {restore_s:.1f}s until ready")
        # "loaded" was kept across the restoring redeploy too.
        await wait_ready(tight, [MODEL])
        card = await _reported_card(tight)
        assert card["status"] == "ready" and card["replicas"] == {"ready": 1}, card
    restored = await running_apps()
    assert restored == expected, f"the original config is not running again: {restored}"
