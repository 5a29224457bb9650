"""Critique mode: a request's end-to-end time against the sum of its model calls.

Runs non-streaming critique requests one at a time (after one discarded warm-up) and splits each
request's client-side time into its steps (`orchestration.steps[].latency_ms`, measured at the
ingress around each model call) and the overhead around them (`bench.stats.critique_overhead`).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench.loadgen import CHAT_PATH, PromptFactory, get_json, make_client
from bench.stats import critique_overhead, percentile


async def pick_critic(base_url: str, api_key: str | None, generator: str) -> str:
    """The running preset's critic if it has one (D4: deepseek-r1-7b), else the generator itself."""
    models = (await get_json(base_url, "/v1/models", api_key))["data"]
    critics = [m["id"] for m in models if m.get("role") == "critic" and m.get("status", "ready") == "ready"]
    return critics[0] if critics else generator


def critique_body(
    generator: str,
    critic: str,
    rounds: int,
    output_tokens: int,
    messages: list[dict[str, str]],
    extensions: bool = True,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": generator,
        "messages": messages,
        "max_tokens": output_tokens,
        "temperature": 0.0,
        "orchestration": {"mode": "critique", "rounds": rounds, "generator": generator, "critic": critic},
    }
    if extensions:
        body.update(min_tokens=output_tokens, ignore_eos=True)
    return body


async def one_request(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        response = await client.post(CHAT_PATH, json=body)
    except httpx.HTTPError as exc:
        return {"error": f"transport_{type(exc).__name__}"}
    e2e_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return {"error": f"http_{response.status_code}"}
    info = response.json().get("orchestration") or {}
    steps = info.get("steps") or []
    if not steps:
        return {"error": "no_steps"}
    row = critique_overhead(e2e_ms, [s["latency_ms"] for s in steps], info.get("total_latency_ms", e2e_ms))
    row["step_latency_ms"] = [round(s["latency_ms"], 3) for s in steps]
    row["stop_reason"] = info.get("stop_reason")
    return row


async def run_critique(
    base_url: str,
    api_key: str | None,
    model: str,
    prompts: PromptFactory,
    requests: int,
    rounds: int,
    output_tokens: int,
    timeout_s: float = 600.0,
    extensions: bool = True,
) -> dict[str, Any]:
    critic = await pick_critic(base_url, api_key, model)
    rows = []
    async with make_client(base_url, api_key, 1, timeout_s) as client:
        for index in range(requests + 1):  # index 0 is the warm-up
            body = critique_body(
                model, critic, rounds, output_tokens, prompts.messages(900_000 + index), extensions
            )
            row = await one_request(client, body)
            if index:
                rows.append(row)
    ok = [r for r in rows if "error" not in r]

    def median(key: str) -> float | None:
        value = percentile([r[key] for r in ok if r.get(key) is not None], 50)
        return None if value is None else round(value, 3)

    summary = {
        key: median(key)
        for key in (
            "e2e_ms",
            "steps_sum_ms",
            "total_latency_ms",
            "overhead_ms",
            "overhead_per_step_ms",
            "overhead_share",
            "pipeline_glue_ms",
            "outside_pipeline_ms",
        )
    }
    share, per_step = summary["overhead_share"], summary["overhead_per_step_ms"]
    return {
        "generator": model,
        "critic": critic,
        "rounds": rounds,
        "steps_per_request": ok[0]["steps"] if ok else None,
        "requests": len(rows),
        "errors": len(rows) - len(ok),
        "median": summary,
        "target_met": bool(ok)
        and ((share is not None and share < 0.05) or (per_step is not None and per_step < 10)),
        "per_request": rows,
    }
