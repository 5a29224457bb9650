"""Every failure becomes one OpenAI error object, here and nowhere else.

Service errors carry their status, type and code. Ray's own failures (backpressure, a dead replica,
an unavailable deployment) are translated to 429/503 with Retry-After. Anything else is a bug: it is
logged with its traceback and the client sees a generic 500 that leaks no internal text.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

logger = logging.getLogger("ray.serve")


class ErrorDetail(BaseModel):
    """OpenAI's error object (also re-exported by serve_app.protocol, with the other wire models)."""

    model_config = ConfigDict(extra="ignore")
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    error: ErrorDetail


class ServiceError(Exception):
    status = 500
    type = "internal_error"
    code: str | None = "internal_error"
    retry_after_s: int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        internal: str | None = None,
    ):
        """`message` is what the client reads; `internal` (an engine's own exception text, say) is
        only logged, with the request id, where the error becomes a response (`log_internal`)."""
        super().__init__(message)
        self.message = message
        self.param = param
        self.internal = internal
        if code is not None:
            self.code = code

    def body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        )

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep param/code/retry-after when Ray pickles the error across a handle call.
        return (
            _rebuild,
            (type(self), self.message, self.param, self.code, self.retry_after_s, self.internal),
        )


def fresh(error: ServiceError) -> ServiceError:
    """A new instance of a stored error, to raise once: raising one stored instance for every
    request would chain each raise's frames onto its traceback."""
    return _rebuild(type(error), error.message, error.param, error.code, error.retry_after_s, error.internal)


def _rebuild(
    cls: type[ServiceError],
    message: str,
    param: str | None,
    code: str | None,
    retry_after_s: int | None,
    internal: str | None = None,
) -> ServiceError:
    error = cls(message, param=param, code=code, internal=internal)
    error.retry_after_s = retry_after_s
    return error


class InvalidRequest(ServiceError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(ServiceError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ServiceError):
    status = 403
    type = "permission_error"
    code = "insufficient_permissions"


class ModelNotFound(ServiceError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(ServiceError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ServiceError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ModelNotLoaded(ServiceError):
    status = 409
    type = "invalid_request_error"
    code = "model_not_loaded"


class PayloadTooLarge(ServiceError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class Overloaded(ServiceError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"
    retry_after_s = 2


class ServiceUnavailable(ServiceError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"
    retry_after_s = 5


class RequestAborted(ServiceUnavailable):
    """The engine stopped a request before it finished (vLLM's finish reason "abort", which is not
    OpenAI's): the replica turns it into the reason it stopped the request, if it did."""

    code = "request_aborted"


def restarting(what: str, code: str, retry_after_s: int = 5) -> ServiceUnavailable:
    """The error that ends a request still open when its replica's drain budget runs out."""
    error = ServiceUnavailable(
        f"The request was stopped because {what}; nothing more will be sent. "
        f"Retry in {retry_after_s} s; another replica will serve it.",
        code=code,
    )
    error.retry_after_s = retry_after_s
    return error


class UpstreamTimeout(ServiceError):
    status = 504
    type = "timeout_error"
    code = "timeout"


class InternalError(ServiceError):
    """A bug. The message is generic on purpose; the traceback goes to the log."""


# Pydantic puts union-branch tags ("str", "function-after[...]") into error locations.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "body"}


def _is_field(part: object) -> bool:
    return isinstance(part, int) or (
        isinstance(part, str) and re.fullmatch(r"[A-Za-z_]\w*", part) is not None and part not in _TYPE_TAGS
    )


def invalid_request_from(errors: Sequence[Any]) -> InvalidRequest:
    """The first of pydantic's (or FastAPI's) validation errors, as an OpenAI 400 naming the param."""
    first = errors[0]
    kind = first.get("type")
    if kind == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.", code="invalid_json")
    param = ".".join(str(part) for part in first.get("loc", ()) if _is_field(part)) or None
    if kind == "extra_forbidden":
        return InvalidRequest(
            f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter"
        )
    if kind == "missing" and param is None:
        return InvalidRequest("The request body is missing.", code="missing_body")
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: {param}", param=param, code="missing_required_parameter"
        )
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidRequest(f"{param}: {message}" if param else message, param=param)


def to_service_error(exc: BaseException, *, request_id: str = "-") -> ServiceError:
    """Translate any exception, including Ray's wrapped ones, to the error the client should see."""
    from ray import exceptions as ray_exceptions
    from ray.serve import exceptions as serve_exceptions

    # Ray wraps a replica's exception in a RayTaskError that also subclasses the original class,
    # but with class defaults (code, param): the cause is the error that was actually raised.
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray_exceptions.RayTaskError) and isinstance(cause, BaseException) and cause is not exc:
        return to_service_error(cause, request_id=request_id)
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ValidationError):
        return invalid_request_from(exc.errors())
    if isinstance(exc, serve_exceptions.BackPressureError):
        message = "The model's queue is full; retry after a short wait."
        error: ServiceError = (
            Overloaded(message) if exc.status_code == 429 else ServiceUnavailable(message, code="overloaded")
        )
        if exc.retry_after_s is not None:
            error.retry_after_s = max(1, int(exc.retry_after_s + 0.999))
        return error
    if isinstance(exc, serve_exceptions.DeploymentUnavailableError):
        return ServiceUnavailable("The model deployment is unavailable.", code="deployment_unavailable")
    if isinstance(exc, ray_exceptions.RayActorError | serve_exceptions.ReplicaUnavailableError):
        return ServiceUnavailable(
            "The model replica died while serving this request; Ray is replacing it. Retry shortly.",
            code="replica_died",
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return UpstreamTimeout("The model did not answer in time.")
    if _is_engine_dead(exc):
        return ServiceUnavailable(
            "The model's engine stopped; its replica is being replaced. Retry shortly.",
            code="engine_dead",
        )
    logger.error("request %s failed with an unexpected error", request_id, exc_info=exc)
    return InternalError(f"Internal error while serving request {request_id}.")


def log_internal(error: ServiceError, request_id: str) -> None:
    """Log what the client was not told: the internal text behind a public error message."""
    if error.internal:
        logger.warning(
            "request %s answered %s (%s): %s", request_id, error.status, error.code, error.internal
        )


def _is_engine_dead(exc: BaseException) -> bool:
    return type(exc).__name__ in {"EngineDeadError", "EngineGenerateError"}
