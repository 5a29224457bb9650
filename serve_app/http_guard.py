"""Pure-ASGI middleware in front of every route: request ids, API keys and body size.

It is ASGI rather than Starlette's BaseHTTPMiddleware so that streamed responses pass through
untouched and a client disconnect reaches the model call as a cancellation.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException

from serve_app.draining import InflightRequests
from serve_app.errors import PayloadTooLarge, ServiceError, Unauthorized, log_internal
from serve_app.metrics import NoMetrics, RequestMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "x-request-id"
API_KEY_ENV = "INFERENCE_API_KEY"
ADMIN_KEY_ENV = "INFERENCE_ADMIN_KEY"
REQUIRE_API_KEY_ENV = "INFERENCE_REQUIRE_API_KEY"
ALLOW_ANONYMOUS_ENV = "INFERENCE_ALLOW_ANONYMOUS"
OPEN_PATHS = ("/health", "/-/")


@dataclass(frozen=True)
class KeyPolicy:
    """API keys for /v1/*; admin keys, when set, are additionally required for load/unload."""

    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()

    @staticmethod
    def from_env_values(api: str | None, admin: str | None) -> KeyPolicy:
        def split(value: str | None) -> tuple[str, ...]:
            return tuple(k.strip() for k in (value or "").split(",") if k.strip())

        return KeyPolicy(split(api), split(admin))

    @staticmethod
    def from_env(env: Mapping[str, str]) -> KeyPolicy:
        """The policy from INFERENCE_API_KEY / INFERENCE_ADMIN_KEY, enforcing INFERENCE_REQUIRE_API_KEY.

        A deployment that sets INFERENCE_REQUIRE_API_KEY=1 (every rendered RayService does) refuses
        to start without an API key, unless INFERENCE_ALLOW_ANONYMOUS is "true": serving an open API
        must be an explicit choice, not the result of an empty or forgotten Secret.
        """
        policy = KeyPolicy.from_env_values(env.get(API_KEY_ENV), env.get(ADMIN_KEY_ENV))
        required = env.get(REQUIRE_API_KEY_ENV, "").strip() == "1"
        anonymous_ok = env.get(ALLOW_ANONYMOUS_ENV, "").strip().lower() == "true"
        if required and not policy.api_keys and not anonymous_ok:
            raise MissingApiKey(
                f"{REQUIRE_API_KEY_ENV}=1 but {API_KEY_ENV} is empty: put an api-key in the "
                f'inference-api-keys Secret, or opt out explicitly with allow-anonymous: "true" in it '
                "(docs/deploy-eks.md, step 9)"
            )
        return policy


class MissingApiKey(RuntimeError):
    """The deployment requires an API key and none is configured."""


def _matches(presented: str, keys: tuple[str, ...]) -> bool:
    # Compare against every key so timing reveals neither which key nor how much matched.
    result = False
    for key in keys:
        result |= hmac.compare_digest(presented.encode(), key.encode())
    return result


def check_key(path: str, authorization: str | None, policy: KeyPolicy) -> None:
    if path.startswith(OPEN_PATHS) or not path.startswith("/v1/"):
        return
    admin_route = path.endswith(("/load", "/unload"))
    required = policy.admin_keys if admin_route and policy.admin_keys else policy.api_keys
    if not required:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
    if not _matches(token.strip(), required):
        raise Unauthorized(
            "Incorrect API key provided."
            + (" This route needs the admin key." if admin_route and policy.admin_keys else "")
        )


def route_path(scope: Scope) -> str:
    """The path below the application's route prefix: the app may be mounted at /tight, say."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def note_error(scope: Scope, error: ServiceError, key: str = "error_code") -> None:
    """Remember the error code for the request's metrics row (`stream_error` for an error inside a
    started stream), and log its internal text."""
    state = scope.setdefault("state", {})
    state[key] = error.code or error.type
    log_internal(error, state.get("request_id", "-"))


def note_model(scope: Scope, model: str) -> None:
    scope.setdefault("state", {})["model"] = model


def route_label(path: str) -> str:
    # Bounded label values: model ids in paths are folded into a template.
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}" + (
            "/" + path.rsplit("/", 1)[1] if path.endswith(("/load", "/unload")) else ""
        )
    return path if path in KNOWN_ROUTES else "other"


KNOWN_ROUTES = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/health/ready"}


class HttpGuard:
    def __init__(
        self,
        app: ASGIApp,
        policy: KeyPolicy,
        max_body_bytes: int,
        metrics: RequestMetrics | None = None,
        inflight: InflightRequests | None = None,
    ):
        self.app = app
        self.policy = policy
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics or NoMetrics()
        self.inflight = inflight or InflightRequests()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        # Ray Serve's proxy puts its request id (the client's x-request-id if it sent one) in the
        # scope and on the response itself; only outside Ray does this middleware have to add it.
        inbound = headers.get(REQUEST_ID_HEADER)
        request_id = (inbound or f"req-{uuid.uuid4().hex}")[:128]
        scope.setdefault("state", {})["request_id"] = request_id

        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if inbound is None:
                    message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._record(scope, status, time.perf_counter() - started)

        try:
            check_key(route_path(scope), headers.get("authorization"), self.policy)
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                raise PayloadTooLarge(f"Request body exceeds {self.max_body_bytes} bytes.")
            with self.inflight.counted():
                await self._until_cut(scope, self._limited(receive), send_with_id, lambda: status != 0)
        except ServiceError as error:
            note_error(scope, error)
            await send_error(send_with_id, error)

    async def _until_cut(
        self, scope: Scope, receive: Receive, send: Send, responding: Callable[[], bool]
    ) -> None:
        """Run the app; if this replica's drain budget runs out before the response has started, end
        the request with the cut's 503 (a started stream ends itself: routes.stream_response)."""
        app = asyncio.ensure_future(self.app(scope, receive, send))
        cut = asyncio.ensure_future(self.inflight.wait_cut())
        try:
            await asyncio.wait({app, cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cut.cancel()
        if app.done() or responding():
            await app
            return
        app.cancel()
        await asyncio.gather(app, return_exceptions=True)
        if responding():  # the app answered while it was being cancelled
            return
        raise cut.result()

    def _limited(self, receive: Receive) -> Receive:
        """Enforce the body limit on bodies sent without Content-Length (chunked) as they arrive."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # FastAPI re-raises HTTPException from body parsing; the 413 handler renders it.
                    raise HTTPException(status_code=413)
            return message

        return limited_receive

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        state = scope.get("state", {})
        model = state.get("model", "none")
        self.metrics.request_finished(model, route_label(route_path(scope)), status, seconds)
        if status >= 400:
            self.metrics.error(model, status, state.get("error_code", "unknown"))
        elif "stream_error" in state:
            self.metrics.error(model, 200, state["stream_error"])


async def send_error(send: Send, error: ServiceError) -> None:
    body = json.dumps(error.body().model_dump()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
