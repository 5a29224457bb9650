"""An unload whose drain budget runs out ends every request still open with an OpenAI error.

Runs against the tight app (tests/serve_config.test.yaml: llama-3.2-3b with a 4 s
`unload_drain_timeout_s`, reported on its model card), with requests deliberately longer than the
budget: 8 choices of ~1,900 tokens each, ten seconds or more on these machines. When the budget runs
out the model replica aborts them in vLLM and answers
- the stream with an error event (code `model_unloading`) followed by `data: [DONE]`;
- the non-streamed request with 503, `Retry-After` and the same code;
never a stream that just stops, and never vLLM's finish reason "abort".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from .support import (
    MODEL_LOAD_TIMEOUT,
    OK,
    REJECTED,
    REQUIRE_SERVICE,
    STREAM_ERROR,
    STREAM_TIMEOUT,
    TIGHT_BASE_URL,
    admin_headers,
    auth_headers,
    ensure_model_ready,
    http_timeout,
    request_outcome,
    require_tight_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_model, pytest.mark.slow]

# Longest budget this test will wait out; a deployment with a longer one is not made for it.
MAX_TEST_BUDGET_S = 30.0


def _long(model: str, stream: bool, max_model_len: int) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Write at length."}],
        "max_tokens": max_model_len - 64,
        "n": 8,
        "ignore_eos": True,  # the random-weight model would otherwise stop at a random point
        "temperature": 0.7,
        "seed": 11,
    }
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    return payload


async def test_unload_cut_ends_open_requests_with_an_error() -> None:
    model = require_tight_model()
    async with httpx.AsyncClient(
        base_url=TIGHT_BASE_URL, headers=auth_headers(), timeout=http_timeout(MODEL_LOAD_TIMEOUT + 30)
    ) as http:
        card = (await http.get(f"/v1/models/{model}")).json()
        budget = card.get("unload_drain_timeout_s")
        assert isinstance(budget, int | float) and budget > 0, f"card without a drain budget: {card}"
        if budget > MAX_TEST_BUDGET_S:
            message = f"{model}'s unload drain is {budget} s; this test needs one under {MAX_TEST_BUDGET_S} s"
            if REQUIRE_SERVICE:
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        max_model_len = int(card.get("max_model_len") or 2048)
        first = asyncio.Event()
        try:
            started = time.monotonic()
            stream = asyncio.ensure_future(
                request_outcome(
                    http, "/v1/chat/completions", _long(model, True, max_model_len), first_chunk=first
                )
            )
            unary = asyncio.ensure_future(
                request_outcome(http, "/v1/chat/completions", _long(model, False, max_model_len))
            )
            await asyncio.wait_for(first.wait(), STREAM_TIMEOUT)
            await asyncio.sleep(0.5)  # the non-streamed request is admitted too (2 may run at once)
            unload_at = time.monotonic()
            unloaded = await http.post(
                f"/v1/models/{model}/unload", headers=admin_headers(), params={"wait": 120}
            )
            outcomes = await asyncio.gather(stream, unary)
            print(
                f"\nunload at {unload_at - started:.1f}s (budget {budget} s) answered "
                f"{unloaded.status_code} after {time.monotonic() - unload_at:.1f}s; "
                f"stream: {outcomes[0]}; non-streamed: {outcomes[1]}"
            )
            assert unloaded.status_code == 200 and unloaded.json()["status"] == "unloaded", unloaded.text
            for outcome in outcomes:
                assert outcome.kind != OK, (
                    f"finished within the {budget} s drain, so nothing was cut: {outcome}. The request "
                    "must outlast the budget (this machine is faster than the test assumes)."
                )
            streamed, non_streamed = outcomes
            assert streamed.kind == STREAM_ERROR, f"the stream must end with an error event: {streamed}"
            assert streamed.error and streamed.error["code"] == "model_unloading", streamed
            assert streamed.error["type"] == "service_unavailable", streamed
            # REJECTED: an OpenAI error object with a valid Retry-After.
            assert non_streamed.kind == REJECTED and non_streamed.status == 503, non_streamed
            assert non_streamed.error and non_streamed.error["code"] == "model_unloading", non_streamed
            assert non_streamed.retry_after and int(non_streamed.retry_after) > 0, non_streamed
            ended = time.monotonic() - unload_at
            assert ended >= budget - 0.5, f"cut after {ended:.1f}s, before the {budget} s budget"
        finally:
            await asyncio.to_thread(ensure_model_ready, model, TIGHT_BASE_URL)
