"""AC-21.1: the D4 preset (deepseek-r1-7b critic + qwen2.5-7b generator) is deployed, ready, answers,
and fits its GPU memory budget.

    INFERENCE_DEFAULT_PRESET=D4 pytest tests/integration/test_d4_preset.py -v
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .support import D4_CRITIC, D4_GENERATOR, D4_MODELS, PRESET, REASONING_MODELS, admin_headers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(PRESET != "D4", reason=f"INFERENCE_DEFAULT_PRESET={PRESET}, D4 tests not selected"),
]


@pytest.mark.requires_model
async def test_d4_models_listed_and_ready(client: httpx.AsyncClient, d4_deployed: None) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["preset"] == "D4", body.get("preset")
    assert body["orchestration_mode"] == "critique", body.get("orchestration_mode")
    cards = {card["id"]: card for card in body["data"]}
    for model in D4_MODELS:
        card = cards[model]
        assert card["object"] == "model"
        assert card["status"] == "ready", card
        assert isinstance(card["created"], int) and isinstance(card["owned_by"], str), card
        assert isinstance(card.get("max_model_len"), int) and card["max_model_len"] > 0, card
    assert cards[D4_GENERATOR]["role"] == "generator", cards[D4_GENERATOR]
    assert cards[D4_CRITIC]["role"] == "critic", cards[D4_CRITIC]


@pytest.mark.requires_model
@pytest.mark.parametrize("model", D4_MODELS)
async def test_d4_model_card_and_load_idempotent(
    client: httpx.AsyncClient, d4_deployed: None, model: str
) -> None:
    card = await client.get(f"/v1/models/{model}")
    assert card.status_code == 200, card.text
    assert card.json()["id"] == model and card.json()["status"] == "ready"
    # Loading an already-loaded model is a no-op that returns the ready card.
    loaded = await client.post(f"/v1/models/{model}/load", headers=admin_headers())
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["id"] == model and loaded.json()["status"] == "ready", loaded.json()


@pytest.mark.requires_model
async def test_d4_health_ready(client: httpx.AsyncClient, d4_deployed: None) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    live = await client.get("/health")
    assert live.status_code == 200 and live.json()["status"] == "ok"


@pytest.mark.requires_model
@pytest.mark.parametrize("model", D4_MODELS)
async def test_d4_model_answers(
    client: httpx.AsyncClient,
    d4_deployed: None,
    model: str,
    chat_request_factory: Any,
    response_validator: Any,
    chat_with_text: Any,
) -> None:
    request = chat_request_factory.simple("Hello, respond briefly", model=model, max_tokens=16, seed=11)
    data = await chat_with_text(client, request, allow_reasoning=model in REASONING_MODELS)
    response_validator.validate_completion(data, max_tokens=16)
    assert data["model"] == model
    assert data.get("orchestration") is None, "a request without `orchestration` must be a single call"


async def test_d4_reports_its_gpu_fit_consistently(client: httpx.AsyncClient) -> None:
    """The preset's published fit numbers (the builder refused the preset if they did not fit):
    present for each model, and self-consistent. Replica memory itself is measured on the machine
    that runs it, tests/system/test_unload_memory.py."""
    response = await client.get("/v1/presets/D4")
    assert response.status_code == 200, response.text
    preset = response.json()
    assert preset["name"] == "D4"
    assert sorted(preset["models"]) == sorted(D4_MODELS)
    assert preset["roles"] == {D4_GENERATOR: "generator", D4_CRITIC: "critic"}
    assert preset["orchestration_mode"] == "critique"
    assert isinstance(preset["gpu"], dict) and preset["gpu"], preset
    fits = {fit["model_id"]: fit for fit in preset["fit"]}
    assert sorted(fits) == sorted(D4_MODELS), fits
    for model, fit in fits.items():
        for key in ("budget_gb", "weights_gb", "kv_min_gb", "spare_gb"):
            assert isinstance(fit[key], int | float), (model, key, fit)
        assert fit["budget_gb"] > 0 and fit["weights_gb"] > 0 and fit["kv_min_gb"] >= 0, fit
        assert fit["spare_gb"] >= 0, f"{model} does not fit: {fit}"
        # Spare memory can never exceed what is left after weights and the minimum KV cache.
        assert fit["spare_gb"] <= fit["budget_gb"] - fit["weights_gb"] - fit["kv_min_gb"] + 1e-6, fit


async def test_unknown_preset_is_refused(client: httpx.AsyncClient, response_validator: Any) -> None:
    response = await client.get("/v1/presets/no-such-preset")
    response_validator.validate_error(response)
    assert response.status_code in (400, 404), response.status_code
