"""Tracing end to end: an OTLP receiver inside this test process gets the spans of a streamed
critique request from the ingress and from the vLLM engines, and the trace is the client's.

The deployment must export to the receiver (tests/serve_config.test.yaml: the D4 app's
`tracing.otlp_endpoint` is http://127.0.0.1:14318, INFERENCE_OTLP_RECEIVER_PORT). A deployment that
does not trace, or traces elsewhere, skips these tests, unless INFERENCE_REQUIRE_TRACING=1 (as in
scripts/test_all.sh), which makes that a failure.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .otlp_receiver import OtlpReceiver, ReceivedSpan
from .support import D4_CRITIC, D4_GENERATOR, PRESET, STREAM_TIMEOUT, _env_flag

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires_model,
    pytest.mark.skipif(PRESET != "D4", reason=f"INFERENCE_DEFAULT_PRESET={PRESET}, D4 tests not selected"),
]

RECEIVER_PORT = int(os.environ.get("INFERENCE_OTLP_RECEIVER_PORT", "14318"))
REQUIRE_TRACING = _env_flag("INFERENCE_REQUIRE_TRACING")
# Spans leave each process in batches every 5 s (the SDK's default schedule); give them time.
SPANS_DEADLINE_S = 45.0
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
STEP_SUM_TOLERANCE = 0.05
CLOCK_SLACK_NS = 20_000_000  # spans from different processes of one machine: 20 ms of slack


def _unavailable(message: str) -> None:
    if REQUIRE_TRACING:
        pytest.fail(message + " and INFERENCE_REQUIRE_TRACING=1", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    try:
        server = OtlpReceiver("127.0.0.1", RECEIVER_PORT)
    except OSError as exc:
        _unavailable(f"cannot listen for OTLP on 127.0.0.1:{RECEIVER_PORT} ({exc})")
    with server:
        yield server


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def _streamed_critique(client: httpx.AsyncClient, traceparent: str) -> tuple[httpx.Headers, dict]:
    payload = {
        "model": "D4",
        "messages": [{"role": "user", "content": "Write a Python function that reverses a list."}],
        "max_tokens": 64,
        "seed": 11,
        "stream": True,
        "orchestration": {"mode": "critique", "rounds": 1},
    }
    headers = {"traceparent": traceparent, "tracestate": "test=1"}
    last: dict[str, Any] = {}
    async with client.stream(
        "POST", "/v1/chat/completions", json=payload, headers=headers, timeout=STREAM_TIMEOUT
    ) as response:
        assert response.status_code == 200, (await response.aread())[:500]
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                assert "error" not in chunk, chunk
                if "orchestration" in chunk:
                    last = chunk
        return response.headers, last


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.parent_id == parent.span_id), key=lambda s: s.start_ns)


def _within(child: ReceivedSpan, parent: ReceivedSpan) -> bool:
    return (
        child.start_ns >= parent.start_ns - CLOCK_SLACK_NS and child.end_ns <= parent.end_ns + CLOCK_SLACK_NS
    )


async def _complete_trace(receiver: OtlpReceiver, trace_id: str, steps: int) -> list[ReceivedSpan]:
    """The trace once the root, every step, every model call and one engine span per call are in."""
    deadline = time.monotonic() + SPANS_DEADLINE_S
    spans: list[ReceivedSpan] = []
    while time.monotonic() < deadline:
        spans = receiver.trace(trace_id)
        calls = [s for s in spans if s.kind == "client"]
        engine = [s for s in spans if s.name == "llm_request"]
        roots = [s for s in spans if s.kind == "server" and s.name.startswith("POST")]
        if roots and len(calls) >= steps and len(engine) >= len(calls):
            return spans
        await asyncio.sleep(0.5)
    if not spans:
        _unavailable(
            f"no spans of trace {trace_id} reached 127.0.0.1:{RECEIVER_PORT} within {SPANS_DEADLINE_S:g} s "
            "(the deployment traces, but not to this receiver)"
        )
    names = sorted(f"{s.name} ({s.service})" for s in spans)
    raise AssertionError(f"trace {trace_id} incomplete after {SPANS_DEADLINE_S:g} s: {names}")


async def test_a_streamed_critique_is_one_trace_from_http_to_the_engines(
    client: httpx.AsyncClient, d4_deployed: None, receiver: OtlpReceiver
) -> None:
    traceparent, trace_id, client_span = _traceparent()
    headers, last = await _streamed_critique(client, traceparent)
    returned = TRACEPARENT.fullmatch(headers.get("traceparent", ""))
    if returned is None:
        _unavailable("the deployment does not trace (no traceparent on its response)")
    assert returned is not None
    # The round trip: the response names the client's trace, and a span of ours within it.
    assert returned.group(1) == trace_id, (headers["traceparent"], traceparent)
    assert returned.group(2) != client_span
    steps = last["orchestration"]["steps"]
    spans = await _complete_trace(receiver, trace_id, len(steps))
    by_id = {s.span_id: s for s in spans}

    [root] = [s for s in spans if s.parent_id == client_span]
    assert root.span_id == returned.group(2)
    assert (root.name, root.kind, root.service) == ("POST /v1/chat/completions", "server", "inference")
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["gen_ai.request.model"] == "D4"

    children = _children(spans, root)
    admission = [s for s in children if s.name == "admission"]
    step_spans = [s for s in children if s.name.startswith("critique ")]
    assert len(admission) == 1 and admission[0].end_ns <= step_spans[0].start_ns
    # One span per step of the response, in its order, each inside the root and after the last.
    traced = [(s.attributes["inference.step.role"], s.attributes["gen_ai.request.model"]) for s in step_spans]
    assert traced == [(step["role"], step["model"]) for step in steps]
    assert [s.attributes["inference.step.role"] for s in step_spans][:2] == ["generator", "critic"]
    assert {s.attributes["gen_ai.request.model"] for s in step_spans} == {D4_GENERATOR, D4_CRITIC}
    for before, after in itertools.pairwise(step_spans):
        assert before.end_ns <= after.start_ns
    assert all(_within(s, root) for s in step_spans)

    # Each step: one model call (a client span) and under it the engine's own span, whose token
    # count is the step's.
    for step, span in zip(steps, step_spans, strict=True):
        assert span.attributes["gen_ai.usage.output_tokens"] == step["usage"]["completion_tokens"]
        [call] = _children(spans, span)
        assert (call.kind, call.name) == ("client", f"chat {step['model']}")
        assert _within(call, span)
        [engine] = _children(spans, call)
        assert (engine.name, engine.service) == ("llm_request", "inference-vllm")
        assert engine.attributes["gen_ai.usage.completion_tokens"] == step["usage"]["completion_tokens"]
        assert engine.attributes["gen_ai.usage.prompt_tokens"] == step["usage"]["prompt_tokens"]
        assert _within(engine, call)
    # The last step streamed its answer to us; the draft and the critique did not stream.
    assert [_children(spans, s)[0].attributes["inference.stream"] for s in step_spans][-1] is True

    # Where the time went: the steps account for the request's time, all but 5% of it.
    step_total = sum(s.duration_s for s in step_spans)
    assert abs(root.duration_s - step_total) <= STEP_SUM_TOLERANCE * root.duration_s, (
        f"steps {step_total:.3f} s of root {root.duration_s:.3f} s"
    )
    # No span of the request is outside the tree.
    for span in spans:
        if span is not root:
            assert span.parent_id in by_id, f"{span.name} ({span.service}) has no parent in the trace"


async def test_a_request_without_traceparent_gets_a_new_trace(
    client: httpx.AsyncClient, model_id: str, receiver: OtlpReceiver
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert response.status_code == 200, response.text[:500]
    returned = TRACEPARENT.fullmatch(response.headers.get("traceparent", ""))
    if returned is None:
        _unavailable("the deployment does not trace (no traceparent on its response)")
    assert returned is not None
    assert returned.group(1) != "0" * 32
    spans = await _complete_trace(receiver, returned.group(1), 1)
    [root] = [s for s in spans if s.parent_id == ""]
    assert root.span_id == returned.group(2)
    [call] = [s for s in spans if s.kind == "client"]
    assert call.parent_id == root.span_id and call.attributes["gen_ai.usage.output_tokens"] >= 1
