"""Tracing (serve_app/tracing.py and its users) with the real OpenTelemetry SDK recording in memory:
the settings, the request's span tree in the ingress, and the context handed across each hop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from deployments.app import actor_options, engine_config
from deployments.engine.vllm_engine import EngineConfig
from deployments.ingress.dispatch import RequestDispatcher
from deployments.ingress.http_guard import KeyPolicy
from deployments.ingress.model_client import HandleModelClient
from deployments.ingress.routes import build_api
from deployments.ingress.tenancy.quota import Quota
from deployments.model.serving.chat import ChatServing
from serve_app.config import AppArgs, Catalog, Preset, load_catalog
from serve_app.config.app_args import RequestLimits, TracingOptions
from serve_app.config.fit import ModelFit
from serve_app.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Usage,
)
from serve_app.tracing import resolve_settings

from .fakes import FakeDirectory, FakeEngine, FakeMetrics, FakeModelClient, Reply
from .support import CATALOG_PATH, parse_sse, sse_json
from .tenancy.fakes import FakeClock, FakeQuotaStore

GEN, CRITIC = "qwen2.5-7b", "deepseek-r1-7b"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def recorded() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


# ---------------------------------------------------------------- settings


def settings(environ: dict[str, str], **options: Any) -> Any:
    return TracingOptions(**options).settings(environ)


def test_tracing_is_off_without_an_endpoint_and_when_disabled() -> None:
    assert settings({}) is None
    assert settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, enabled=False) is None
    with pytest.raises(ValueError, match="no OTLP endpoint"):
        settings({}, enabled=True)


def test_the_standard_variables_give_the_endpoint_protocol_and_service() -> None:
    base = settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
    assert (base.traces_endpoint, base.protocol, base.service_name) == (
        "http://c:4318/v1/traces",
        "http/protobuf",
        "inference",
    )
    full = settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9999/x",
            "OTEL_SERVICE_NAME": "llm",
        }
    )
    assert (full.traces_endpoint, full.service_name, full.engine_service_name) == (
        "http://t:9999/x",
        "llm",
        "llm-vllm",
    )
    grpc = settings({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert (grpc.traces_endpoint, grpc.protocol) == ("http://c:4317", "grpc")
    with pytest.raises(ValueError, match="unsupported OTLP protocol"):
        settings({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})


def test_an_explicit_endpoint_wins_and_the_engines_get_the_environment() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/v1/traces",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=b",
    }
    explicit = settings(environ, otlp_endpoint="http://mine:4318", service_name="svc")
    assert explicit.traces_endpoint == "http://mine:4318/v1/traces"
    assert explicit.engine_env(environ) == {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/v1/traces",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=b",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "svc-vllm",
    }


def test_the_builder_hands_vllm_its_endpoint_only_when_tracing() -> None:
    args = AppArgs(profile="cpu", tracing=TracingOptions(otlp_endpoint="http://c:4318"))
    traced = args.tracing.settings({})
    model = load_catalog(CATALOG_PATH).get(GEN)
    config: EngineConfig = engine_config(model, args, traced)
    assert config.otlp_traces_endpoint == "http://c:4318/v1/traces"
    assert engine_config(model, args, None).otlp_traces_endpoint is None
    env = actor_options(model, args, traced, {})["runtime_env"]["env_vars"]
    assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert actor_options(model, args, None, {})["runtime_env"]["env_vars"] == {"VLLM_CPU_KVCACHE_SPACE": "1"}


# ---------------------------------------------------------------- the ingress's span tree


def d4_service(catalog: Catalog, preset: Preset, fits: list[ModelFit], tracer: Tracer) -> RequestDispatcher:
    clients = {
        GEN: FakeModelClient(GEN, [Reply("draft answer"), Reply("revised answer here")]),
        CRITIC: FakeModelClient(CRITIC, [Reply('{"verdict":"needs_revision","problems":"x"}')]),
    }
    directory = FakeDirectory(dict.fromkeys(preset.models, "ready"))
    return RequestDispatcher(
        AppArgs(), catalog, preset, fits, clients, directory, FakeMetrics(), tracer=tracer
    )


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name.startswith(prefix)), key=lambda s: s.start_time or 0)


async def test_a_streamed_critique_is_one_trace_under_the_clients_traceparent(
    catalog: Catalog, d4_preset: Preset, d4_fits: list[ModelFit], recorded: Any
) -> None:
    tracer, exporter = recorded
    clock = FakeClock()
    quota = Quota(FakeQuotaStore(clock), clock)
    app = build_api(d4_service(catalog, d4_preset, d4_fits, tracer), KeyPolicy(), quota=quota, tracer=tracer)
    body = {
        "model": "D4",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "orchestration": {"mode": "critique", "rounds": 1},
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post(
            "/v1/chat/completions", json=body, headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
        )
    assert response.status_code == 200
    assert parse_sse(response.text)[-1] == "[DONE]"
    spans = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}
    [root] = by_name(spans, "POST")
    assert root.name == "POST /v1/chat/completions" and root.kind == SpanKind.SERVER
    assert root.parent is not None and format(root.parent.span_id, "016x") == CLIENT_SPAN
    assert response.headers["traceparent"] == f"00-{TRACE_ID}-{root.context.span_id:016x}-01"
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 200
    [admission] = by_name(spans, "admission")
    steps = by_name(spans, "critique ")
    assert [s.name for s in steps] == ["critique generator", "critique critic", "critique generator"]
    for child in (admission, *steps):
        assert child.parent is not None and child.parent.span_id == root.context.span_id
    events = [sse_json(e) for e in parse_sse(response.text) if e != "[DONE]"]
    [orchestration] = [e["orchestration"] for e in events if "orchestration" in e]
    for span, step in zip(steps, orchestration["steps"], strict=True):
        assert span.attributes is not None
        assert span.attributes["gen_ai.usage.output_tokens"] == step["usage"]["completion_tokens"]


async def test_without_a_tracer_no_middleware_and_no_traceparent(
    catalog: Catalog, d4_preset: Preset, d4_fits: list[ModelFit]
) -> None:
    clients = {m: FakeModelClient(m) for m in d4_preset.models}
    service = RequestDispatcher(
        AppArgs(),
        catalog,
        d4_preset,
        d4_fits,
        clients,
        FakeDirectory(dict.fromkeys(d4_preset.models, "ready")),
    )
    app = build_api(service, KeyPolicy())
    assert type(app).__name__ == "HttpGuard"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": GEN, "messages": [{"role": "user", "content": "hi"}]},
            headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
        )
    assert response.status_code == 200 and "traceparent" not in response.headers


async def test_a_failed_step_ends_its_span_as_an_error(
    catalog: Catalog, d4_preset: Preset, d4_fits: list[ModelFit], recorded: Any
) -> None:
    tracer, exporter = recorded
    service = d4_service(catalog, d4_preset, d4_fits, tracer)
    service.clients[CRITIC].error = RuntimeError("boom")  # type: ignore[attr-defined]
    app = build_api(service, KeyPolicy(), tracer=tracer)
    body = {"model": "D4", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert "error" in str(parse_sse(response.text)[-2])
    spans = exporter.get_finished_spans()
    [critic] = by_name(spans, "critique critic")
    assert critic.status.status_code == StatusCode.ERROR
    [root] = by_name(spans, "POST")
    assert root.status.status_code == StatusCode.ERROR


# ---------------------------------------------------------------- across the Ray hop, into the engine


class FakeRecordingHandle:
    """A deployment handle whose calls record their arguments and answer at once."""

    def __init__(self, response: ChatCompletionResponse):
        self.response = response
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def options(self, **_: Any) -> FakeRecordingHandle:
        return self

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            def remote(self, *args: Any, **kwargs: Any) -> Any:
                handle.calls.append((method, args, kwargs))
                future = asyncio.get_running_loop().create_future()
                future.set_result(handle.response)
                return future

        return Method()


def chat_response() -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id="r",
        model=GEN,
        choices=[ChatChoice(index=0, message=AssistantMessage(content="x"), finish_reason="stop")],
        usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
    )


async def test_a_model_call_is_a_client_span_whose_context_crosses_the_hop(recorded: Any) -> None:
    tracer, exporter = recorded
    request = ChatCompletionRequest.model_validate(
        {"model": GEN, "messages": [{"role": "user", "content": "a"}]}
    )
    handle = FakeRecordingHandle(chat_response())
    await HandleModelClient(GEN, handle, tracer).chat(request, "req-1")
    [call] = exporter.get_finished_spans()
    assert (call.name, call.kind) == (f"chat {GEN}", SpanKind.CLIENT)
    assert call.attributes is not None and call.attributes["gen_ai.usage.output_tokens"] == 2
    [(method, args, kwargs)] = handle.calls
    assert method == "chat_completion" and args == (request, "req-1")
    assert kwargs["trace_headers"]["traceparent"].startswith(
        f"00-{call.context.trace_id:032x}-{call.context.span_id:016x}-"
    )
    # Untraced: the call is exactly the one made before tracing existed.
    untraced = FakeRecordingHandle(chat_response())
    await HandleModelClient(GEN, untraced).chat(request, "req-2")
    assert untraced.calls == [("chat_completion", (request, "req-2"), {})]


async def test_the_model_replica_hands_the_trace_headers_to_the_engine() -> None:
    engine = FakeEngine()
    serving = ChatServing(engine, GEN, RequestLimits(), vocab_size=1000)
    request = ChatCompletionRequest.model_validate(
        {"model": GEN, "messages": [{"role": "user", "content": "a"}]}
    )
    headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
    await serving.create(request, "r1", headers)
    chunks: AsyncIterator[Any] = await serving.stream(
        request.model_copy(update={"stream": True}), "r2", headers
    )
    [_ async for _ in chunks]
    await serving.create(request, "r3")
    assert [call.trace_headers for call in engine.calls] == [headers, headers, None]


def test_resolve_settings_is_what_the_options_use() -> None:
    assert resolve_settings(
        enabled=None, endpoint="http://x", protocol="grpc", service_name=None, engine_spans=False, environ={}
    ) == TracingOptions(otlp_endpoint="http://x", protocol="grpc", engine_spans=False).settings({})
