"""Shared fixtures for the portable HTTP integration suite (see support.py for configuration)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from .support import (
    API_KEY,
    BASE_URL,
    D4_MODELS,
    GATEWAY_API_KEY,
    GATEWAY_URL,
    STREAM_TIMEOUT,
    ChatRequestFactory,
    answer_text,
    auth_headers,
    default_model,
    ensure_gateway,
    ensure_service,
    fetch_models,
    http_timeout,
    openai_sdk,
    require_model_card,
)
from .validators import ResponseValidator, SSEParser

# ---------------------------------------------------------------- skip fixtures


@pytest.fixture
def skip_if_service_unavailable() -> None:
    ensure_service()


@pytest.fixture
def skip_if_gateway_unavailable() -> None:
    ensure_gateway()


@pytest.fixture
def skip_if_no_models(skip_if_service_unavailable: None) -> None:
    if not any(card.get("status") == "ready" for card in fetch_models()["data"]):
        pytest.skip("No models loaded in inference service")


@pytest.fixture
def deployed_models(skip_if_service_unavailable: None) -> list[dict[str, Any]]:
    """Model cards from GET /v1/models."""
    return list(fetch_models()["data"])


@pytest.fixture
def deployed_model_ids(deployed_models: list[dict[str, Any]]) -> list[str]:
    return [card["id"] for card in deployed_models]


@pytest.fixture
def require_model(skip_if_service_unavailable: None) -> Callable[..., dict[str, Any]]:
    """`require_model("qwen2.5-7b")` skips unless deployed; loads it if not ready; returns its card."""
    return require_model_card


@pytest.fixture
def d4_deployed(skip_if_service_unavailable: None) -> None:
    """Skip unless both D4 models are part of this deployment; make sure both are ready."""
    for model in D4_MODELS:
        require_model_card(model)


@pytest.fixture
def model_id(skip_if_service_unavailable: None) -> str:
    """One ready model for tests that do not care which."""
    return default_model()


# ---------------------------------------------------------------- clients


@pytest.fixture
async def client(skip_if_service_unavailable: None) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout()) as http:
        yield http


@pytest.fixture(scope="session")
async def async_client() -> AsyncIterator[httpx.AsyncClient]:
    ensure_service()
    async with httpx.AsyncClient(base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout()) as http:
        yield http


@pytest.fixture
async def gateway_client(skip_if_gateway_unavailable: None) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=GATEWAY_URL, headers=auth_headers(GATEWAY_API_KEY), timeout=http_timeout(STREAM_TIMEOUT)
    ) as http:
        yield http


@pytest.fixture
async def openai_client(skip_if_service_unavailable: None) -> AsyncIterator[Any]:
    """The official OpenAI SDK pointed at the service."""
    async with openai_sdk(BASE_URL, API_KEY or "none") as sdk:
        yield sdk


@pytest.fixture
def chat_request_factory() -> type[ChatRequestFactory]:
    return ChatRequestFactory


@pytest.fixture
def response_validator() -> type[ResponseValidator]:
    return ResponseValidator


@pytest.fixture
def sse_parser() -> type[SSEParser]:
    return SSEParser


@pytest.fixture
def chat_with_text() -> Callable[..., Awaitable[dict[str, Any]]]:
    """POST a chat request and return a 200 response with non-empty text.

    Random-weight test models occasionally sample an immediate end-of-sequence; up to `attempts`
    retries with a different seed are allowed (and printed). Reasoning models (deepseek-r1) may put
    everything into reasoning_content, which counts as text when `allow_reasoning` is set.
    """

    async def _chat(
        http: httpx.AsyncClient, payload: dict[str, Any], attempts: int = 3, allow_reasoning: bool = False
    ) -> dict[str, Any]:
        payload = dict(payload)
        seed = payload.get("seed", 1)
        for attempt in range(attempts):
            payload["seed"] = seed + attempt
            response = await http.post("/v1/chat/completions", json=payload)
            assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
            data = response.json()
            ResponseValidator.validate_completion(data, max_tokens=payload.get("max_tokens"))
            if answer_text(data, allow_reasoning):
                return data
            print(f"note: empty answer from {payload['model']} with seed {payload['seed']}; retrying")
        pytest.fail(f"{payload['model']} returned empty content for {attempts} seeds", pytrace=False)

    return _chat
