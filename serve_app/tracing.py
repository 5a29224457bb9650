"""OpenTelemetry tracing, shared by every process: settings, the tracer a process's components use,
and the W3C trace context that crosses each hop as plain data (`TraceHeaders`).

Off unless an OTLP endpoint is configured (`args.tracing` or the standard OTEL_EXPORTER_OTLP_*
variables). Off means no tracer at all: every component takes `Tracer | None` and, given None,
runs its untraced path (no middleware, no spans, no extra arguments on Ray calls).

One trace per request: the ingress's HTTP span (the client's `traceparent` as parent), admission,
each pipeline step, each model call; the model call's context goes to the model replica as
`trace_headers` and on to vLLM, which exports its own `llm_request` span under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Protocol = Literal["http/protobuf", "grpc"]
TraceHeaders = dict[str, str]  # W3C trace context: "traceparent" (and "tracestate")

DEFAULT_SERVICE_NAME = "inference"
ENGINE_SERVICE_SUFFIX = "-vllm"
HTTP_TRACES_PATH = "/v1/traces"
# W3C trace context only, whatever OTEL_PROPAGATORS says: it is what vLLM reads from trace_headers.
W3C = TraceContextTextMapPropagator()
TRACE_HEADER_NAMES = ("traceparent", "tracestate")


@dataclass(frozen=True)
class TracingSettings:
    """Where and how every process of the application exports spans (resolved by the builder and
    handed to each deployment as an argument, so every replica sees the same settings)."""

    traces_endpoint: str  # the full traces URL for http/protobuf; host:port (or URL) for grpc
    protocol: Protocol
    service_name: str
    engine_spans: bool  # whether vLLM exports its own per-request span

    @property
    def engine_service_name(self) -> str:
        return self.service_name + ENGINE_SERVICE_SUFFIX

    def engine_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """Environment for a model replica's process: vLLM builds its own exporter (in the replica
        and in its engine-core process) from these; the standard OTLP variables of the builder's
        environment (headers, timeouts, certificates) go along, so every node exports alike."""
        env = {k: v for k, v in environ.items() if k.startswith("OTEL_EXPORTER_OTLP_")}
        env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = self.protocol
        env["OTEL_SERVICE_NAME"] = self.engine_service_name
        return env


def resolve_settings(
    *,
    enabled: bool | None,
    endpoint: str | None,
    protocol: Protocol | None,
    service_name: str | None,
    engine_spans: bool,
    environ: Mapping[str, str],
) -> TracingSettings | None:
    """The effective settings, or None (off). An explicit `endpoint` is a base endpoint, like
    OTEL_EXPORTER_OTLP_ENDPOINT; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the full traces URL."""
    if enabled is False:
        return None
    chosen: Protocol = protocol or _env_protocol(environ)
    traces_url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") if endpoint is None else None
    base = endpoint if endpoint is not None else environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not traces_url and not base:
        if enabled:
            raise ValueError(
                "tracing.enabled is true but no OTLP endpoint is configured: set tracing.otlp_endpoint "
                "or OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            )
        return None
    if not traces_url:
        assert base is not None
        traces_url = base if chosen == "grpc" else base.rstrip("/") + HTTP_TRACES_PATH
    return TracingSettings(
        traces_endpoint=traces_url,
        protocol=chosen,
        service_name=service_name or environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
        engine_spans=engine_spans,
    )


def _env_protocol(environ: Mapping[str, str]) -> Protocol:
    value = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    if value in ("", "http/protobuf"):
        return "http/protobuf"
    if value == "grpc":
        return "grpc"
    raise ValueError(f"unsupported OTLP protocol {value!r}: use http/protobuf or grpc")


def make_tracer(settings: TracingSettings | None, component: str, instance_id: str) -> Tracer | None:
    """This process's tracer (None when tracing is off), exporting in batches from a background
    thread. Its own provider, not the global one: in a model replica the global provider is vLLM's."""
    if settings is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {
            "service.name": settings.service_name,
            "service.instance.id": instance_id,
            "inference.component": component,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(span_exporter(settings)))
    return provider.get_tracer("inference-cluster")


def span_exporter(settings: TracingSettings) -> Any:
    """The OTLP exporter; headers, timeout, compression and certificates come from the standard
    OTEL_EXPORTER_OTLP_* variables, which the exporters read themselves."""
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=settings.traces_endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=settings.traces_endpoint)


def trace_headers(span: Span | None) -> TraceHeaders | None:
    """The W3C headers that make `span` the parent on the other side of a hop (None: untraced)."""
    if span is None or not span.get_span_context().is_valid:
        return None
    carrier: TraceHeaders = {}
    W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier or None


def incoming_context(headers: Mapping[str, str]) -> Any:
    """The parent context a client's `traceparent` (and `tracestate`) names; empty if none."""
    return W3C.extract({name: headers[name] for name in TRACE_HEADER_NAMES if name in headers})


@contextlib.contextmanager
def ended(span: Span | None) -> Iterator[Span | None]:
    """End `span` on leaving, marking it failed if an error (or a cancellation) leaves with it.
    The span is not made current: spans that live across `yield`s of async generators must not
    attach to the context of whoever happens to resume them."""
    if span is None:
        yield None
        return
    try:
        yield span
    except BaseException as exc:
        fail(span, exc)
        raise
    finally:
        span.end()


def fail(span: Span, exc: BaseException) -> None:
    if isinstance(exc, Exception):
        span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def current(span: Span | None) -> contextlib.AbstractContextManager[Any]:
    """Make `span` current for a stretch of code with no `yield` in it (so that attach and detach
    happen in the same context), e.g. around one `await` that starts a child's work."""
    if span is None:
        return contextlib.nullcontext()
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)
