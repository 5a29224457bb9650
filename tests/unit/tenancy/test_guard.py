"""Quotas through the HTTP guard (deployments/ingress/http_guard.py over ASGI, with the FakeService of
test_routes.py) and model calls charged by MeteredModelClient."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from deployments.ingress.routes import build_api
from deployments.ingress.tenancy.admission import PriorityGate
from deployments.ingress.tenancy.keys import KeysFile, KeyTable
from deployments.ingress.tenancy.metering import MeteredModelClient, usage_of_events
from deployments.ingress.tenancy.quota import Admission, Quota, current_admission
from serve_app.protocol import ChatCompletionRequest, ChatCompletionResponse, CompletionRequest

from ..test_routes import CHAT, FakeService
from .fakes import FakeClock, FakeQuotaStore, FakeUnreachableStore

FILE = KeysFile.model_validate(
    {
        "keys": [
            {"key": "sk-rpm-000001", "tenant": "rpm", "requests_per_minute": 2, "tokens_per_minute": 100},
            {"key": "sk-conc-00001", "tenant": "conc", "max_concurrent_requests": 1},
            {"key": "sk-only-00001", "tenant": "only", "models": ["qwen2.5-7b"], "tier": "high"},
            {"key": "sk-ops-000001", "tenant": "ops", "role": "admin"},
        ]
    }
)


class FixedKeys:
    def __init__(self, table: KeyTable):
        self.table = table

    def current(self) -> KeyTable:
        return self.table


class FakeTenantMetrics:
    def __init__(self) -> None:
        self.requests: list[tuple[str, int, str | None]] = []
        self.tokens_by_tenant: dict[str, int] = {}

    def request(self, tenant: str, status: int, code: str | None) -> None:
        self.requests.append((tenant, status, code))

    def tokens(self, tenant: str, tokens: int) -> None:
        self.tokens_by_tenant[tenant] = self.tokens_by_tenant.get(tenant, 0) + tokens


@pytest.fixture
def tenant_metrics() -> FakeTenantMetrics:
    return FakeTenantMetrics()


@pytest.fixture
def http(tenant_metrics: FakeTenantMetrics) -> tuple[httpx.AsyncClient, FakeService, FakeClock]:
    service, clock = FakeService(), FakeClock()
    keys = FixedKeys(KeyTable.build("sk-legacy-01", "sk-legacy-admin", FILE))
    quota = Quota(FakeQuotaStore(clock), clock)
    app = build_api(service, keys, None, None, quota, tenant_metrics)  # type: ignore[arg-type]

    async def charging(request: ChatCompletionRequest, request_id: str) -> ChatCompletionResponse:
        # What MeteredModelClient does for a real model call.
        admission = current_admission.get()
        admission.check_tokens()
        response = await FakeService._answer(service, request, request_id)
        await admission.charge(60)
        return response

    service.on_chat = charging
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver"), service, clock


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_headers_on_every_response_and_a_429_when_over(
    http: tuple[httpx.AsyncClient, FakeService, FakeClock], tenant_metrics: FakeTenantMetrics
) -> None:
    client, _, clock = http
    first = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-rpm-000001"))
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    assert first.headers["x-ratelimit-remaining-tokens"] == "40"  # charged before the answer went out
    listed = await client.get("/v1/models", headers=bearer("sk-rpm-000001"))
    assert listed.headers["x-ratelimit-remaining-tokens"] == "40"
    clock.advance(1)
    second = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-rpm-000001"))
    assert second.status_code == 200
    third = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-rpm-000001"))
    assert third.status_code == 429
    error = third.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert third.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(third.headers["retry-after"]) >= 1
    assert third.headers["x-ratelimit-limit-requests"] == "2"
    assert ("rpm", 429, "rate_limit_exceeded") in tenant_metrics.requests
    assert tenant_metrics.tokens_by_tenant["rpm"] == 120
    legacy = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-legacy-01"))
    assert legacy.status_code == 200 and "x-ratelimit-limit-requests" not in legacy.headers


async def test_concurrency_limit_through_http(http: tuple[httpx.AsyncClient, FakeService, FakeClock]) -> None:
    client, service, _ = http
    release = asyncio.Event()

    async def slow(request: ChatCompletionRequest, request_id: str) -> ChatCompletionResponse:
        await release.wait()
        return await FakeService._answer(service, request, request_id)

    service.on_chat = slow
    first = asyncio.create_task(
        client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-conc-00001"))
    )
    while not service.chat_calls:
        await asyncio.sleep(0)
    refused = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-conc-00001"))
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "requests"
    assert "concurrent" in refused.json()["error"]["message"]
    release.set()
    assert (await first).status_code == 200
    after = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-conc-00001"))
    assert after.status_code == 200


async def test_roles_and_allowed_models(http: tuple[httpx.AsyncClient, FakeService, FakeClock]) -> None:
    client, service, _ = http
    for key in ("sk-only-00001", "sk-legacy-01"):
        denied = await client.post("/v1/models/qwen2.5-7b/load", headers=bearer(key))
        assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
    for key in ("sk-ops-000001", "sk-legacy-admin"):
        assert (await client.post("/v1/models/qwen2.5-7b/load", headers=bearer(key))).status_code == 200
    other = {**CHAT, "model": "deepseek-r1-7b"}
    refused = await client.post("/v1/chat/completions", json=other, headers=bearer("sk-only-00001"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    allowed = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-only-00001"))
    assert allowed.status_code == 200
    assert (
        await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-nope"))
    ).status_code == 401
    assert len(service.chat_calls) == 1


# ---------------------------------------------------------------- MeteredModelClient


class FakeRemote:
    def __init__(self, result: Any):
        self.result = result
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(args)
        if isinstance(self.result, list):

            async def items() -> AsyncIterator[Any]:
                for item in self.result:
                    yield item

            return items()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(self.result)
        return future


class FakeHandle:
    def __init__(self, response: Any = None, events: list[str] | None = None):
        self.chat_completion = FakeRemote(response)
        self.completion_stream = FakeRemote(events or [])
        self.chat_completion_stream = FakeRemote(events or [])

    def options(self, **_: Any) -> FakeHandle:
        return self


USAGE = 'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}\n\n'
DELTA = 'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


def test_usage_of_events_counts_and_drops_only_the_usage_chunk() -> None:
    assert usage_of_events(DELTA, True) == (DELTA, 0)
    assert usage_of_events(DELTA + USAGE, True) == (DELTA, 8)
    assert usage_of_events(DELTA + USAGE, False) == (DELTA + USAGE, 8)
    assert usage_of_events(USAGE, True) == ("", 8)


async def metered(admission: Admission, run: Any) -> Any:
    token = current_admission.set(admission)
    try:
        return await run()
    finally:
        current_admission.reset(token)


async def test_a_stream_is_charged_from_its_usage_chunk_which_the_client_did_not_ask_for() -> None:
    clock = FakeClock()
    store = FakeQuotaStore(clock)
    quota = Quota(store, clock)
    admission = await quota.admit(FixedKeys(KeyTable.build(None, None, FILE)).table.lookup("sk-rpm-000001"))
    handle = FakeHandle(events=[DELTA, DELTA + USAGE, "data: [DONE]\n\n"])
    client = MeteredModelClient("qwen2.5-7b", handle)
    request = ChatCompletionRequest.model_validate({**CHAT, "stream": True})

    async def run() -> list[str]:
        return [item async for item in client.chat_sse(request, "r1")]

    items = await metered(admission, run)
    assert items == [DELTA, DELTA, "data: [DONE]\n\n"]
    [(forwarded, _)] = handle.chat_completion_stream.calls
    assert forwarded.include_usage() and forwarded.priority == 1  # tier normal
    assert admission.tokens == 8 and store.ledger.keys[admission.principal.key_id].tokens.level == 92  # type: ignore[union-attr]


async def test_a_high_tier_key_sends_the_engine_its_priority() -> None:
    clock = FakeClock()
    quota = Quota(FakeQuotaStore(clock), clock)
    principal = KeyTable.build(None, None, FILE).lookup("sk-only-00001")
    admission = await quota.admit(principal)
    handle = FakeHandle(events=[DELTA])
    client = MeteredModelClient("qwen2.5-7b", handle)
    request = CompletionRequest.model_validate(
        {"model": "qwen2.5-7b", "prompt": "hi", "stream": True, "priority": 9}
    )

    async def run() -> list[str]:
        return [item async for item in client.completion_sse(request, "r1")]

    await metered(admission, run)
    [(forwarded, _)] = handle.completion_stream.calls
    assert forwarded.priority == 0  # the key's tier, not the client's value
    assert not forwarded.include_usage()  # an unlimited key is not metered


async def test_a_tenant_call_starts_only_once_the_models_gate_lets_it_through() -> None:
    clock = FakeClock()
    quota = Quota(FakeQuotaStore(clock), clock)
    table = KeyTable.build("sk-legacy-01", None, FILE)
    gate = PriorityGate(slots=1, max_waiting=None)
    handle = FakeHandle(events=[DELTA])
    client = MeteredModelClient("qwen2.5-7b", handle, gate)
    await gate.acquire(0)  # the model is busy
    request = ChatCompletionRequest.model_validate({**CHAT, "stream": True})

    async def consume() -> list[str]:
        return [item async for item in client.chat_sse(request, "r1")]

    tenant = await quota.admit(table.lookup("sk-only-00001"))
    waiting = asyncio.create_task(metered(tenant, consume))
    for _ in range(5):
        await asyncio.sleep(0)
    assert handle.chat_completion_stream.calls == [] and gate.waiting == 1
    # A legacy key is not gated: its call goes straight to Serve's own queue.
    legacy = await quota.admit(table.lookup("sk-legacy-01"))
    assert await metered(legacy, consume) == [DELTA]
    gate.release()
    assert await waiting == [DELTA]
    assert len(handle.chat_completion_stream.calls) == 2 and gate.in_use == 0


async def test_an_unreachable_quota_store_is_a_503_and_a_lost_charge_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    table = KeyTable.build(None, None, FILE)
    service = FakeService()
    app = build_api(service, FixedKeys(table), None, None, Quota(FakeUnreachableStore(), clock))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        refused = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-rpm-000001"))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "replica_died"
    admission = Admission(Quota(FakeUnreachableStore(), clock), table.lookup("sk-rpm-000001"), slot=True)
    await admission.charge(10)
    await admission.release()
    assert admission.tokens == 10 and "not settled" in caplog.text
