"""The service behind an OpenAI-compatible gateway (LiteLLM proxy at LLM_GATEWAY_URL, bearer
LLM_GATEWAY_API_KEY). The gateway exposes the service's model ids (e.g. qwen2.5-7b, deepseek-r1-7b).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from .support import (
    BASE_URL,
    CATALOG_MODELS,
    D4_CRITIC,
    D4_GENERATOR,
    D4_MODELS,
    GATEWAY_API_KEY,
    GATEWAY_URL,
    PRESET,
    REASONING_MODELS,
    auth_headers,
    fetch_models,
    openai_sdk,
    probe,
)
from .tool_support import (
    NAMED,
    UNKNOWN_TOOL_CHOICE,
    check_calls,
    check_json_answer,
    json_answer_request,
    tool_call_request,
    tool_result_history,
    valid_arguments,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_gateway]


@pytest.fixture
async def gateway_model_ids(gateway_client: httpx.AsyncClient) -> list[str]:
    response = await gateway_client.get("/v1/models")
    assert response.status_code == 200, f"{response.status_code}: {response.text[:300]}"
    return [m["id"] for m in response.json()["data"]]


@pytest.fixture
def gateway_model(gateway_model_ids: list[str]) -> str:
    """A catalog model the gateway routes, non-reasoning first."""
    preferred = [m for m in CATALOG_MODELS if m not in REASONING_MODELS] + sorted(REASONING_MODELS)
    for model in preferred:
        if model in gateway_model_ids:
            return model
    pytest.fail(f"gateway lists none of the service's model ids: {gateway_model_ids}")


async def test_gateway_lists_service_models(gateway_client: httpx.AsyncClient) -> None:
    response = await gateway_client.get("/v1/models")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.get("object") == "list" and isinstance(body.get("data"), list), body
    ids = [m["id"] for m in body["data"]]
    assert all(m.get("object") == "model" for m in body["data"]), body["data"]
    assert set(ids) & set(CATALOG_MODELS), f"gateway lists none of the catalog ids: {ids}"
    if probe(BASE_URL, [("/health", {})]) is None:  # service reachable from here as well
        served = {c["id"] for c in fetch_models()["data"]}
        assert served & set(ids), f"gateway {ids} and service {sorted(served)} share no model id"


@pytest.mark.requires_model
@pytest.mark.parametrize("model", D4_MODELS)
async def test_gateway_chat_completion(
    gateway_client: httpx.AsyncClient,
    gateway_model_ids: list[str],
    chat_request_factory: Any,
    response_validator: Any,
    model: str,
) -> None:
    if model not in gateway_model_ids:
        pytest.skip(f"Model {model} not available in this deployment (gateway lists {gateway_model_ids})")
    payload = chat_request_factory.simple("Hello, respond briefly", model, max_tokens=12, seed=31)
    response = await gateway_client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
    data = response_validator.validate_completion(response.json(), max_tokens=12)
    assert data["usage"]["total_tokens"] > 0


@pytest.mark.requires_model
async def test_gateway_streaming(
    gateway_client: httpx.AsyncClient,
    gateway_model: str,
    chat_request_factory: Any,
    response_validator: Any,
    sse_parser: Any,
) -> None:
    payload = chat_request_factory.streaming("Count from one to five.", gateway_model, max_tokens=12, seed=32)
    result = await sse_parser.request(gateway_client, "/v1/chat/completions", payload)
    assert result.status == 200, result.raw[:500]
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.raw.rstrip("\r\n").endswith("data: [DONE]"), result.raw[-200:]
    assert result.done and result.chunks
    for chunk in result.chunks:
        response_validator.validate_streaming_chunk(chunk)
    assert isinstance(sse_parser.extract_content(result.chunks), str)
    finishes = [ch["finish_reason"] for c in result.chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert finishes and finishes[-1] in ("stop", "length"), finishes
    usages = [c["usage"] for c in result.chunks if c.get("usage")]
    assert usages, "stream_options.include_usage must yield a usage chunk through the gateway"
    response_validator.validate_usage(usages[-1], max_tokens=12)


async def test_gateway_unknown_model_is_4xx(gateway_client: httpx.AsyncClient) -> None:
    payload = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    response = await gateway_client.post("/v1/chat/completions", json=payload)
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    error = response.json().get("error")
    assert isinstance(error, dict) and error.get("message"), response.text[:300]


@pytest.mark.requires_model
async def test_gateway_passes_validation_errors(
    gateway_client: httpx.AsyncClient, gateway_model: str
) -> None:
    payload = {
        "model": gateway_model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 5.0,
    }
    response = await gateway_client.post("/v1/chat/completions", json=payload)
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    assert isinstance(response.json().get("error"), dict), response.text[:300]


async def test_gateway_rejects_wrong_key(gateway_client: httpx.AsyncClient) -> None:
    """A wrong key is refused. LiteLLM answers 401 normally, but 400 "No connected db" when it runs
    without a database (then only the master key is checked), so both count as a refusal."""
    for headers in (auth_headers("sk-definitely-wrong"), {"Authorization": ""}):
        response = await gateway_client.get("/v1/models", headers=headers)
        assert response.status_code in (400, 401, 403), f"{response.status_code}: {response.text[:300]}"
        assert isinstance(response.json().get("error"), dict), response.text[:300]


@pytest.mark.requires_model
@pytest.mark.slow
async def test_gateway_critique_on_preset(
    gateway_client: httpx.AsyncClient,
    gateway_model_ids: list[str],
    chat_request_factory: Any,
    response_validator: Any,
) -> None:
    """The preset name routes like a model; the orchestration extension rides along in the body."""
    if "D4" not in gateway_model_ids:
        pytest.skip(f"Model D4 not available in this deployment (gateway lists {gateway_model_ids})")
    payload = chat_request_factory.orchestrated(
        "Write a function that adds two numbers.",
        model="D4",
        max_tokens=12,
        seed=33,
        # Swapped roles prove the extension reached the service (plain "D4" would use preset roles).
        generator=D4_CRITIC,
        critic=D4_GENERATOR,
    )
    response = await gateway_client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
    data = response_validator.validate_completion(response.json())
    orch = response_validator.validate_orchestration(data, mode="critique", expected_models=D4_MODELS)
    assert orch["models_used"][:2] == [D4_CRITIC, D4_GENERATOR], orch["models_used"]


# ---------------------------------------------------------------- tool calling through the gateway


@pytest.fixture
async def gateway_sdk(skip_if_gateway_unavailable: None) -> AsyncIterator[Any]:
    """The official OpenAI SDK pointed at the gateway."""
    async with openai_sdk(GATEWAY_URL, GATEWAY_API_KEY) as sdk:
        yield sdk


@pytest.mark.requires_model
@pytest.mark.parametrize("model", D4_MODELS)
async def test_gateway_constrained_tool_calls(
    gateway_sdk: Any, gateway_model_ids: list[str], model: str
) -> None:
    if model not in gateway_model_ids:
        pytest.skip(f"Model {model} not available in this deployment (gateway lists {gateway_model_ids})")
    for tool_choice in (NAMED, "required"):
        response = await gateway_sdk.chat.completions.create(
            **tool_call_request(model, tool_choice=tool_choice, parallel_tool_calls=False, seed=12)
        )
        check_calls(response.choices[0])


@pytest.mark.requires_model
async def test_gateway_streamed_tool_call_and_tool_results(
    gateway_sdk: Any, gateway_model_ids: list[str]
) -> None:
    model = D4_GENERATOR
    if model not in gateway_model_ids:
        pytest.skip(f"{model} not behind this gateway")
    stream = await gateway_sdk.chat.completions.create(**tool_call_request(model, seed=13, stream=True))
    arguments, name, call_id, finish = "", "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call_id = delta.id or call_id
                name += (delta.function and delta.function.name) or ""
                arguments += (delta.function and delta.function.arguments) or ""
    assert finish == "tool_calls" and name == "get_weather" and call_id
    valid_arguments(name, arguments)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    history = tool_result_history(
        {"role": "assistant", "content": None, "tool_calls": [call]}, call_id, {"forecast": "sunny"}
    )
    response = await gateway_sdk.chat.completions.create(
        **tool_call_request(
            model, messages=history, tool_choice="required", parallel_tool_calls=False, seed=13
        )
    )
    check_calls(response.choices[0])


@pytest.mark.requires_model
async def test_gateway_json_schema_output(gateway_sdk: Any, gateway_model: str) -> None:
    response = await gateway_sdk.chat.completions.create(**json_answer_request(gateway_model, seed=14))
    check_json_answer(response.choices[0])


@pytest.mark.requires_model
async def test_gateway_critique_with_response_format(gateway_sdk: Any, gateway_model_ids: list[str]) -> None:
    if PRESET not in gateway_model_ids:
        pytest.skip(f"preset {PRESET} not behind this gateway")
    response = await gateway_sdk.chat.completions.create(
        **json_answer_request(
            PRESET,
            question="Is 7 prime? Answer in JSON.",
            seed=15,
            extra_body={"orchestration": {"mode": "critique", "rounds": 1}},
        )
    )
    check_json_answer(response.choices[0])


@pytest.mark.requires_model
async def test_gateway_passes_tool_400s_through(gateway_sdk: Any, gateway_model: str) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        await gateway_sdk.chat.completions.create(
            **tool_call_request(gateway_model, tool_choice=UNKNOWN_TOOL_CHOICE, max_tokens=4)
        )
    assert "tool_choice" in str(caught.value)
