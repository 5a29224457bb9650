"""deployments/ingress/routes.py and http_guard.py over ASGI (httpx.ASGITransport) with a FakeService:
OpenAI error objects, API keys, body limits, request ids, and SSE streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from ray.serve.exceptions import BackPressureError

from deployments.ingress.dispatch import LoadResult
from deployments.ingress.http_guard import KeyPolicy, check_key, route_label, route_path
from deployments.ingress.routes import build_api
from serve_app.config import AppArgs, RequestLimits
from serve_app.draining import InflightRequests
from serve_app.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound, restarting
from serve_app.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    ModelCard,
    ModelList,
    Usage,
)
from serve_app.sse import DONE

from .fakes import FakeMetrics
from .support import parse_sse, sse_json

MAX_BODY = 4096
CHAT = {"model": "qwen2.5-7b", "messages": [{"role": "user", "content": "hi"}]}


class FakeService:
    """The surface routes.py uses of RequestDispatcher; `on_chat` decides what chat returns."""

    def __init__(self) -> None:
        self.args = AppArgs(limits=RequestLimits(max_body_bytes=MAX_BODY))
        self.chat_calls: list[tuple[ChatCompletionRequest, str]] = []
        self.completion_calls: list[tuple[CompletionRequest, str]] = []
        self.load_calls: list[tuple[str, str, float]] = []
        self.on_chat: Callable[[ChatCompletionRequest, str], Awaitable[Any]] = self._answer
        self.load_done = True

    async def _answer(self, request: ChatCompletionRequest, request_id: str) -> ChatCompletionResponse:
        return ChatCompletionResponse(
            id=request_id,
            model=request.model,
            choices=[ChatChoice(index=0, message=AssistantMessage(content="hello"), finish_reason="stop")],
            usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
        )

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> Any:
        self.chat_calls.append((request, request_id))
        return await self.on_chat(request, request_id)

    async def completion(self, request: CompletionRequest, request_id: str) -> Any:
        self.completion_calls.append((request, request_id))
        raise ModelNotFound(f"The model '{request.model}' does not exist here.", param="model")

    async def list_models(self) -> ModelList:
        return ModelList(data=[ModelCard(id="qwen2.5-7b", status="ready")], preset="D4")

    async def get_model(self, model_id: str) -> ModelCard:
        if model_id != "qwen2.5-7b":
            raise ModelNotFound(f"The model '{model_id}' does not exist here.", param="model")
        return ModelCard(id=model_id, status="ready")

    async def load(self, model_id: str, wait_s: float) -> LoadResult:
        self.load_calls.append(("load", model_id, wait_s))
        return LoadResult(
            ModelCard(id=model_id, status="ready" if self.load_done else "loading"), self.load_done
        )

    async def unload(self, model_id: str, wait_s: float) -> LoadResult:
        self.load_calls.append(("unload", model_id, wait_s))
        return LoadResult(ModelCard(id=model_id, status="unloaded"), True)

    async def readiness(self) -> dict[str, str]:
        return {"qwen2.5-7b": "ready"}

    def preset_info(self, name: str) -> dict[str, Any]:
        return {"name": name}


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def metrics() -> FakeMetrics:
    return FakeMetrics()


@pytest.fixture
def make_client(service: FakeService, metrics: FakeMetrics):
    def make(policy: KeyPolicy | None = None, app: Any = None) -> httpx.AsyncClient:
        asgi = app or build_api(service, policy or KeyPolicy(), metrics)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    return make


@pytest.fixture
async def client(make_client) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


# ---------------------------------------------------------------- errors as OpenAI objects


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "temperature": 3}, "temperature"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({**CHAT, "frobnicate": 1}, "frobnicate"),
        ({**CHAT, "orchestration": {"rounds": 99}}, "orchestration.rounds"),
        ({"messages": CHAT["messages"]}, "model"),
    ],
    ids=["temperature", "n", "no-messages", "role", "unknown-field", "rounds", "missing-model"],
)
async def test_validation_errors_are_400_error_objects_with_param(
    client: httpx.AsyncClient, service: FakeService, body: dict[str, Any], param: str
) -> None:
    response = await client.post("/v1/chat/completions", json=body)
    error = error_of(response, 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert service.chat_calls == []


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
    )
    error = error_of(response, 400)
    assert error["code"] == "invalid_json"


async def test_missing_body_says_the_body_is_missing(client: httpx.AsyncClient) -> None:
    error = error_of(await client.post("/v1/chat/completions"), 400)
    assert "None" not in error["message"]


async def test_unknown_route_is_a_404_error_object(client: httpx.AsyncClient) -> None:
    error = error_of(await client.get("/v1/engines"), 404)
    assert error["code"] == "not_found" and "/v1/engines" in error["message"]


async def test_wrong_method_is_a_405_error_object(client: httpx.AsyncClient) -> None:
    error = error_of(await client.get("/v1/chat/completions"), 405)
    assert error["code"] == "method_not_allowed" and "GET" in error["message"]


async def test_service_errors_keep_status_and_param(client: httpx.AsyncClient) -> None:
    error = error_of(await client.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    error = error_of(await client.get("/v1/models/nope"), 404)
    assert error["param"] == "model"


async def test_unexpected_errors_are_500s_without_internals(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    async def explode(request: ChatCompletionRequest, request_id: str) -> Any:
        raise RuntimeError("secret internal detail")

    service.on_chat = explode
    error = error_of(await client.post("/v1/chat/completions", json=CHAT), 500)
    assert error["type"] == "internal_error" and "secret" not in error["message"]


async def test_backpressure_from_a_model_is_a_429_with_retry_after(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    async def full(request: ChatCompletionRequest, request_id: str) -> Any:
        raise BackPressureError(
            num_queued_requests=1, max_queued_requests=1, status_code=429, retry_after_s=3
        )

    service.on_chat = full
    response = await client.post("/v1/chat/completions", json=CHAT)
    error = error_of(response, 429)
    assert error["type"] == "rate_limit_error"
    assert response.headers["retry-after"] == "3"


async def test_backpressure_429_is_counted_and_carries_the_request_id(
    client: httpx.AsyncClient, service: FakeService, metrics: FakeMetrics
) -> None:
    async def full(request: ChatCompletionRequest, request_id: str) -> Any:
        raise BackPressureError(
            num_queued_requests=1, max_queued_requests=1, status_code=429, retry_after_s=3
        )

    service.on_chat = full
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429
    assert ("qwen2.5-7b", 429, "overloaded") in metrics.named("error")
    assert response.headers.get("x-request-id", "").startswith("req-")


async def test_unexpected_500_is_counted_and_carries_the_request_id(
    client: httpx.AsyncClient, service: FakeService, metrics: FakeMetrics
) -> None:
    async def explode(request: ChatCompletionRequest, request_id: str) -> Any:
        raise RuntimeError("secret internal detail")

    service.on_chat = explode
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    assert ("qwen2.5-7b", 500, "internal_error") in metrics.named("error")
    assert response.headers.get("x-request-id", "").startswith("req-")


async def test_error_metrics_are_recorded_for_service_errors(
    client: httpx.AsyncClient, metrics: FakeMetrics
) -> None:
    await client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert metrics.named("error") == [("nope", 404, "model_not_found")]
    [(model, route, status, seconds)] = metrics.named("request_finished")
    assert (model, route, status) == ("nope", "/v1/completions", 404) and seconds >= 0


# ---------------------------------------------------------------- success paths


async def test_chat_success_returns_the_service_response(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "hello"
    assert "orchestration" not in body and "reasoning_content" not in body["choices"][0]["message"]
    request, request_id = service.chat_calls[0]
    assert request.model == "qwen2.5-7b" and body["id"] == request_id


async def test_models_and_presets(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/v1/models")).json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["qwen2.5-7b"]
    assert (await client.get("/v1/models/qwen2.5-7b")).json()["status"] == "ready"
    assert (await client.get("/v1/presets/D4")).json() == {"name": "D4"}
    assert (await client.get("/health/ready")).json() == {
        "status": "ready",
        "models": {"qwen2.5-7b": "ready"},
    }


async def test_load_is_200_when_done_and_202_while_loading(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    response = await client.post("/v1/models/qwen2.5-7b/load?wait=5")
    assert response.status_code == 200 and response.json()["status"] == "ready"
    service.load_done = False
    response = await client.post("/v1/models/qwen2.5-7b/load?wait=0")
    assert response.status_code == 202 and response.json()["status"] == "loading"
    assert service.load_calls == [("load", "qwen2.5-7b", 5.0), ("load", "qwen2.5-7b", 0.0)]
    error = error_of(await client.post("/v1/models/qwen2.5-7b/load?wait=-1"), 400)
    assert error["param"] == "query.wait"


# ---------------------------------------------------------------- body size and request ids


async def test_oversized_body_is_a_413(client: httpx.AsyncClient, service: FakeService) -> None:
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * MAX_BODY}]}).encode()
    response = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    error = error_of(response, 413)
    assert error["code"] == "payload_too_large" and str(MAX_BODY) in error["message"]
    assert service.chat_calls == []


async def test_oversized_chunked_body_is_a_413(client: httpx.AsyncClient, service: FakeService) -> None:
    async def chunked() -> AsyncIterator[bytes]:
        yield json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * MAX_BODY}]}).encode()

    response = await client.post(
        "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert service.chat_calls == []


async def test_request_id_is_generated_and_passed_to_the_service(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    first = await client.post("/v1/chat/completions", json=CHAT)
    second = await client.post("/v1/chat/completions", json=CHAT)
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(i.startswith("req-") for i in ids) and ids[0] != ids[1]
    assert [rid for _, rid in service.chat_calls] == ids
    error = await client.get("/v1/nothing-here")
    assert error.headers["x-request-id"].startswith("req-")


async def test_client_request_id_is_used_only_if_bounded(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "client-abc"})
    await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "z" * 128})
    replaced = []
    for bad in ("z" * 129, "z" * 5000, "tab\there", " "):
        response = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": bad})
        replaced.append(response.headers.get_list("x-request-id"))
    ids = [rid for _, rid in service.chat_calls]
    assert ids[:2] == ["client-abc", "z" * 128]
    # A longer or unprintable id is replaced by ours, in the response's header as in its body.
    assert all(rid.startswith("req-") and len(rid) <= 128 for rid in ids[2:]), ids
    assert [[rid] for rid in ids[2:]] == replaced


async def test_behind_rays_proxy_the_request_id_is_echoed_exactly_once(
    make_client, service: FakeService, metrics: FakeMetrics
) -> None:
    # Under Ray Serve, the proxy's RequestIdMiddleware wraps the app: it copies (or creates) the id into
    # the scope headers and onto the response. HttpGuard must then not add a second header.
    from ray.serve._private.http_util import RequestIdMiddleware

    app = RequestIdMiddleware(build_api(service, KeyPolicy(), metrics))  # type: ignore[arg-type]
    async with make_client(app=app) as client:
        echoed = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "client-abc"})
        generated = await client.post("/v1/chat/completions", json=CHAT)
    assert echoed.headers.get_list("x-request-id") == ["client-abc"]
    [generated_id] = generated.headers.get_list("x-request-id")
    assert [rid for _, rid in service.chat_calls] == ["client-abc", generated_id]


# ---------------------------------------------------------------- API keys


async def test_api_keys(make_client) -> None:
    async with make_client(KeyPolicy(api_keys=("k1", "k2"))) as client:
        missing = await client.post("/v1/chat/completions", json=CHAT)
        error = error_of(missing, 401)
        assert (error["type"], error["code"]) == ("authentication_error", "missing_api_key")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.headers["x-request-id"].startswith("req-")

        wrong = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer k3"})
        assert error_of(wrong, 401)["code"] == "invalid_api_key"
        not_bearer = await client.get("/v1/models", headers={"Authorization": "Basic k1"})
        assert error_of(not_bearer, 401)["code"] == "missing_api_key"

        for key in ("k1", "k2"):
            ok = await client.post(
                "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
            )
            assert ok.status_code == 200
        assert (await client.get("/v1/models", headers={"authorization": "bearer k2"})).status_code == 200

        assert (await client.get("/health")).json() == {"status": "ok"}
        assert (await client.get("/health/ready")).status_code == 200


async def test_auth_is_checked_before_the_body(make_client, service: FakeService) -> None:
    async with make_client(KeyPolicy(api_keys=("k1",))) as client:
        response = await client.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 401 and service.chat_calls == []


async def test_admin_key_guards_load_and_unload(make_client, service: FakeService) -> None:
    policy = KeyPolicy(api_keys=("k1",), admin_keys=("admin",))
    async with make_client(policy) as client:
        user = await client.post("/v1/models/qwen2.5-7b/load", headers={"Authorization": "Bearer k1"})
        error = error_of(user, 403)
        assert (error["type"], error["code"]) == ("permission_error", "insufficient_permissions")
        assert "admin key" in error["message"]
        wrong = await client.post("/v1/models/qwen2.5-7b/load", headers={"Authorization": "Bearer nope"})
        assert error_of(wrong, 401)["code"] == "invalid_api_key"
        assert error_of(await client.post("/v1/models/qwen2.5-7b/unload"), 401)["code"] == "missing_api_key"
        assert service.load_calls == []
        admin = await client.post("/v1/models/qwen2.5-7b/load", headers={"Authorization": "Bearer admin"})
        assert admin.status_code == 200
        unload = await client.post("/v1/models/qwen2.5-7b/unload", headers={"Authorization": "Bearer admin"})
        assert unload.status_code == 200
        ordinary = await client.get("/v1/models", headers={"Authorization": "Bearer k1"})
        assert ordinary.status_code == 200
    assert [c[0] for c in service.load_calls] == ["load", "unload"]


async def test_admin_keys_alone_leave_inference_open(make_client) -> None:
    async with make_client(KeyPolicy(admin_keys=("admin",))) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await client.post("/v1/models/qwen2.5-7b/load")).status_code == 401


async def test_keys_are_enforced_under_a_route_prefix(service: FakeService, metrics: FakeMetrics) -> None:
    # Ray Serve mounts an application at its route_prefix: the scope's path keeps the prefix and
    # root_path names it. /v1/* must stay protected there too.
    app = build_api(service, KeyPolicy(api_keys=("k1",)), metrics)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, root_path="/tight", raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert error_of(await client.get("/tight/v1/models"), 401)["code"] == "missing_api_key"
        authorized = await client.get("/tight/v1/models", headers={"Authorization": "Bearer k1"})
        assert authorized.status_code == 200
        assert (await client.get("/tight/health")).status_code == 200
    assert route_path({"path": "/tight/v1/models", "root_path": "/tight"}) == "/v1/models"
    assert route_path({"path": "/tight", "root_path": "/tight"}) == "/"
    assert route_path({"path": "/v1/models"}) == "/v1/models"


def test_key_policy_from_env_values() -> None:
    assert KeyPolicy.from_env_values(" k1, k2 ,,", None) == KeyPolicy(("k1", "k2"), ())
    assert KeyPolicy.from_env_values(None, "adm") == KeyPolicy((), ("adm",))
    assert KeyPolicy.from_env_values("", "") == KeyPolicy()


def test_check_key_paths() -> None:
    policy = KeyPolicy(api_keys=("k",))
    for open_path in ("/health", "/health/ready", "/-/routes", "/docs"):
        check_key(open_path, None, policy)
    with pytest.raises(Exception, match="Missing API key"):
        check_key("/v1/models", None, policy)
    check_key("/v1/models", "Bearer k", policy)


def test_route_labels_are_bounded() -> None:
    assert route_label("/v1/chat/completions") == "/v1/chat/completions"
    assert route_label("/v1/models/qwen2.5-7b") == "/v1/models/{id}"
    assert route_label("/v1/models/qwen2.5-7b/load") == "/v1/models/{id}/load"
    assert route_label("/v1/random/path") == "other"


# ---------------------------------------------------------------- SSE streams


def sse_chunk(content: str) -> str:
    return f'data: {{"choices": [{{"index": 0, "delta": {{"content": "{content}"}}}}]}}\n\n'


STREAMED_CHAT = {**CHAT, "stream": True}


def serve_events(service: FakeService, answer: Callable[[], AsyncIterator[str]]) -> None:
    """The service answers each chat with the SSE events of a fresh `answer()`."""

    async def stream(request: ChatCompletionRequest, request_id: str) -> AsyncIterator[str]:
        return answer()

    service.on_chat = stream


async def test_stream_success_ends_with_done(client: httpx.AsyncClient, service: FakeService) -> None:
    async def answer() -> AsyncIterator[str]:
        yield sse_chunk("a")
        yield sse_chunk("b")

    serve_events(service, answer)
    response = await client.post("/v1/chat/completions", json=STREAMED_CHAT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = parse_sse(response.text)
    assert [sse_json(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == ["a", "b"]
    assert events[-1] == "[DONE]" and response.text.endswith(DONE)


async def test_stream_error_before_the_first_event_keeps_its_status(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    async def answer() -> AsyncIterator[str]:
        raise ContextLengthExceeded("too long for this model", param="max_tokens")
        yield ""  # pragma: no cover

    serve_events(service, answer)
    response = await client.post("/v1/chat/completions", json=STREAMED_CHAT)
    error = error_of(response, 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "max_tokens")
    assert "data:" not in response.text


async def test_stream_error_after_the_first_event_is_an_error_event_then_done(
    client: httpx.AsyncClient, service: FakeService, metrics: FakeMetrics
) -> None:
    async def answer() -> AsyncIterator[str]:
        yield sse_chunk("partial")
        raise RuntimeError("secret internal detail")

    serve_events(service, answer)
    response = await client.post("/v1/chat/completions", json=STREAMED_CHAT)
    assert response.status_code == 200
    events = parse_sse(response.text)
    assert len(events) == 3
    assert sse_json(events[0])["choices"][0]["delta"]["content"] == "partial"
    error = sse_json(events[1])["error"]
    assert error["type"] == "internal_error" and "secret" not in error["message"]
    assert events[2] == "[DONE]"
    assert ("qwen2.5-7b", 200, "internal_error") in metrics.named("error")


async def test_stream_service_error_mid_stream_keeps_its_code(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    async def answer() -> AsyncIterator[str]:
        yield sse_chunk("x")
        raise InvalidRequest("The critic step failed: bad", param="max_tokens")

    serve_events(service, answer)
    events = parse_sse((await client.post("/v1/chat/completions", json=STREAMED_CHAT)).text)
    assert sse_json(events[1])["error"]["param"] == "max_tokens" and events[-1] == "[DONE]"


async def test_empty_stream_still_ends_with_done(client: httpx.AsyncClient, service: FakeService) -> None:
    async def answer() -> AsyncIterator[str]:
        return
        yield ""  # pragma: no cover

    serve_events(service, answer)
    response = await client.post("/v1/chat/completions", json=STREAMED_CHAT)
    assert response.status_code == 200 and parse_sse(response.text) == ["[DONE]"]


# ---------------------------------------------------------------- the drain's cut (InflightRequests)


# Only turns a hang (a cut that never reaches the request) into a failure; no verdict depends on it.
HANG_GUARD_S = 60


def service_restarting() -> Any:
    return restarting("the ingress replica is shutting down and its drain ran out", "service_restarting")


class CutWhenTheClientHasAnEvent:
    """ASGI wrapper on the client's side of the app: cuts `inflight` once the first SSE event has
    been sent, so the cut lands in a stream whose response has started."""

    def __init__(self, app: Any, inflight: InflightRequests):
        self.app = app
        self.inflight = inflight

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def watching_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and b"data: " in message.get("body", b""):
                self.inflight.cut(service_restarting())

        await self.app(scope, receive, watching_send)


async def test_a_cut_ends_a_request_waiting_on_the_service_with_a_503_and_retry_after(
    make_client, service: FakeService, metrics: FakeMetrics
) -> None:
    inflight = InflightRequests()
    entered = asyncio.Event()
    outcome: list[str] = []

    async def blocked(request: ChatCompletionRequest, request_id: str) -> Any:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async def cut_when_entered() -> None:
        await entered.wait()
        inflight.cut(service_restarting())

    service.on_chat = blocked
    cutter = asyncio.create_task(cut_when_entered())
    async with (
        make_client(app=build_api(service, KeyPolicy(), metrics, inflight)) as client,  # type: ignore[arg-type]
        asyncio.timeout(HANG_GUARD_S),
    ):
        response = await client.post("/v1/chat/completions", json=CHAT)
    await cutter
    error = error_of(response, 503)
    assert (error["type"], error["code"]) == ("service_unavailable", "service_restarting")
    assert response.headers["retry-after"] == "5"
    assert response.headers["x-request-id"].startswith("req-")
    assert outcome == ["cancelled"]  # the model call behind the request is cancelled
    assert ("qwen2.5-7b", 503, "service_restarting") in metrics.named("error")
    assert inflight.open == 0


async def test_a_cut_ends_a_started_stream_with_an_error_event_then_done(
    make_client, service: FakeService, metrics: FakeMetrics
) -> None:
    inflight = InflightRequests()
    source_closed: list[bool] = []

    async def answer() -> AsyncIterator[str]:
        try:
            yield sse_chunk("partial")
            await asyncio.Event().wait()
            yield sse_chunk("never")  # pragma: no cover
        finally:
            source_closed.append(True)

    serve_events(service, answer)
    app = CutWhenTheClientHasAnEvent(build_api(service, KeyPolicy(), metrics, inflight), inflight)  # type: ignore[arg-type]
    async with make_client(app=app) as client, asyncio.timeout(HANG_GUARD_S):
        response = await client.post("/v1/chat/completions", json=STREAMED_CHAT)
    assert response.status_code == 200
    events = parse_sse(response.text)
    assert len(events) == 3, events
    first, cut, done = events
    assert isinstance(first, dict) and isinstance(cut, dict)
    assert first["choices"][0]["delta"]["content"] == "partial"
    assert cut["error"]["code"] == "service_restarting"
    assert cut["error"]["type"] == "service_unavailable"
    assert "Retry in 5 s" in cut["error"]["message"]
    assert done == "[DONE]" and response.text.endswith(DONE)
    assert source_closed == [True]
    assert ("qwen2.5-7b", 200, "service_restarting") in metrics.named("error")


async def test_after_a_cut_new_requests_get_a_503_without_reaching_the_service(
    make_client, service: FakeService, metrics: FakeMetrics
) -> None:
    inflight = InflightRequests()
    async with make_client(app=build_api(service, KeyPolicy(), metrics, inflight)) as client:  # type: ignore[arg-type]
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        inflight.cut(service_restarting())
        refused = await client.post("/v1/chat/completions", json=CHAT)
        streamed = await client.post("/v1/chat/completions", json=STREAMED_CHAT)
    for response in (refused, streamed):
        error = error_of(response, 503)
        assert error["code"] == "service_restarting" and response.headers["retry-after"] == "5"
    assert len(service.chat_calls) == 1
