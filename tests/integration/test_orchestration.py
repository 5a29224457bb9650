"""Multi-model orchestration through the `orchestration` request extension: single, critique defaults
and ensemble (candidates + judge). Structure and token accounting only.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .support import D4_CRITIC, D4_GENERATOR, D4_MODELS

pytestmark = [pytest.mark.integration, pytest.mark.requires_model]

PROMPT = "Give one tip for writing readable code."


async def _post(client: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 200, f"{response.status_code}: {response.text[:800]}"
    return response.json()


async def test_without_extension_is_a_single_call(
    client: httpx.AsyncClient, chat_request_factory: Any, response_validator: Any
) -> None:
    data = await _post(client, chat_request_factory.simple(PROMPT, max_tokens=8, seed=1))
    response_validator.validate_completion(data, max_tokens=8)
    assert data.get("orchestration") is None, data.get("orchestration")


async def test_explicit_single_mode(
    client: httpx.AsyncClient, model_id: str, chat_request_factory: Any, response_validator: Any
) -> None:
    payload = chat_request_factory.orchestrated(PROMPT, mode="single", model=model_id, max_tokens=8, seed=2)
    data = await _post(client, payload)
    response_validator.validate_completion(data, max_tokens=8)
    assert data["model"] == model_id
    if data.get("orchestration") is not None:
        orch = response_validator.validate_orchestration(data, mode="single")
        assert orch["models_used"] == [model_id] and len(orch["steps"]) == 1, orch


@pytest.mark.slow
@pytest.mark.parametrize("model", D4_MODELS)
async def test_critique_defaults_to_preset_roles(
    client: httpx.AsyncClient,
    d4_deployed: None,
    chat_request_factory: Any,
    response_validator: Any,
    model: str,
) -> None:
    """Whichever preset model the request names, the preset's generator drafts and its critic critiques."""
    payload = chat_request_factory.orchestrated(PROMPT, mode="critique", model=model, rounds=1, seed=3)
    data = await _post(client, payload)
    orch = response_validator.validate_orchestration(data, mode="critique", expected_models=D4_MODELS)
    assert orch["models_used"][:2] == [D4_GENERATOR, D4_CRITIC], orch["models_used"]
    critic_steps = [s for s in orch["steps"] if s["role"] == "critic"]
    assert all(s["model"] == D4_CRITIC for s in critic_steps), critic_steps


@pytest.mark.slow
async def test_ensemble_with_judge(
    client: httpx.AsyncClient, d4_deployed: None, chat_request_factory: Any, response_validator: Any
) -> None:
    candidates = [D4_GENERATOR, D4_CRITIC]
    payload = chat_request_factory.orchestrated(
        PROMPT, mode="ensemble", model="D4", models=candidates, judge=D4_CRITIC, max_tokens=12, seed=4
    )
    data = await _post(client, payload)
    response_validator.validate_completion(data)
    orch = response_validator.validate_orchestration(data, mode="ensemble", expected_models=candidates)
    assert orch["models_used"] == [*candidates, D4_CRITIC], orch["models_used"]
    assert [s["model"] for s in orch["steps"] if s["role"] == "candidate"] == candidates
    assert orch["stop_reason"] == "judged" and isinstance(orch["reason"], str)
    assert isinstance(data["choices"][0]["message"]["content"], str)


@pytest.mark.parametrize(
    ("orchestration", "status"),
    [
        ({"mode": "ensemble", "models": [D4_GENERATOR]}, 400),
        ({"mode": "ensemble", "models": [D4_GENERATOR] * 5}, 400),
        ({"mode": "ensemble", "models": [D4_GENERATOR, "no-such-model"]}, None),
        ({"mode": "ensemble", "models": [D4_GENERATOR, D4_CRITIC], "judge": "no-such-model"}, None),
        ({"mode": "critique", "generator": "no-such-model"}, None),
        ("critique", 400),
    ],
    ids=[
        "one-candidate",
        "five-candidates",
        "unknown-candidate",
        "unknown-judge",
        "unknown-generator",
        "not-an-object",
    ],
)
async def test_invalid_orchestration(
    client: httpx.AsyncClient,
    d4_deployed: None,
    response_validator: Any,
    orchestration: Any,
    status: int | None,
) -> None:
    payload = {"model": "D4", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4}
    payload["orchestration"] = orchestration
    response = await client.post("/v1/chat/completions", json=payload)
    error = response_validator.validate_error(response, status)
    assert 400 <= response.status_code < 500, (response.status_code, error)
    if response.status_code == 400:
        assert error["type"] == "invalid_request_error", error
