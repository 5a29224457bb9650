"""Security (README "Security"), over HTTP against any deployment.

* With INFERENCE_API_KEY set, every /v1/* route of every app answers 401 (an OpenAI error object
  with `WWW-Authenticate: Bearer`) to a missing or wrong key, in any of the usual wrong shapes, and
  never acts on the request (an unauthenticated unload leaves the model loaded); /health stays open.
  Path spellings that dodge the /v1/ prefix never reach a /v1 handler.
* With INFERENCE_ADMIN_KEY set too, load/unload need the admin key (an ordinary key gets 403).
* Bounds: body size (1 MB, with or without Content-Length), messages per request (256), n (8),
  prompts per completion request (16), max_tokens by the context (context_length_exceeded).
* No error body carries a traceback, a file path, or the key a client presented.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from .support import (
    ADMIN_KEY,
    API_KEY,
    BASE_URL,
    PRESET,
    fetch_models,
    http_timeout,
    openai_error,
    probe,
)
from .validators import ResponseValidator

pytestmark = [pytest.mark.integration]

TIGHT_BASE_URL = (os.environ.get("INFERENCE_TIGHT_BASE_URL") or f"{BASE_URL}/tight").rstrip("/")
MAX_BODY_BYTES = int(os.environ.get("INFERENCE_MAX_BODY_BYTES", "1000000"))
LEAK = re.compile(r"Traceback|File \"|site-packages|RayTaskError|\(pid=\d+|ray::|\.py\b")


def _wrong_credentials() -> list[tuple[str, dict[str, str]]]:
    key = API_KEY
    return [
        ("no header", {}),
        ("bearer without a key", {"Authorization": "Bearer"}),
        ("wrong key", {"Authorization": "Bearer sk-wrong-key-0123456789"}),
        ("key prefix", {"Authorization": f"Bearer {key[:-1]}"}),
        ("key plus suffix", {"Authorization": f"Bearer {key}x"}),
        ("key plus a second word", {"Authorization": f"Bearer {key} {key}"}),
        ("no scheme", {"Authorization": key}),
        ("basic scheme", {"Authorization": "Basic " + base64.b64encode(f"user:{key}".encode()).decode()}),
        ("x-api-key header", {"x-api-key": key}),
        ("api-key header", {"api-key": key}),
    ]


def _routes(model: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return [
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{model}", None),
        ("POST", f"/v1/models/{model}/unload", None),
        ("POST", f"/v1/models/{model}/load", None),
        ("POST", "/v1/chat/completions", chat),
        ("POST", "/v1/chat/completions", {**chat, "stream": True}),
        ("POST", "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2}),
        ("GET", f"/v1/presets/{PRESET}", None),
        ("GET", "/v1/no-such-route", None),
        ("DELETE", "/v1/models", None),
    ]


def _assert_401(response: httpx.Response, what: str, presented: dict[str, str]) -> None:
    assert response.status_code == 401, f"{what}: {response.status_code} {response.text[:200]}"
    error = ResponseValidator.validate_error(response, 401)
    assert error["type"] == "authentication_error", f"{what}: {error}"
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer"), what
    for value in presented.values():
        secret = value.split(" ", 1)[-1]
        if len(secret) > 8:
            assert secret not in response.text, f"{what}: the presented credential is echoed back"


@pytest.fixture
def secured() -> None:
    if not API_KEY:
        pytest.skip("INFERENCE_API_KEY not set: cannot tell a secured deployment from an open one")


@pytest.fixture
async def anonymous(skip_if_service_unavailable: None) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=http_timeout(30)) as http:
        yield http


def _app_urls() -> list[str]:
    urls = [BASE_URL]
    if probe(TIGHT_BASE_URL, [("/health", {})]) is None:
        urls.append(TIGHT_BASE_URL)
    return urls


async def test_every_v1_route_needs_the_key(
    secured: None, anonymous: httpx.AsyncClient, model_id: str
) -> None:
    checked = 0
    for base in _app_urls():
        for method, path, body in _routes(model_id):
            for label, headers in _wrong_credentials():
                response = await anonymous.request(method, f"{base}{path}", json=body, headers=headers)
                _assert_401(response, f"{method} {base}{path} with {label}", headers)
                checked += 1
    print(f"\n{checked} unauthenticated requests, all 401")
    # None of them acted: the model is still loaded.
    card = {c["id"]: c for c in fetch_models()["data"]}[model_id]
    assert card["status"] == "ready", f"an unauthenticated unload changed {model_id}: {card}"


async def test_key_in_query_string_is_not_accepted(secured: None, anonymous: httpx.AsyncClient) -> None:
    for param in ("api_key", "key", "access_token"):
        response = await anonymous.get("/v1/models", params={param: API_KEY})
        _assert_401(response, f"?{param}=<key>", {"q": API_KEY})


async def test_scheme_is_case_insensitive(secured: None, anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/v1/models", headers={"Authorization": f"bearer {API_KEY}"})
    assert response.status_code == 200, response.text[:200]


async def test_health_is_open(anonymous: httpx.AsyncClient) -> None:
    assert (await anonymous.get("/health")).status_code == 200
    ready = await anonymous.get("/health/ready")
    assert ready.status_code in (200, 503), ready.text[:200]
    assert "error" in ready.json() or ready.json().get("status") == "ready"


async def _raw_get(base: str, raw_path: str) -> tuple[int, str]:
    """GET with the path exactly as given (no client-side normalisation of dot segments)."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
    try:
        writer.write(f"GET {raw_path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = data.decode("utf-8", errors="replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "raw_path",
    [
        "/health/../v1/models",
        "/health/%2e%2e/v1/models",
        "/health/..%2fv1/models",
        "/-/../v1/models",
        "//v1/models",
        "/V1/models",
        "/v1//models",
        "/v1/models/",
        "/v1/./models",
        "/v1/%6dodels",
    ],
)
async def test_path_tricks_do_not_bypass_the_key(secured: None, raw_path: str) -> None:
    if urlsplit(BASE_URL).scheme != "http":
        pytest.skip("raw-path requests are sent over plain HTTP only")
    status, body = await _raw_get(BASE_URL, raw_path)
    assert status in (401, 404), f"{raw_path}: {status} {body[:200]}"
    assert '"object":"list"' not in body.replace(" ", ""), f"{raw_path} listed models without a key"


async def test_admin_key_guards_load_and_unload(client: httpx.AsyncClient, model_id: str) -> None:
    if not ADMIN_KEY or ADMIN_KEY == API_KEY:
        pytest.skip("INFERENCE_ADMIN_KEY not set (or equal to the API key)")
    for action in ("load", "unload"):
        response = await client.post(f"/v1/models/{model_id}/{action}")
        # A valid key without the admin role: 403 permission_error (an unknown key is the 401).
        assert response.status_code == 403, f"{action} with the ordinary key: {response.text[:200]}"
        error = ResponseValidator.validate_error(response, 403)
        assert error["type"] == "permission_error", error
    card = (await client.get(f"/v1/models/{model_id}")).json()
    assert card["status"] == "ready", card


# ---------------------------------------------------------------- bounds


async def test_body_size_is_bounded(client: httpx.AsyncClient, model_id: str) -> None:
    big = "x" * (MAX_BODY_BYTES + 1024)
    body = f'{{"model": "{model_id}", "messages": [{{"role": "user", "content": "{big}"}}], "max_tokens": 2}}'
    headers = {"content-type": "application/json"}
    with_length = await client.post("/v1/chat/completions", content=body.encode(), headers=headers)
    error = ResponseValidator.validate_error(with_length, 413)
    assert error["code"] == "payload_too_large", error

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        data = body.encode()
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    chunked = await client.post("/v1/chat/completions", content=chunks(), headers=headers)
    error = ResponseValidator.validate_error(chunked, 413)
    assert error["code"] == "payload_too_large", error


@pytest.mark.parametrize(
    ("path", "change", "param", "code"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 257}, "messages", None),
        ("/v1/chat/completions", {"n": 9}, "n", None),
        ("/v1/chat/completions", {"max_tokens": 10**6}, "max_tokens", "context_length_exceeded"),
        ("/v1/completions", {"prompt": ["hi"] * 17}, "prompt", None),
        ("/v1/completions", {"prompt": "hi", "n": 9}, "n", None),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 10**6}, "max_tokens", "context_length_exceeded"),
    ],
    ids=[
        "257-messages",
        "chat-n-9",
        "chat-max-tokens",
        "17-prompts",
        "completion-n-9",
        "completion-max-tokens",
    ],
)
async def test_request_bounds(
    client: httpx.AsyncClient, model_id: str, path: str, change: dict[str, Any], param: str, code: str | None
) -> None:
    body: dict[str, Any] = {"model": model_id, "max_tokens": 2}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {})
    body.update(change)
    error = ResponseValidator.validate_error(await client.post(path, json=body), 400)
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error


@pytest.mark.parametrize(
    ("path", "change"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 256}),
        ("/v1/chat/completions", {"n": 8}),
        ("/v1/completions", {"prompt": ["hi"] * 16}),
    ],
    ids=["256-messages", "n-8", "16-prompts"],
)
async def test_requests_at_the_bounds_are_served(
    client: httpx.AsyncClient, model_id: str, path: str, change: dict[str, Any]
) -> None:
    body: dict[str, Any] = {"model": model_id, "max_tokens": 2}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {})
    body.update(change)
    response = await client.post(path, json=body)
    # 256 messages may not fit a small context; that is a clean context_length_exceeded, not a bound.
    if response.status_code == 400:
        assert ResponseValidator.validate_error(response, 400)["code"] == "context_length_exceeded", (
            response.text
        )
        return
    assert response.status_code == 200, response.text[:300]


async def test_long_prompt_is_answered_cleanly_while_short_ones_are_served(
    client: httpx.AsyncClient, model_id: str
) -> None:
    """A prompt of ~70k characters (templated and tokenized off the replica's event loop, since it
    takes the tokenizer ~0.1 s) ends as an answer or as context_length_exceeded, and short requests
    sent at the same time are served."""
    long_body = {
        "model": model_id,
        "messages": [{"role": "user", "content": "lorem ipsum " * 6000}],
        "max_tokens": 2,
    }
    short_body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    long_response, *short = await asyncio.gather(
        client.post("/v1/chat/completions", json=long_body),
        *(client.post("/v1/chat/completions", json=short_body) for _ in range(4)),
    )
    if long_response.status_code == 400:
        error = ResponseValidator.validate_error(long_response, 400)
        assert error["code"] == "context_length_exceeded", long_response.text
    else:
        assert long_response.status_code == 200, long_response.text[:300]
    assert [r.status_code for r in short] == [200] * 4, [r.text[:200] for r in short]


# ---------------------------------------------------------------- no internal text in errors


async def test_error_bodies_carry_no_internal_text(client: httpx.AsyncClient, model_id: str) -> None:
    hi = [{"role": "user", "content": "hi"}]
    bad: list[tuple[str, Any]] = [
        ("/v1/chat/completions", b'{"model": '),
        ("/v1/chat/completions", b"\xff\xfe not json"),
        ("/v1/chat/completions", {"model": model_id, "messages": hi, "temperature": "hot"}),
        ("/v1/chat/completions", {"model": model_id, "messages": [{"role": "user", "content": {"a": 1}}]}),
        ("/v1/chat/completions", {"model": model_id, "messages": hi, "logit_bias": {"x": 1}}),
        ("/v1/chat/completions", {"model": model_id, "messages": hi, "logit_bias": {"\u00b2": 1}}),
        ("/v1/chat/completions", {"model": model_id, "messages": hi, "min_tokens": 10**6}),
        ("/v1/chat/completions", {"model": model_id, "messages": [{"role": "user", "content": "\ud800"}]}),
        ("/v1/completions", {"model": model_id, "prompt": [10**12]}),
        ("/v1/completions", {"model": model_id, "prompt": {"a": 1}}),
        ("/v1/models/no-such-model/load", None),
        ("/v1/no-such-route", {}),
    ]
    statuses = []
    for path, body in bad:
        # Sent as JSON text with ensure_ascii escapes, so that a lone surrogate travels as \ud800.
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = await client.post(path, content=content, headers={"content-type": "application/json"})
        statuses.append(response.status_code)
        assert response.status_code >= 400, f"{path} {body!r:.100}: {response.status_code}"
        assert openai_error(response.json()) is not None, response.text[:300]
        assert not LEAK.search(response.text), f"{path} {body!r:.100}: leaks {response.text[:500]}"
        if response.status_code >= 500:
            assert "Internal error while serving request" in response.json()["error"]["message"], (
                response.text
            )
    print(f"\nerror statuses: {statuses}")
