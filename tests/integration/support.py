"""Configuration, availability probes, model helpers and request builders for the integration suite.

Everything here speaks HTTP to a running service (INFERENCE_BASE_URL) and, for the gateway tests, to
an OpenAI-compatible gateway (LLM_GATEWAY_URL). Nothing is imported from the service's own code.

An unreachable service skips the suite, unless INFERENCE_REQUIRE_SERVICE=1 (as in CI), which turns
that into a failure; INFERENCE_REQUIRE_GATEWAY=1 does the same for the gateway. A model that is simply
not part of the running deployment always skips.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


BASE_URL = (
    os.environ.get("INFERENCE_BASE_URL") or os.environ.get("INFERENCE_SERVICE_URL") or "http://localhost:8085"
).rstrip("/")
API_KEY = os.environ.get("INFERENCE_API_KEY", "")
# Optional: deployments with admin keys require them for /v1/models/{id}/load and /unload.
ADMIN_KEY = os.environ.get("INFERENCE_ADMIN_KEY", "")
TEST_TIMEOUT = float(os.environ.get("INFERENCE_TEST_TIMEOUT", "120"))
STREAM_TIMEOUT = float(os.environ.get("STREAM_TEST_TIMEOUT", "180"))
MODEL_LOAD_TIMEOUT = float(os.environ.get("MODEL_LOAD_TIMEOUT", "300"))
GATEWAY_URL = os.environ.get("LLM_GATEWAY_URL", "http://localhost:8080").rstrip("/")
GATEWAY_API_KEY = os.environ.get("LLM_GATEWAY_API_KEY", "sk-gateway-test")
PRESET = os.environ.get("INFERENCE_DEFAULT_PRESET", "D4")
REQUIRE_SERVICE = _env_flag("INFERENCE_REQUIRE_SERVICE")
REQUIRE_GATEWAY = _env_flag("INFERENCE_REQUIRE_GATEWAY")
TEST_MODEL = os.environ.get("INFERENCE_TEST_MODEL", "")
# The test config's second app: one model with a tiny queue and short drain budgets.
TIGHT_BASE_URL = (os.environ.get("INFERENCE_TIGHT_BASE_URL") or f"{BASE_URL}/tight").rstrip("/")

# The catalog's model ids and the D4 preset (see integration-tests.md).
CATALOG_MODELS = [
    "deepseek-r1-7b",
    "qwen2.5-7b",
    "phi-4",
    "llama-3.2-3b",
    "phi-3-medium-128k",
    "granite-8b-code-128k",
]
REASONING_MODELS = {"deepseek-r1-7b"}
D4_GENERATOR = "qwen2.5-7b"
D4_CRITIC = "deepseek-r1-7b"
D4_MODELS = [D4_CRITIC, D4_GENERATOR]
MODEL_STATES = {"loading", "ready", "unloading", "unloaded", "failed"}
# OpenAI's finish reasons (vLLM's "abort" must never reach a client).
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}
# Default model preference when a test just needs "some" model: fast, non-reasoning models first.
_PREFERRED = ["llama-3.2-3b", "qwen2.5-7b", "phi-4", "granite-8b-code-128k", "phi-3-medium-128k"]


def auth_headers(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def admin_headers() -> dict[str, str]:
    return auth_headers(ADMIN_KEY or API_KEY)


def http_timeout(seconds: float = TEST_TIMEOUT) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(10.0, seconds))


def openai_sdk(base_url: str, api_key: str) -> Any:
    """The official OpenAI SDK pointed at `base_url` (no retries, so failures surface); close it
    with `async with`."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=TEST_TIMEOUT)


# ---------------------------------------------------------------- availability probes (sync, cached)

_probe_cache: dict[str, str | None] = {}


def probe(url: str, paths: list[tuple[str, dict[str, str]]]) -> str | None:
    """Return None when one of `paths` answers 200, else a reason string. Cached per URL."""
    if url in _probe_cache:
        return _probe_cache[url]
    reason: str | None = "no probe path answered"
    try:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(10.0, connect=5.0)) as http:
            for path, headers in paths:
                response = http.get(path, headers=headers)
                if response.status_code == 200:
                    reason = None
                    break
                reason = f"GET {path} answered {response.status_code}"
    except httpx.HTTPError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    _probe_cache[url] = reason
    return reason


def ensure_service() -> None:
    reason = probe(BASE_URL, [("/health", {})])
    if reason is None:
        return
    message = f"Inference service not available at {BASE_URL} ({reason})"
    if REQUIRE_SERVICE:
        pytest.fail(message + " and INFERENCE_REQUIRE_SERVICE=1", pytrace=False)
    pytest.skip(message)


def ensure_gateway() -> None:
    reason = probe(GATEWAY_URL, [("/health/liveliness", {}), ("/v1/models", auth_headers(GATEWAY_API_KEY))])
    if reason is None:
        return
    message = f"LLM Gateway not available at {GATEWAY_URL} ({reason})"
    if REQUIRE_GATEWAY:
        pytest.fail(message + " and INFERENCE_REQUIRE_GATEWAY=1", pytrace=False)
    pytest.skip(message)


def fetch_models() -> dict[str, Any]:
    """GET /v1/models, fresh (model states change during a run)."""
    ensure_service()
    with httpx.Client(base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout()) as http:
        response = http.get("/v1/models")
    assert response.status_code == 200, f"GET /v1/models -> {response.status_code}: {response.text[:500]}"
    body = response.json()
    assert body.get("object") == "list" and isinstance(body.get("data"), list), body
    return body


def ensure_model_ready(model_id: str, base_url: str = BASE_URL) -> dict[str, Any]:
    """POST /v1/models/{id}/load (idempotent) and wait until the card says ready."""
    deadline = time.monotonic() + MODEL_LOAD_TIMEOUT
    with httpx.Client(
        base_url=base_url, headers=auth_headers(), timeout=http_timeout(MODEL_LOAD_TIMEOUT)
    ) as http:
        response = http.post(f"/v1/models/{model_id}/load", headers=admin_headers())
        if response.status_code == 200 and response.json().get("status") == "ready":
            return response.json()
        last = f"load -> {response.status_code}: {response.text[:300]}"
        while time.monotonic() < deadline:
            card_response = http.get(f"/v1/models/{model_id}")
            if card_response.status_code == 200:
                card = card_response.json()
                if card.get("status") == "ready":
                    return card
                if card.get("status") == "failed":
                    pytest.fail(f"model {model_id} failed to load: {card.get('error')}", pytrace=False)
                last = f"status {card.get('status')}"
            time.sleep(2.0)
    pytest.fail(f"model {model_id} not ready within {MODEL_LOAD_TIMEOUT:.0f}s ({last})", pytrace=False)


def require_model_card(model_id: str, *, ready: bool = True) -> dict[str, Any]:
    cards = {card["id"]: card for card in fetch_models()["data"]}
    if model_id not in cards:
        pytest.skip(f"Model {model_id} not available in this deployment")
    card = cards[model_id]
    if ready and card.get("status") != "ready":
        card = ensure_model_ready(model_id)
    return card


def require_tight_model() -> str:
    """The model of the tight app (TIGHT_BASE_URL), once ready; skip without the app, or fail with
    INFERENCE_REQUIRE_SERVICE=1. A model that is still (re)starting, after an earlier destructive
    test say, is waited for up to MODEL_LOAD_TIMEOUT."""
    ensure_service()
    reason = probe(TIGHT_BASE_URL, [("/health", {})])
    if reason is None:
        with httpx.Client(base_url=TIGHT_BASE_URL, headers=auth_headers(), timeout=http_timeout()) as http:
            response = http.get("/v1/models")
            cards = response.json().get("data", []) if response.status_code == 200 else []
            if cards:
                return str(ensure_model_ready(cards[0]["id"], TIGHT_BASE_URL)["id"])
        reason = f"GET /v1/models answered {response.status_code} with models {cards}"
    message = (
        f"No tight-queue app at {TIGHT_BASE_URL} ({reason}); deploy tests/serve_config.test.yaml or set "
        "INFERENCE_TIGHT_BASE_URL"
    )
    if REQUIRE_SERVICE:
        pytest.fail(message + " (INFERENCE_REQUIRE_SERVICE=1)", pytrace=False)
    pytest.skip(message)


_default_model: list[str] = []


def default_model() -> str:
    """The model used by tests that need any one model; INFERENCE_TEST_MODEL overrides."""
    if _default_model:
        return _default_model[0]
    cards = fetch_models()["data"]
    ready = [c["id"] for c in cards if c.get("status") == "ready"]
    if TEST_MODEL:
        require_model_card(TEST_MODEL)
        choice = TEST_MODEL
    elif not ready:
        pytest.skip("No models loaded in inference service")
    else:
        by_role = [c["id"] for c in cards if c["id"] in ready and c.get("role") in ("generator", "general")]
        preferred = [m for m in _PREFERRED if m in ready]
        choice = (preferred or by_role or ready)[0]
    _default_model.append(choice)
    return choice


# ---------------------------------------------------------------- request builders


class ChatRequestFactory:
    """Builds chat-completion payloads; `model` defaults to one ready model of the deployment."""

    @staticmethod
    def _base(messages: list[dict[str, Any]], model: str | None, max_tokens: int, **extra: Any) -> dict:
        payload: dict[str, Any] = {
            "model": model or default_model(),
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": extra.pop("temperature", 0.7),
        }
        payload.update({k: v for k, v in extra.items() if v is not None})
        return payload

    @classmethod
    def simple(
        cls,
        message: str = "Hello, respond briefly",
        model: str | None = None,
        max_tokens: int = 16,
        **extra: Any,
    ) -> dict[str, Any]:
        return cls._base([{"role": "user", "content": message}], model, max_tokens, **extra)

    @classmethod
    def with_system(
        cls,
        message: str = "Name three colours.",
        system: str = "You are a concise assistant.",
        model: str | None = None,
        max_tokens: int = 16,
        **extra: Any,
    ) -> dict[str, Any]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": message}]
        return cls._base(messages, model, max_tokens, **extra)

    @classmethod
    def streaming(
        cls,
        message: str = "Count from one to five.",
        model: str | None = None,
        max_tokens: int = 16,
        include_usage: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        payload = cls.simple(message, model, max_tokens, stream=True, **extra)
        if include_usage:
            payload["stream_options"] = {"include_usage": True}
        return payload

    @classmethod
    def orchestrated(
        cls,
        message: str = "Write a Python function that adds two numbers.",
        mode: str = "critique",
        model: str | None = None,
        max_tokens: int = 16,
        rounds: int | None = 1,
        generator: str | None = None,
        critic: str | None = None,
        models: list[str] | None = None,
        judge: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        orchestration = {
            "mode": mode,
            "rounds": rounds if mode == "critique" else None,
            "generator": generator,
            "critic": critic,
            "models": models,
            "judge": judge,
        }
        payload = cls._base([{"role": "user", "content": message}], model or PRESET, max_tokens, **extra)
        payload["orchestration"] = {k: v for k, v in orchestration.items() if v is not None}
        return payload

    @classmethod
    def code_task(
        cls,
        task: str = "reverse a string",
        language: str = "python",
        model: str | None = None,
        max_tokens: int = 32,
        **extra: Any,
    ) -> dict[str, Any]:
        messages = [
            {"role": "system", "content": f"You are an expert {language} programmer. Reply with code only."},
            {"role": "user", "content": f"Write a {language} function to {task}."},
        ]
        return cls._base(messages, model, max_tokens, **extra)


def answer_text(data: dict[str, Any], allow_reasoning: bool = False) -> str:
    message = data["choices"][0]["message"]
    text = message.get("content") or ""
    if allow_reasoning and not text:
        text = message.get("reasoning_content") or ""
    return text


# ---------------------------------------------------------------- request outcomes (load, faults)

DONE_EVENT = "data: [DONE]\n\n"
# Outcome kinds. Tests decide which are acceptable: a load test wants only "ok" and 429 "rejected",
# a fault test also accepts "stream_error" and 503 "rejected".
OK, STREAM_ERROR, INCOMPLETE, REJECTED, ERROR_RESPONSE, BAD_BODY, TIMEOUT, CONNECTION_ERROR = (
    "ok",
    "stream_error",
    "incomplete",
    "rejected",
    "error_response",
    "bad_body",
    "timeout",
    "connection_error",
)


def valid_retry_after(value: str | None) -> bool:
    """RFC 9110 Retry-After: delay-seconds or an HTTP date."""
    if not value:
        return False
    value = value.strip()
    if value.isascii() and value.isdigit():
        return True
    from email.utils import parsedate_to_datetime

    try:
        parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return True


def openai_error(body: Any) -> dict[str, Any] | None:
    """The inner object of an OpenAI error body {"error": {"message", "type", "param", "code"}}, or None."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    if not (isinstance(error.get("message"), str) and error["message"]):
        return None
    if not (isinstance(error.get("type"), str) and error["type"]):
        return None
    return error


@dataclass
class Outcome:
    """How one HTTP request ended, classified; `detail` says why when it is not "ok"."""

    kind: str
    status: int | None = None
    detail: str = ""
    retry_after: str | None = None
    error: dict[str, Any] | None = None
    seconds: float = 0.0
    usage: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind}({self.status}, {self.seconds:.1f}s): {self.detail}"[:400]


# SSE ends lines at CRLF, LF or CR only (WHATWG HTML, "Parsing an event stream"). str.splitlines()
# also splits at U+0085, U+2028, U+2029 and others, which JSON may carry raw inside strings.
_SSE_LINE_END = re.compile(r"\r\n|\r|\n")


class UndecodableEvent(ValueError):
    def __init__(self, data: str, cause: Exception):
        super().__init__(f"{cause}; event data {data[:2000]!r}")
        self.data = data


def sse_event_data(raw: str) -> list[str]:
    """The `data` of each event of an SSE body, as the SSE spec parses it: an event's data lines are
    joined with LF, a blank line dispatches the event, one space after the colon is dropped."""
    events: list[str] = []
    data: list[str] = []
    for line in _SSE_LINE_END.split(raw):
        if line == "":
            if data:
                events.append("\n".join(data))
                data = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    return events  # an event not ended by a blank line is incomplete and dropped, as the spec says


def _sse_events(raw: str) -> list[Any]:
    events: list[Any] = []
    for data in sse_event_data(raw):
        if data == "[DONE]":
            events.append("[DONE]")
            continue
        try:
            events.append(json.loads(data))
        except ValueError as exc:
            raise UndecodableEvent(data, exc) from None
    return events


def classify_stream(raw: str, max_tokens: int | None = None, n: int = 1) -> Outcome:
    """A 200 SSE body: "ok" (complete, one finish_reason per choice, usage within max_tokens),
    "stream_error" (an OpenAI error event, then [DONE]) or "incomplete" (anything else)."""
    if not raw.endswith(DONE_EVENT):
        return Outcome(INCOMPLETE, 200, f"does not end with [DONE]: {raw[-200:]!r}")
    try:
        events = _sse_events(raw)
    except ValueError as exc:
        return Outcome(INCOMPLETE, 200, f"undecodable event ({exc}): {raw[-200:]!r}")
    if events.count("[DONE]") != 1 or not all(isinstance(e, dict) for e in events[:-1]):
        return Outcome(INCOMPLETE, 200, f"bad event sequence: {raw[-300:]!r}")
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    if errors:
        error = openai_error(errors[0])
        if len(errors) != 1 or events[-2] is not errors[0] or error is None:
            return Outcome(INCOMPLETE, 200, f"malformed error event: {raw[-300:]!r}")
        return Outcome(STREAM_ERROR, 200, json.dumps(error), error=error)
    chunks = [e for e in events if isinstance(e, dict)]
    finishes: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                finishes.setdefault(choice.get("index", 0), []).append(choice["finish_reason"])
    if sorted(finishes) != list(range(n)) or any(
        len(f) != 1 or f[0] not in ("stop", "length") for f in finishes.values()
    ):
        return Outcome(INCOMPLETE, 200, f"finish reasons {finishes} for n={n}")
    usage = next((c["usage"] for c in reversed(chunks) if c.get("usage")), None)
    if usage is not None:
        completion = usage.get("completion_tokens")
        if not isinstance(completion, int) or completion < 0:
            return Outcome(INCOMPLETE, 200, f"bad usage {usage}")
        if max_tokens is not None and completion > max_tokens * n:
            return Outcome(INCOMPLETE, 200, f"usage {usage} exceeds max_tokens {max_tokens} x n {n}")
    return Outcome(OK, 200, usage=usage)


def classify_response(status: int, headers: httpx.Headers, raw: str) -> Outcome:
    """A non-200 answer: "rejected" (OpenAI error with a valid Retry-After), "error_response"
    (OpenAI error without one) or "bad_body" (not an OpenAI error object)."""
    try:
        error = openai_error(json.loads(raw))
    except ValueError:
        error = None
    retry_after = headers.get("retry-after")
    if error is None:
        return Outcome(BAD_BODY, status, f"not an OpenAI error object: {raw[:200]!r}", retry_after)
    kind = REJECTED if valid_retry_after(retry_after) else ERROR_RESPONSE
    return Outcome(kind, status, json.dumps(error)[:300], retry_after, error)


async def request_outcome(
    http: httpx.AsyncClient,
    path: str,
    payload: dict[str, Any],
    *,
    total_timeout: float = STREAM_TIMEOUT,
    first_chunk: asyncio.Event | None = None,
) -> Outcome:
    """POST `payload` (streaming or not), read the whole answer within `total_timeout`, classify it.

    `first_chunk` is set when the first body bytes of a 200 arrive (or when the request ends), so a
    caller can act while streams are in flight."""
    started = time.monotonic()
    max_tokens = payload.get("max_tokens") or payload.get("max_completion_tokens")
    n = payload.get("n") or 1

    async def read() -> Outcome:
        async with http.stream("POST", path, json=payload) as response:
            parts: list[bytes] = []
            async for part in response.aiter_bytes():
                parts.append(part)
                if first_chunk is not None and response.status_code == 200:
                    first_chunk.set()
            raw = b"".join(parts).decode("utf-8", errors="replace")
        if response.status_code != 200:
            return classify_response(response.status_code, response.headers, raw)
        if payload.get("stream"):
            return classify_stream(raw, max_tokens, n)
        try:
            usage = json.loads(raw)["usage"]
        except (ValueError, KeyError, TypeError):
            return Outcome(INCOMPLETE, 200, f"undecodable 200 body: {raw[:200]!r}")
        return Outcome(OK, 200, usage=usage)

    try:
        outcome = await asyncio.wait_for(read(), total_timeout)
    except (TimeoutError, httpx.TimeoutException) as exc:
        outcome = Outcome(TIMEOUT, None, f"no complete answer within {total_timeout:.0f}s ({exc!r})")
    except httpx.TransportError as exc:
        outcome = Outcome(CONNECTION_ERROR, None, repr(exc))
    finally:
        if first_chunk is not None:
            first_chunk.set()
    outcome.seconds = time.monotonic() - started
    return outcome
