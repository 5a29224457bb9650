"""AC-21.3: Server-sent-event streaming, over raw httpx and the official OpenAI SDK."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .support import D4_CRITIC, D4_GENERATOR

pytestmark = [pytest.mark.integration, pytest.mark.requires_model]


async def test_stream_chunks_end_with_done(
    client: httpx.AsyncClient, chat_request_factory: Any, response_validator: Any, sse_parser: Any
) -> None:
    payload = chat_request_factory.streaming("Count from one to five.", max_tokens=16, seed=7)
    result = await sse_parser.request(client, "/v1/chat/completions", payload)
    assert result.status == 200, result.raw[:500]
    assert result.headers["content-type"].startswith("text/event-stream"), result.headers
    assert result.headers.get("x-request-id"), "streams carry x-request-id too"
    assert result.raw.endswith("data: [DONE]\n\n"), result.raw[-200:]
    # Every event is a `data:` line followed by a blank line.
    for block in result.raw.strip("\n").split("\n\n"):
        assert block.startswith("data: "), block[:200]
    assert result.events.count("[DONE]") == 1 and result.done

    chunks = result.chunks
    assert chunks, "no data chunks before [DONE]"
    for chunk in chunks:
        response_validator.validate_streaming_chunk(chunk)
    assert len({c["id"] for c in chunks}) == 1, "all chunks of one completion share an id"
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant", chunks[0]

    content_chunks = [c for c in chunks if c["choices"]]
    finishes = [ch["finish_reason"] for c in content_chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert len(finishes) == 1, f"exactly one finish_reason expected: {finishes}"
    assert content_chunks[-1]["choices"][0].get("finish_reason") == finishes[0]

    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [], "with include_usage the last chunk has empty choices"
    usage = response_validator.validate_usage(usage_chunk["usage"], max_tokens=16)
    assert finishes[0] in ("stop", "length"), finishes
    if finishes[0] == "length":
        assert usage["completion_tokens"] == 16, usage
    for chunk in chunks[:-1]:
        assert chunk.get("usage") is None, "only the final chunk carries usage"


async def test_stream_without_usage_option(
    client: httpx.AsyncClient, chat_request_factory: Any, sse_parser: Any
) -> None:
    payload = chat_request_factory.streaming(max_tokens=8, include_usage=False, seed=8)
    result = await sse_parser.request(client, "/v1/chat/completions", payload)
    assert result.status == 200 and result.done, result.raw[-300:]
    assert all(c.get("usage") is None for c in result.chunks), "usage only when include_usage is set"
    assert all(c["choices"] for c in result.chunks), "without include_usage every chunk has a choice"


async def test_stream_matches_non_stream_greedy(
    client: httpx.AsyncClient, chat_request_factory: Any, sse_parser: Any
) -> None:
    """Greedy decoding gives the same text whether streamed or not."""
    payload = chat_request_factory.simple("List some fruits.", max_tokens=12, temperature=0.0)
    plain = await client.post("/v1/chat/completions", json=payload)
    assert plain.status_code == 200, plain.text
    streamed = await sse_parser.request(
        client, "/v1/chat/completions", {**payload, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert streamed.status == 200 and streamed.done
    assert sse_parser.extract_content(streamed.chunks) == (
        plain.json()["choices"][0]["message"]["content"] or ""
    )
    plain_usage, stream_usage = plain.json()["usage"], streamed.chunks[-1]["usage"]
    assert plain_usage == stream_usage, (plain_usage, stream_usage)


async def test_stream_n2(client: httpx.AsyncClient, chat_request_factory: Any, sse_parser: Any) -> None:
    payload = chat_request_factory.streaming(max_tokens=8, include_usage=False, n=2, seed=9)
    result = await sse_parser.request(client, "/v1/chat/completions", payload)
    assert result.status == 200 and result.done, result.raw[-300:]
    indices = {ch["index"] for c in result.chunks for ch in c["choices"]}
    assert indices == {0, 1}, indices
    for index in (0, 1):
        finishes = [
            ch["finish_reason"]
            for c in result.chunks
            for ch in c["choices"]
            if ch["index"] == index and ch.get("finish_reason")
        ]
        assert len(finishes) == 1, (index, finishes)


async def test_text_completion_stream(
    client: httpx.AsyncClient, model_id: str, response_validator: Any, sse_parser: Any
) -> None:
    payload = {"model": model_id, "prompt": "Once upon a time", "max_tokens": 8, "stream": True, "seed": 1}
    result = await sse_parser.request(client, "/v1/completions", payload)
    assert result.status == 200, result.raw[:500]
    assert result.raw.endswith("data: [DONE]\n\n")
    assert result.chunks
    for chunk in result.chunks:
        response_validator.validate_streaming_chunk(chunk, obj="text_completion")


async def test_invalid_stream_request_is_plain_json_error(
    client: httpx.AsyncClient, chat_request_factory: Any, response_validator: Any
) -> None:
    payload = chat_request_factory.streaming(temperature=5.0)
    response = await client.post("/v1/chat/completions", json=payload)
    error = response_validator.validate_error(response, 400)
    assert error["param"] == "temperature", error
    assert response.headers["content-type"].startswith("application/json")


# ---------------------------------------------------------------- the official OpenAI SDK


async def test_sdk_stream_with_usage(openai_client: Any, model_id: str) -> None:
    stream = await openai_client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Say something short."}],
        max_tokens=12,
        temperature=0.7,
        seed=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks, "SDK stream yielded nothing"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(text, str)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length"), finishes
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    usage = chunks[-1].usage
    assert 0 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.slow
async def test_sdk_stream_critique_via_extra_body(openai_client: Any, d4_deployed: None) -> None:
    """The orchestration extension passes through `extra_body`; extra chunk fields stay readable."""
    stream = await openai_client.chat.completions.create(
        model="D4",
        messages=[{"role": "user", "content": "Write a haiku about rivers."}],
        max_tokens=12,
        temperature=0.7,
        seed=12,
        stream=True,
        extra_body={"orchestration": {"mode": "critique", "rounds": 1}},
    )
    chunks = [chunk async for chunk in stream]
    extras = [c.model_extra or {} for c in chunks]
    events = [e["orchestration_event"] for e in extras if e.get("orchestration_event")]
    assert events, "no orchestration_event chunks seen through the SDK"
    orch = extras[-1].get("orchestration")
    assert isinstance(orch, dict) and orch["mode"] == "critique", extras[-1]
    assert {D4_GENERATOR, D4_CRITIC} <= set(orch["models_used"]), orch["models_used"]
