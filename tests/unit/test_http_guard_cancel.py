"""HttpGuard when Ray cancels a request under it (its replica's HTTP server ran out of shutdown
grace): a request that has not answered yet gets an OpenAI 503 instead of uvicorn's plain-text
500, the work behind it is cancelled, and the cancellation still propagates."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from deployments.ingress.http_guard import HttpGuard, KeyPolicy


async def test_a_cancelled_request_answers_service_restarting_not_a_bare_500() -> None:
    started, app_cancelled = asyncio.Event(), asyncio.Event()

    async def blocked_app(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a model call that never answers
        except asyncio.CancelledError:
            app_cancelled.set()
            raise

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    guard = HttpGuard(blocked_app, KeyPolicy(), 1_000_000)
    request = asyncio.create_task(guard(scope, receive, send))
    await asyncio.wait_for(started.wait(), 10)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert app_cancelled.is_set(), "the work behind the request is cancelled too"
    start, body = sent[0], sent[1]
    assert start["type"] == "http.response.start" and start["status"] == 503
    assert dict(start["headers"])[b"retry-after"] == b"5"
    error = json.loads(body["body"])["error"]
    assert error["code"] == "service_restarting" and error["type"] == "service_unavailable"


async def test_a_cancelled_stream_that_already_answered_is_left_alone() -> None:
    async def answering_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.Event().wait()

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/health", "headers": []}
    request = asyncio.create_task(HttpGuard(answering_app, KeyPolicy(), 1000)(scope, receive, send))
    while not sent:
        await asyncio.sleep(0)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert [m["type"] for m in sent] == ["http.response.start"], "no second response start"
