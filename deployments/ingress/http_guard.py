"""Pure-ASGI middleware in front of every route: request ids, API keys and body size.

It is ASGI rather than Starlette's BaseHTTPMiddleware so that streamed responses pass through
untouched and a client disconnect reaches the model call as a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.trace import Span, Tracer
from starlette.exceptions import HTTPException

from deployments.ingress.tenancy.keys import KeyTable, Principal, Role
from deployments.ingress.tenancy.quota import Admission, Quota, current_admission
from serve_app.draining import InflightRequests
from serve_app.errors import (
    PayloadTooLarge,
    PermissionDenied,
    ServiceError,
    Unauthorized,
    log_internal,
    restarting,
    to_service_error,
)
from serve_app.metrics import NoMetrics, NoTenantMetrics, RequestMetrics, TenantMetrics
from serve_app.tracing import ended

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")
METERED_ROUTES = ("/v1/chat/completions", "/v1/completions")
OPEN_PATHS = ("/health", "/-/")


@dataclass(frozen=True)
class KeyPolicy:
    """Fixed API keys (tests, tools): /v1/* needs one of `api_keys`; load/unload need one of
    `admin_keys` when set. Production uses `KeyRing`, which adds the reloadable keys file."""

    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()

    @staticmethod
    def from_env_values(api: str | None, admin: str | None) -> KeyPolicy:
        def split(value: str | None) -> tuple[str, ...]:
            return tuple(k.strip() for k in (value or "").split(",") if k.strip())

        return KeyPolicy(split(api), split(admin))

    def current(self) -> KeyTable:
        return KeyTable.build(",".join(self.api_keys), ",".join(self.admin_keys))


class KeySource(Protocol):
    def current(self) -> KeyTable: ...


def authenticate(path: str, authorization: str | None, table: KeyTable) -> Principal | None:
    """Who sent the request (None: a route or deployment without keys). Raises 401 for a missing
    or unknown key, 403 for a valid non-admin key on load/unload."""
    if path.startswith(OPEN_PATHS) or not path.startswith("/v1/"):
        return None
    admin_route = path.endswith(("/load", "/unload"))
    required = table.has_admin_keys if admin_route else table.guards_inference
    scheme, _, token = (authorization or "").partition(" ")
    presented = token.strip() if scheme.lower() == "bearer" else ""
    principal = table.lookup(presented) if presented else None
    if not required:
        return principal
    if not presented:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
    if principal is None:
        raise Unauthorized("Incorrect API key provided.")
    if admin_route and principal.role != Role.admin:
        raise PermissionDenied(
            "This key may not load or unload models: the route needs an admin key.",
        )
    return principal


def check_key(path: str, authorization: str | None, policy: KeyPolicy) -> None:
    authenticate(path, authorization, policy.current())


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


def check_model_allowed(scope: Scope, model: str) -> None:
    """A key's `models` list (model ids or preset names) bounds what its requests may address."""
    principal: Principal | None = scope.get("state", {}).get("principal")
    if principal is not None and not principal.may_use(model):
        raise PermissionDenied(
            f"This key may not use '{model}'; it may use: {', '.join(principal.models or ())}.",
            param="model",
            code="model_not_allowed",
        )


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
        policy: KeySource,
        max_body_bytes: int,
        metrics: RequestMetrics | None = None,
        inflight: InflightRequests | None = None,
        quota: Quota | None = None,
        tenant_metrics: TenantMetrics | None = None,
        tracer: Tracer | None = None,
    ):
        self.app = app
        self.tracer = tracer
        self.policy = policy
        self.quota = quota
        self.tenant_metrics = tenant_metrics or NoTenantMetrics()
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
        # A client's id is used only if it is short and printable: it becomes the response id.
        inbound = headers.get(REQUEST_ID_HEADER)
        valid = inbound is not None and REQUEST_ID_PATTERN.fullmatch(inbound) is not None
        request_id = inbound if valid and inbound is not None else f"req-{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id

        started = time.perf_counter()
        status = 0
        admission: Admission | None = None
        principal: Principal | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [] if valid else [(REQUEST_ID_HEADER, request_id)]
                limits = admission.headers() if admission else self._snapshot_headers(principal)
                extra += [(k, v) for k, v in limits.items() if k.startswith("x-ratelimit")]
                if extra:
                    known = {k.lower() for k, _ in message.get("headers", [])}
                    message["headers"] = [
                        *message.get("headers", []),
                        *((k.encode(), v.encode()) for k, v in extra if k.encode() not in known),
                    ]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._record(scope, status, time.perf_counter() - started)

        path = route_path(scope)
        try:
            principal = authenticate(path, headers.get("authorization"), self.policy.current())
            if principal is not None:
                scope.setdefault("state", {})["principal"] = principal
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                raise PayloadTooLarge(f"Request body exceeds {self.max_body_bytes} bytes.")
            if self.quota is not None and path in METERED_ROUTES:
                try:
                    with ended(self._admission_span(principal)):
                        admission = await self.quota.admit(principal)
                except ServiceError:
                    raise
                except Exception as exc:  # the quota store unreachable: 503, never a bare 500
                    raise to_service_error(exc, request_id=request_id) from None
            with self.inflight.counted():
                token = current_admission.set(admission) if admission is not None else None
                try:
                    await self._until_cut(scope, self._limited(receive), send_with_id, lambda: status != 0)
                except asyncio.CancelledError:
                    # Ray is ending this replica's HTTP server under the request (its shutdown ran out
                    # of grace): answer if nothing was sent yet, or uvicorn sends a plain-text 500.
                    if status == 0:
                        await _answer_while_cancelled(scope, send_with_id)
                    raise
                finally:
                    if token is not None:
                        current_admission.reset(token)
        except ServiceError as error:
            note_error(scope, error)
            await send_error(send_with_id, error)
        finally:
            if admission is not None:
                await admission.release()
                if admission.principal is not None:
                    self.tenant_metrics.tokens(admission.principal.tenant, admission.tokens)

    def _admission_span(self, principal: Principal | None) -> Span | None:
        """Waiting for admission: the key's rate limits (a round trip to the quota store when its
        lease is spent), a child of the request's HTTP span."""
        if self.tracer is None:
            return None
        tenant = principal.tenant if principal is not None else "anonymous"
        return self.tracer.start_span("admission", attributes={"inference.tenant": tenant})

    def _snapshot_headers(self, principal: Principal | None) -> dict[str, str]:
        return self.quota.snapshot_headers(principal) if self.quota is not None else {}

    async def _until_cut(
        self, scope: Scope, receive: Receive, send: Send, responding: Callable[[], bool]
    ) -> None:
        """Run the app; if this replica's drain budget runs out before the response has started, end
        the request with the cut's 503 (a started stream ends itself: routes.stream_response)."""
        app = asyncio.ensure_future(self.app(scope, receive, send))
        cut = asyncio.ensure_future(self.inflight.wait_cut())
        try:
            await asyncio.wait({app, cut}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            app.cancel()  # the request itself is being cancelled: so is the work behind it
            raise
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
        principal = state.get("principal")
        if principal is not None:
            code = state.get("stream_error") or (state.get("error_code") if status >= 400 else None)
            self.tenant_metrics.request(principal.tenant, status, code)


async def _answer_while_cancelled(scope: Scope, send: Send) -> None:
    error = restarting("the service's ingress replica is shutting down", "service_restarting")
    note_error(scope, error)
    with contextlib.suppress(Exception):
        await send_error(send, error)


async def send_error(send: Send, error: ServiceError) -> None:
    body = json.dumps(error.body().model_dump()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
