"""The OpenAI HTTP surface. Handlers parse, call `RequestDispatcher`, and render; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry.trace import Tracer
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from deployments.ingress.dispatch import LoadResult, RequestDispatcher
from deployments.ingress.http_guard import HttpGuard, KeySource, check_model_allowed, note_error, note_model
from deployments.ingress.tenancy.quota import Quota
from deployments.ingress.tracing import TracingMiddleware
from serve_app.draining import InflightRequests
from serve_app.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    invalid_request_from,
    to_service_error,
)
from serve_app.metrics import RequestMetrics, TenantMetrics
from serve_app.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from serve_app.sse import DONE, encode_event

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "-")


def error_response(error: ServiceError, request: Request | None = None) -> JSONResponse:
    if request is not None:
        note_error(request.scope, error)
    return JSONResponse(error.body().model_dump(), status_code=error.status, headers=error.headers())


def install_error_handlers(app: FastAPI, max_body_bytes: int) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(invalid_request_from(exc.errors()), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            return error_response(
                MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}."), request
            )
        if exc.status_code == 413:
            return error_response(PayloadTooLarge(f"Request body exceeds {max_body_bytes} bytes."), request)
        if exc.status_code == 404:
            return error_response(NotFound(f"No route {request.method} {request.url.path}."), request)
        error = InvalidRequest(str(exc.detail))
        error.status = exc.status_code
        return error_response(error, request)

    async def _translated(request: Request, exc: Exception) -> JSONResponse:
        return error_response(to_service_error(exc, request_id=request_id(request)), request)

    # Known failure types get handlers of their own: Starlette re-raises whatever reaches the
    # catch-all `Exception` handler.
    for known in (RayServeException, RayError, TimeoutError):
        app.add_exception_handler(known, _translated)
    app.add_exception_handler(Exception, _translated)


async def stream_response(
    events: AsyncIterator[str], request: Request, inflight: InflightRequests
) -> StreamingResponse:
    """Start an SSE response only once the first event exists, so early errors keep their status;
    later errors (the drain's cut among them) become an error event, and every stream ends with
    [DONE]."""
    rid = request_id(request)
    iterator = aiter(inflight.stream(events))
    try:
        first: str | None = await anext(iterator)
    except StopAsyncIteration:
        first = None

    async def body() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield first
            async for event in iterator:
                yield event
        except Exception as exc:
            error = to_service_error(exc, request_id=rid)
            note_error(request.scope, error, "stream_error")
            yield encode_event(error.body(), exclude_none=False)
        yield DONE

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


def _load_response(result: LoadResult) -> JSONResponse:
    return JSONResponse(result.card.model_dump(), status_code=200 if result.done else 202)


def build_api(
    service: RequestDispatcher,
    policy: KeySource,
    metrics: RequestMetrics | None = None,
    inflight: InflightRequests | None = None,
    quota: Quota | None = None,
    tenant_metrics: TenantMetrics | None = None,
    tracer: Tracer | None = None,
) -> ASGIApp:
    """The ingress's ASGI app: the FastAPI routes behind `HttpGuard` (behind `TracingMiddleware`,
    which opens each request's root span, when tracing is on).

    Neither outer layer is a Starlette app on purpose: Ray Serve adds its own plain-text handlers
    for BackPressureError to any app that has `add_exception_handler`, which would replace our
    OpenAI-format 429s; the guard has no such method, so our handlers stay in charge."""
    app = FastAPI(
        title="Inference cluster",
        description="OpenAI-compatible multi-model inference on Ray Serve and vLLM.",
        version="0.1.0",
    )
    install_error_handlers(app, service.args.limits.max_body_bytes)
    inflight = inflight or InflightRequests()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> dict[str, Any]:
        return {"status": "ready", "models": await service.readiness()}

    @app.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
    async def list_models() -> ModelList:
        return await service.list_models()

    @app.get("/v1/models/{model_id}", response_model=ModelCard, response_model_exclude_none=True)
    async def get_model(model_id: str) -> ModelCard:
        return await service.get_model(model_id)

    @app.post("/v1/models/{model_id}/load")
    async def load(model_id: str, wait: float = Query(300, ge=0, le=3600)) -> JSONResponse:
        return _load_response(await service.load(model_id, wait))

    @app.post("/v1/models/{model_id}/unload")
    async def unload(model_id: str, wait: float = Query(120, ge=0, le=3600)) -> JSONResponse:
        return _load_response(await service.unload(model_id, wait))

    @app.get("/v1/presets/{name}")
    async def preset(name: str) -> dict[str, Any]:
        return service.preset_info(name)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        note_model(request.scope, body.model)
        check_model_allowed(request.scope, body.model)
        result = await service.chat(body, request_id(request))
        if isinstance(result, AsyncIterator):
            return await stream_response(result, request, inflight)
        return JSONResponse(result.model_dump(exclude_none=True))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        note_model(request.scope, body.model)
        check_model_allowed(request.scope, body.model)
        result = await service.completion(body, request_id(request))
        if isinstance(result, AsyncIterator):
            return await stream_response(result, request, inflight)
        return JSONResponse(result.model_dump(exclude_none=True))

    guard = HttpGuard(
        app, policy, service.args.limits.max_body_bytes, metrics, inflight, quota, tenant_metrics, tracer
    )
    return guard if tracer is None else TracingMiddleware(guard, tracer)
