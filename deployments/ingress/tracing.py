"""The request's root span: pure-ASGI middleware outside `HttpGuard`, installed only when tracing is on.

A client's W3C `traceparent` makes the span its child (so the whole trace keeps the client's trace
id); every response carries a `traceparent` naming this span, so a client that sent none can still
find its trace. The span is current while the application runs, so admission, pipeline steps and
model calls started for the request become its children.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.ingress.http_guard import route_label, route_path
from serve_app.tracing import incoming_context, trace_headers


class TracingMiddleware:
    def __init__(self, app: ASGIApp, tracer: Tracer):
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        route = route_label(path)
        span = self.tracer.start_span(
            f"{scope['method']} {route}",
            context=incoming_context(Headers(scope=scope)),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": scope["method"],
                "http.route": route,
                "url.path": scope["path"],
            },
        )
        status = 0

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in (trace_headers(span) or {}).items():
                    headers[name] = value
            await send(message)

        # Ended here, after the last body message: for a stream, when its [DONE] has been sent.
        with trace.use_span(span, end_on_exit=True):
            try:
                await self.app(scope, receive, send_traced)
            finally:
                state = scope.get("state", {})
                span.set_attribute("http.response.status_code", status)
                span.set_attribute("inference.request_id", state.get("request_id", "-"))
                if "model" in state:
                    span.set_attribute("gen_ai.request.model", state["model"])
                error = state.get("stream_error") or (state.get("error_code") if status >= 400 else None)
                if error is not None:
                    span.set_attribute("error.type", error)
                if status >= 500 or "stream_error" in state:
                    span.set_status(Status(StatusCode.ERROR, error))
