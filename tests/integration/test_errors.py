"""Invalid requests get OpenAI error objects with the right status, and leave the service healthy."""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import pytest

from .support import API_KEY, admin_headers

pytestmark = [pytest.mark.integration, pytest.mark.requires_model]

MESSAGES = [{"role": "user", "content": "hi"}]

# (id, change to a valid request, expected status, field the error must name or None)
CHAT_CASES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("unknown-model", {"model": "no-such-model"}, 404, None),
    ("missing-model", {"model": None}, 400, "model"),
    ("temperature-too-high", {"temperature": 2.5}, 400, "temperature"),
    ("temperature-negative", {"temperature": -0.1}, 400, "temperature"),
    ("missing-messages", {"messages": None}, 400, "messages"),
    ("empty-messages", {"messages": []}, 400, "messages"),
    ("messages-not-a-list", {"messages": "hi"}, 400, "messages"),
    ("bad-role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
    ("n-zero", {"n": 0}, 400, "n"),
    ("top-p-zero", {"top_p": 0}, 400, "top_p"),
    ("max-tokens-zero", {"max_tokens": 0}, 400, "max_tokens"),
    ("max-tokens-negative", {"max_tokens": -5}, 400, "max_tokens"),
    ("unknown-parameter", {"frobnicate": True}, 400, "frobnicate"),
    ("stream-options-without-stream", {"stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("top-logprobs-without-logprobs", {"top_logprobs": 2}, 400, "top_logprobs"),
    ("too-many-stops", {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("presence-penalty-range", {"presence_penalty": 3}, 400, "presence_penalty"),
]


def _names_field(error: dict[str, Any], field: str) -> bool:
    """The error's `param` names the field (top level of a dotted path), or its message mentions it."""
    param = error.get("param") or ""
    top = re.split(r"[.\[]", param)[0] if param else ""
    return top == field or (len(field) > 2 and field in error["message"])


@pytest.mark.parametrize(
    ("change", "status", "field"), [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES]
)
async def test_invalid_chat_request(
    client: httpx.AsyncClient,
    model_id: str,
    response_validator: Any,
    change: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    payload: dict[str, Any] = {"model": model_id, "messages": MESSAGES, "max_tokens": 4}
    for key, value in change.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    response = await client.post("/v1/chat/completions", json=payload)
    error = response_validator.validate_error(response, status)
    assert response.headers.get("x-request-id"), "error responses carry x-request-id too"
    if status == 400:
        assert error["type"] == "invalid_request_error", error
    if status == 404:
        assert error["code"] == "model_not_found", error
    if field is not None:
        assert _names_field(error, field), f"error does not name {field!r}: {error}"


async def test_malformed_json(client: httpx.AsyncClient, response_validator: Any) -> None:
    response = await client.post(
        "/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
    )
    error = response_validator.validate_error(response, 400)
    assert error["type"] == "invalid_request_error", error


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"prompt": ""}, "prompt"), ({"prompt": "hi", "max_tokens": 0}, "max_tokens"), ({}, "prompt")],
    ids=["empty-prompt", "max-tokens-zero", "missing-prompt"],
)
async def test_invalid_text_completion(
    client: httpx.AsyncClient, model_id: str, response_validator: Any, payload: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/completions", json={"model": model_id, **payload})
    error = response_validator.validate_error(response, 400)
    assert _names_field(error, field), error


async def test_oversized_body_is_413(
    client: httpx.AsyncClient, model_id: str, response_validator: Any
) -> None:
    """Bodies above the service's limit (1 MB by default; INFERENCE_MAX_BODY_BYTES if raised) get 413."""
    size = int(os.environ.get("INFERENCE_MAX_BODY_BYTES", "1000000")) + 1024
    payload = {"model": model_id, "messages": [{"role": "user", "content": "x" * size}], "max_tokens": 4}
    response = await client.post("/v1/chat/completions", json=payload)
    error = response_validator.validate_error(response, 413)
    assert error["type"] == "invalid_request_error", error


async def test_unknown_model_card_is_404(client: httpx.AsyncClient, response_validator: Any) -> None:
    for response in (
        await client.get("/v1/models/no-such-model"),
        await client.post("/v1/models/no-such-model/load", headers=admin_headers()),
    ):
        error = response_validator.validate_error(response, 404)
        assert error["code"] == "model_not_found", error


async def test_wrong_api_key_is_401(
    client: httpx.AsyncClient, model_id: str, response_validator: Any
) -> None:
    if not API_KEY:
        pytest.skip("INFERENCE_API_KEY not set: cannot tell a secured deployment from an open one")
    payload = {"model": model_id, "messages": MESSAGES, "max_tokens": 4}
    wrong = await client.post(
        "/v1/chat/completions", json=payload, headers={"Authorization": "Bearer wrong-key"}
    )
    response_validator.validate_error(wrong, 401)
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as anonymous:
        missing = await anonymous.post("/v1/chat/completions", json=payload)
        response_validator.validate_error(missing, 401)
        health = await anonymous.get("/health")
        assert health.status_code == 200, "/health stays open without a key"


async def test_service_still_answers_after_errors(
    client: httpx.AsyncClient, chat_request_factory: Any, response_validator: Any
) -> None:
    """Runs after the error cases above (file order): the service is unharmed."""
    response = await client.post(
        "/v1/chat/completions", json=chat_request_factory.simple(max_tokens=8, seed=1)
    )
    assert response.status_code == 200, response.text
    response_validator.validate_completion(response.json(), max_tokens=8)
