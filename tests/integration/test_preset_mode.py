"""Addressing the running preset by name runs the preset's own pipeline with its roles, whatever the
preset is: D4 critiques (generator, critic, generator...), E4 runs an ensemble judged by its judge."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .support import fetch_models

pytestmark = [pytest.mark.integration, pytest.mark.requires_model, pytest.mark.slow]


def _listing() -> dict[str, Any]:
    listing = fetch_models()
    if not listing.get("preset") or len(listing.get("data", [])) < 2:
        pytest.skip("the deployment runs no multi-model preset")
    return listing


async def test_preset_name_runs_the_preset_mode(client: httpx.AsyncClient) -> None:
    listing = _listing()
    preset, mode = listing["preset"], listing["orchestration_mode"]
    roles = {card["id"]: card.get("role") for card in listing["data"]}
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": preset,
            "messages": [{"role": "user", "content": "Name a prime."}],
            "max_tokens": 8,
            "seed": 3,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    info = body["orchestration"]
    assert info["mode"] == mode
    steps = info["steps"]
    assert info["models_used"] == [step["model"] for step in steps]
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert body["usage"][field] == sum(step["usage"][field] for step in steps)
    if mode == "critique":
        generator = next(m for m, r in roles.items() if r == "generator")
        critic = next(m for m, r in roles.items() if r == "critic")
        assert steps[0]["model"] == generator and steps[0]["role"] == "generator"
        assert steps[1]["model"] == critic and steps[1]["role"] == "critic"
    elif mode == "ensemble":
        judge = next((m for m, r in roles.items() if r == "judge"), None)
        candidates = [s for s in steps if s["role"] == "candidate"]
        assert sorted(s["model"] for s in candidates) == sorted(roles), "every preset model is a candidate"
        assert steps[-1]["role"] == "judge"
        if judge:
            assert steps[-1]["model"] == judge
        assert info["stop_reason"] == "judged" and info["reason"]
        assert body["choices"][0]["message"]["content"] in {s["content"] for s in candidates} | {None}
    else:
        pytest.fail(f"unexpected preset mode {mode}")
