"""A stopping ingress whose drain budget runs out ends what it still has open with an OpenAI error.

The tight app (tests/serve_config.test.yaml) gives its ingress a 45 s graceful budget: the least that
covers HAProxy's 30 s deregistration window, the 5 s cut margin and 10 s of service. Its args are
changed and redeployed while two critique pipelines (generator and critic both its llama-3.2-3b,
5 rounds of 1,400-token drafts: minutes on these machines, waiting for the new model replica
included) run on it, one streamed and one not. Serve replaces the app's two ingress replicas one
after the other, so a pipeline's ingress starts stopping up to about 30 s after the deploy.
Serve replaces every deployment of the app; the old ingress keeps both pipelines until its budget
is nearly spent, then ends them:
- the stream with an error event (code `service_restarting`) and `data: [DONE]`, not a TCP cut;
- the non-streamed request with 503, `Retry-After` and the same code.
The original config is redeployed at the end.
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
    REJECTED,
    STREAM_ERROR,
    TIGHT_BASE_URL,
    auth_headers,
    http_timeout,
    request_outcome,
    require_tight_model,
)

from .cluster import SERVE_CONFIG, app_config, deploy, wait_ready

pytestmark = [pytest.mark.slow]

TIGHT_APP = "tight"
# The ingress's cut (service_restarting) is what this test is after. A pipeline step can also meet
# its model replica's end first (engine_dead or model_restarting: a request Serve routed to the
# stopping replica late, seen in CI-speed runs), which is a clean end too; a cut connection, an
# incomplete stream or any other error is not.
CLEAN_ENDS = {"service_restarting", "model_restarting", "engine_dead"}
# Long steps, within the tight app's 4096-token context: a revision's prompt holds the draft, which
# the random-weight model's text re-tokenizes to about 1.6 times its length.
STEP_TOKENS = 1400


def _pipeline(model: str, stream: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Draft, critique and revise at length."}],
        "max_tokens": STEP_TOKENS,
        "ignore_eos": True,
        "temperature": 0.7,
        "seed": 5,
        "orchestration": {"mode": "critique", "rounds": 5, "generator": model, "critic": model},
    }
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    return payload


async def test_stopping_ingress_ends_open_pipelines_with_an_error(
    serve_config: dict[str, Any], tmp_path: Path
) -> None:
    model = require_tight_model()
    tight = app_config(serve_config, TIGHT_APP)
    budget = float(tight["args"]["ingress"]["graceful_shutdown_timeout_s"])
    changed = copy.deepcopy(serve_config)
    args = app_config(changed, TIGHT_APP)["args"]
    args["critique_step_timeout_s"] = float(args.get("critique_step_timeout_s", 120)) + 1
    changed_path = tmp_path / "serve_config.tight-changed.yaml"
    changed_path.write_text(yaml.safe_dump(changed, sort_keys=False))

    async with httpx.AsyncClient(
        base_url=TIGHT_BASE_URL, headers=auth_headers(), timeout=http_timeout(MODEL_LOAD_TIMEOUT + 60)
    ) as http:
        try:
            first = asyncio.Event()
            streamed = asyncio.ensure_future(
                request_outcome(
                    http, "/v1/chat/completions", _pipeline(model, True), total_timeout=600, first_chunk=first
                )
            )
            unary = asyncio.ensure_future(
                request_outcome(http, "/v1/chat/completions", _pipeline(model, False), total_timeout=600)
            )
            await asyncio.wait_for(first.wait(), 120)
            deploy_at = time.monotonic()
            deploying = asyncio.ensure_future(deploy(changed_path))
            stream_outcome, unary_outcome = await asyncio.gather(streamed, unary)
            ended_s = time.monotonic() - deploy_at
            update_s = await deploying
            print(
                f"\ningress budget {budget} s; pipelines ended {ended_s:.1f}s after the deploy began "
                f"(ready after {update_s:.1f}s)\n  streamed: {stream_outcome}\n"
                f"  non-streamed: {unary_outcome}"
            )
            assert stream_outcome.kind == STREAM_ERROR, (
                f"the stream must end with an error event and [DONE]: {stream_outcome}"
            )
            assert stream_outcome.error, stream_outcome
            assert stream_outcome.error["code"] in CLEAN_ENDS, stream_outcome
            assert unary_outcome.kind == REJECTED and unary_outcome.status == 503, unary_outcome
            assert unary_outcome.error and unary_outcome.error["code"] in CLEAN_ENDS, unary_outcome
            # Before Ray's force-kill: a kill would have cut the connection instead of the error event.
            # The new ingress serves.
            await wait_ready(http, [model])
        finally:
            await deploy(SERVE_CONFIG)
            await wait_ready(http, [model])
