"""AC-21.2: critique mode end to end on the D4 preset (qwen2.5-7b drafts and revises, deepseek-r1-7b
critiques). Structure and token accounting only: the CPU test cluster runs random-weight models.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .support import D4_CRITIC, D4_GENERATOR, D4_MODELS, PRESET

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires_model,
    pytest.mark.slow,
    pytest.mark.skipif(PRESET != "D4", reason=f"INFERENCE_DEFAULT_PRESET={PRESET}, D4 tests not selected"),
]

PROMPT = "Write a Python function that returns the square of a number."


async def _critique(client: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 200, f"{response.status_code}: {response.text[:800]}"
    return response.json()


def _final_answer_matches(data: dict[str, Any], max_tokens: int) -> None:
    orch = data["orchestration"]
    generator_steps = [s for s in orch["steps"] if s["role"] == "generator"]
    final = generator_steps[-1]
    assert data["choices"][0]["message"]["content"] == final["content"], (
        "choices[0].message.content must be the last generator step's answer"
    )
    assert final["usage"]["completion_tokens"] <= max_tokens, final["usage"]


async def test_critique_uses_both_models(
    client: httpx.AsyncClient, d4_deployed: None, chat_request_factory: Any, response_validator: Any
) -> None:
    payload = chat_request_factory.orchestrated(PROMPT, mode="critique", model="D4", rounds=1, seed=3)
    data = await _critique(client, payload)
    response_validator.validate_completion(data)
    orch = response_validator.validate_orchestration(data, mode="critique", expected_models=D4_MODELS)
    assert orch["stop_reason"] in ("approved", "max_rounds"), orch["stop_reason"]
    assert orch["rounds"] == 1
    assert orch["models_used"][:2] == [D4_GENERATOR, D4_CRITIC], orch["models_used"]
    if orch["stop_reason"] == "max_rounds":
        assert orch["models_used"] == [D4_GENERATOR, D4_CRITIC, D4_GENERATOR]
    else:
        assert orch["models_used"] == [D4_GENERATOR, D4_CRITIC]
    _final_answer_matches(data, max_tokens=16)


async def test_critique_shorthand_on_a_preset_model(
    client: httpx.AsyncClient, d4_deployed: None, chat_request_factory: Any, response_validator: Any
) -> None:
    """Top-level `orchestration_mode: critique` with `model` naming a preset model."""
    payload = chat_request_factory.simple(PROMPT, model=D4_GENERATOR, max_tokens=16, seed=4)
    payload["orchestration_mode"] = "critique"
    data = await _critique(client, payload)
    orch = response_validator.validate_orchestration(data, mode="critique", expected_models=D4_MODELS)
    assert orch["stop_reason"] in ("approved", "max_rounds"), orch["stop_reason"]
    _final_answer_matches(data, max_tokens=16)


async def test_critique_two_rounds(
    client: httpx.AsyncClient, d4_deployed: None, chat_request_factory: Any, response_validator: Any
) -> None:
    payload = chat_request_factory.orchestrated(PROMPT, mode="critique", model="D4", rounds=2, max_tokens=12)
    data = await _critique(client, payload)
    orch = response_validator.validate_orchestration(data, mode="critique", expected_models=D4_MODELS)
    if orch["stop_reason"] == "max_rounds":
        assert orch["rounds"] == 2 and len(orch["steps"]) == 5, orch["models_used"]
        assert orch["models_used"] == [D4_GENERATOR, D4_CRITIC] * 2 + [D4_GENERATOR]
    else:
        assert orch["stop_reason"] == "approved", orch["stop_reason"]
        assert 1 <= orch["rounds"] <= 2 and len(orch["steps"]) in (2, 4), orch["models_used"]
    rounds = [s["round"] for s in orch["steps"]]
    assert rounds == sorted(rounds), f"step rounds must not decrease: {rounds}"
    _final_answer_matches(data, max_tokens=12)


async def test_critique_roles_can_be_overridden(
    client: httpx.AsyncClient, d4_deployed: None, chat_request_factory: Any, response_validator: Any
) -> None:
    payload = chat_request_factory.orchestrated(
        PROMPT, mode="critique", model="D4", rounds=1, generator=D4_CRITIC, critic=D4_GENERATOR, seed=5
    )
    data = await _critique(client, payload)
    orch = response_validator.validate_orchestration(data, mode="critique", expected_models=D4_MODELS)
    assert orch["models_used"][:2] == [D4_CRITIC, D4_GENERATOR], orch["models_used"]
    assert [s["model"] for s in orch["steps"] if s["role"] == "generator"] == (
        [D4_CRITIC] * len([s for s in orch["steps"] if s["role"] == "generator"])
    )


async def test_critique_streaming(
    client: httpx.AsyncClient,
    d4_deployed: None,
    chat_request_factory: Any,
    response_validator: Any,
    sse_parser: Any,
) -> None:
    payload = chat_request_factory.orchestrated(PROMPT, mode="critique", model="D4", rounds=1, seed=6)
    payload["stream"] = True
    result = await sse_parser.request(client, "/v1/chat/completions", payload)
    assert result.status == 200, result.raw[:800]
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.raw.endswith("data: [DONE]\n\n"), result.raw[-200:]
    assert result.done
    chunks = result.chunks
    for chunk in chunks:
        response_validator.validate_streaming_chunk(chunk)

    events = [c["orchestration_event"] for c in chunks if c.get("orchestration_event") is not None]
    assert events, "critique streams must report progress through orchestration_event chunks"
    assert all(isinstance(e.get("type"), str) for e in events), events
    for chunk in chunks:
        if chunk.get("orchestration_event") is not None:
            assert chunk["choices"] == [], chunk
    critic_events = [e for e in events if e.get("role") == "critic"]
    assert critic_events and all(e.get("model") == D4_CRITIC for e in critic_events), events

    final = chunks[-1]
    assert final.get("orchestration") is not None, f"last data chunk lacks orchestration: {final}"
    orch = response_validator.validate_orchestration(
        final["orchestration"], mode="critique", expected_models=D4_MODELS
    )
    assert orch["stop_reason"] in ("approved", "max_rounds"), orch["stop_reason"]
    streamed = sse_parser.extract_content(chunks)
    last_generator = [s for s in orch["steps"] if s["role"] == "generator"][-1]
    assert streamed == last_generator["content"], "streamed tokens must be the final answer"
    finish = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert finish, "the streamed answer must end with a finish_reason"


@pytest.mark.parametrize(
    ("orchestration", "status"),
    [
        ({"mode": "critique", "rounds": 6}, 400),
        ({"mode": "critique", "rounds": 0}, 400),
        ({"mode": "debate"}, 400),
        ({"mode": "critique", "surprise": True}, 400),
        ({"mode": "critique", "critic": "no-such-model"}, None),
    ],
    ids=["rounds-too-many", "rounds-zero", "unknown-mode", "unknown-field", "unknown-critic"],
)
async def test_critique_invalid_requests(
    client: httpx.AsyncClient,
    d4_deployed: None,
    response_validator: Any,
    orchestration: dict[str, Any],
    status: int | None,
) -> None:
    payload = {
        "model": "D4",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 8,
        "orchestration": orchestration,
    }
    response = await client.post("/v1/chat/completions", json=payload)
    error = response_validator.validate_error(response, status)
    assert 400 <= response.status_code < 500, response.status_code
    if status == 400:
        assert error["type"] == "invalid_request_error", error
