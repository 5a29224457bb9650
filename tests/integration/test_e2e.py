"""End-to-end chat and text completions over raw httpx and the official OpenAI SDK.

Random-weight CPU models produce gibberish, so these tests check structure, sampling semantics and
token accounting rather than prose. Invalid-request handling lives in test_errors.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .support import BASE_URL, D4_CRITIC, D4_GENERATOR, ensure_service

pytestmark = [pytest.mark.integration]


async def test_health_is_open_and_tagged() -> None:
    """/health needs no key; every response carries x-request-id, echoing the client's."""
    ensure_service()
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=30) as anonymous:
        response = await anonymous.get("/health", headers={"x-request-id": "it-health-1"})
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.headers.get("x-request-id") == "it-health-1"


async def test_request_id_generated(async_client: httpx.AsyncClient) -> None:
    first = await async_client.get("/v1/models")
    second = await async_client.get("/v1/models")
    assert first.status_code == second.status_code == 200
    ids = [first.headers.get("x-request-id"), second.headers.get("x-request-id")]
    assert all(ids) and ids[0] != ids[1], ids


@pytest.mark.requires_model
async def test_simple_completion(
    client: httpx.AsyncClient, skip_if_no_models: None, chat_request_factory: Any, response_validator: Any
) -> None:
    request = chat_request_factory.simple(message="What is 2 + 2?", max_tokens=16, seed=1)
    response = await client.post("/v1/chat/completions", json=request, headers={"x-request-id": "it-e2e-1"})
    assert response.status_code == 200, response.text
    assert response.headers.get("x-request-id") == "it-e2e-1"
    data = response_validator.validate_completion(response.json(), max_tokens=16)
    assert data["model"] == request["model"]
    assert data.get("orchestration") is None, "no orchestration field means a plain single-model call"


@pytest.mark.requires_model
async def test_system_and_multi_turn(
    client: httpx.AsyncClient, chat_request_factory: Any, response_validator: Any
) -> None:
    request = chat_request_factory.with_system("Name a colour.", max_tokens=8, seed=2)
    request["messages"] += [
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": [{"type": "text", "text": "Another one?"}]},
    ]
    response = await client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200, response.text
    response_validator.validate_completion(response.json(), max_tokens=8)


@pytest.mark.requires_model
async def test_code_task_with_text(
    client: httpx.AsyncClient, chat_request_factory: Any, chat_with_text: Any
) -> None:
    data = await chat_with_text(client, chat_request_factory.code_task(max_tokens=24, seed=3))
    assert data["choices"][0]["message"]["content"]
    assert data["usage"]["completion_tokens"] >= 1


@pytest.mark.requires_model
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_output_limit_respected(
    client: httpx.AsyncClient, model_id: str, response_validator: Any, field: str
) -> None:
    request = {
        "model": model_id,
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "temperature": 0.8,
        "seed": 4,
        field: 5,
    }
    response = await client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200, response.text
    data = response_validator.validate_completion(response.json(), max_tokens=5)
    finish = data["choices"][0]["finish_reason"]
    assert finish in ("stop", "length"), finish
    if finish == "length":
        assert data["usage"]["completion_tokens"] == 5, data["usage"]


@pytest.mark.requires_model
async def test_seed_is_reproducible(client: httpx.AsyncClient, chat_request_factory: Any) -> None:
    request = chat_request_factory.simple(
        "Invent a word.", max_tokens=16, temperature=0.9, top_p=0.95, seed=42
    )
    first = await client.post("/v1/chat/completions", json=request)
    second = await client.post("/v1/chat/completions", json=request)
    assert first.status_code == second.status_code == 200
    a, b = first.json(), second.json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["usage"] == b["usage"]
    assert a["id"] != b["id"]


@pytest.mark.requires_model
async def test_n_two_choices(
    client: httpx.AsyncClient, chat_request_factory: Any, response_validator: Any
) -> None:
    request = chat_request_factory.simple("Pick a number.", max_tokens=8, n=2, seed=5)
    response = await client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200, response.text
    response_validator.validate_completion(response.json(), n=2, max_tokens=8)


@pytest.mark.requires_model
async def test_logprobs(
    client: httpx.AsyncClient, chat_request_factory: Any, response_validator: Any
) -> None:
    request = chat_request_factory.simple("Hello", max_tokens=6, logprobs=True, top_logprobs=2, seed=6)
    response = await client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200, response.text
    data = response_validator.validate_completion(response.json(), max_tokens=6)
    content = data["choices"][0]["logprobs"]["content"]
    assert len(content) == data["usage"]["completion_tokens"], (len(content), data["usage"])
    for entry in content:
        assert isinstance(entry["token"], str) and entry["logprob"] <= 1e-6, entry
        assert len(entry["top_logprobs"]) == 2, entry
        assert all(t["logprob"] <= 1e-6 for t in entry["top_logprobs"]), entry


@pytest.mark.requires_model
async def test_stop_sequence_removed(client: httpx.AsyncClient, chat_request_factory: Any) -> None:
    """Random-weight models emit mostly newlines, so a newline stop sequence really does fire."""
    request = chat_request_factory.simple("Write two lines.", max_tokens=16, stop=["\n"], seed=7)
    response = await client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert "\n" not in (choice["message"]["content"] or ""), choice
    if choice["finish_reason"] == "length":
        assert response.json()["usage"]["completion_tokens"] == 16


# ---------------------------------------------------------------- /v1/completions


@pytest.mark.requires_model
async def test_text_completion_prompts(
    client: httpx.AsyncClient, model_id: str, response_validator: Any
) -> None:
    single = await client.post("/v1/completions", json={"model": model_id, "prompt": "The sky is", "seed": 1})
    assert single.status_code == 200, single.text
    response_validator.validate_completion(single.json(), max_tokens=16, obj="text_completion")
    batch = await client.post(
        "/v1/completions", json={"model": model_id, "prompt": ["One", "Two"], "max_tokens": 4, "seed": 1}
    )
    assert batch.status_code == 200, batch.text
    response_validator.validate_completion(batch.json(), n=2, max_tokens=4, obj="text_completion")


@pytest.mark.requires_model
@pytest.mark.parametrize("prompt", ["a", [5], "Hi"], ids=["a", "token-5", "Hi"])
async def test_very_short_prompts(
    client: httpx.AsyncClient, model_id: str, response_validator: Any, prompt: Any
) -> None:
    response = await client.post(
        "/v1/completions", json={"model": model_id, "prompt": prompt, "max_tokens": 8}
    )
    assert response.status_code == 200, response.text
    data = response_validator.validate_completion(response.json(), max_tokens=8, obj="text_completion")
    if prompt == [5]:
        assert data["usage"]["prompt_tokens"] == 1, data["usage"]
    health = await client.get("/health")
    assert health.status_code == 200


# ---------------------------------------------------------------- the official OpenAI SDK


@pytest.mark.requires_model
async def test_sdk_models_and_chat(openai_client: Any, model_id: str) -> None:
    models = await openai_client.models.list()
    ids = [m.id for m in models.data]
    assert model_id in ids, ids
    card = next(m for m in models.data if m.id == model_id)
    assert (card.model_extra or {}).get("status") == "ready", card
    reply = await openai_client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Say hi."}],
        max_completion_tokens=8,
        temperature=0.7,
        seed=8,
    )
    assert reply.object == "chat.completion" and reply.model == model_id
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 <= reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


@pytest.mark.requires_model
async def test_sdk_single_mode_via_extra_body(openai_client: Any, model_id: str) -> None:
    reply = await openai_client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8,
        seed=9,
        extra_body={"orchestration": {"mode": "single"}},
    )
    assert reply.choices and reply.usage.completion_tokens <= 8
    # Single mode is a plain model call: no pipeline ran, so the response has no orchestration.
    assert (reply.model_extra or {}).get("orchestration") is None, reply.model_extra


@pytest.mark.requires_model
@pytest.mark.slow
async def test_sdk_critique_via_extra_body(openai_client: Any, d4_deployed: None) -> None:
    reply = await openai_client.chat.completions.create(
        model="D4",
        messages=[{"role": "user", "content": "Write a function that doubles a number."}],
        max_tokens=12,
        temperature=0.7,
        seed=10,
        extra_body={"orchestration": {"mode": "critique", "rounds": 1}},
    )
    orch = (reply.model_extra or {}).get("orchestration")
    assert isinstance(orch, dict) and orch["mode"] == "critique", reply
    assert {D4_GENERATOR, D4_CRITIC} <= set(orch["models_used"]), orch["models_used"]
    steps_usage = sum(s["usage"]["total_tokens"] for s in orch["steps"])
    assert reply.usage.total_tokens == steps_usage


@pytest.mark.requires_model
async def test_sdk_errors(openai_client: Any, model_id: str) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as not_found:
        await openai_client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert not_found.value.status_code == 404 and not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await openai_client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=3.0
        )
    assert bad.value.param == "temperature", bad.value.body
