"""serve_app/errors.py: every failure becomes one OpenAI error object with the right status."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError
from ray import exceptions as ray_exceptions
from ray.serve import exceptions as serve_exceptions
from ray.serve._private.common import DeploymentID

from serve_app import errors
from serve_app.errors import (
    ContextLengthExceeded,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    ServiceError,
    ServiceUnavailable,
    UpstreamTimeout,
    to_service_error,
)
from serve_app.protocol import ChatCompletionRequest, ErrorResponse


def _all_subclasses(cls: type) -> list[type]:
    found: list[type] = []
    sub: type
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


SERVICE_ERRORS = [ServiceError, *_all_subclasses(ServiceError)]


def test_every_error_class_is_covered() -> None:
    names = {cls.__name__ for cls in SERVICE_ERRORS}
    assert {
        "InvalidRequest",
        "ContextLengthExceeded",
        "ModelNotFound",
        "Overloaded",
        "UpstreamTimeout",
    } <= names


@pytest.mark.parametrize("cls", SERVICE_ERRORS, ids=[cls.__name__ for cls in SERVICE_ERRORS])
def test_service_errors_survive_pickling_with_param_and_code(cls: type[ServiceError]) -> None:
    error = cls("something specific went wrong", param="messages.0.content", code="custom_code")
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is cls
    assert clone.message == "something specific went wrong"
    assert clone.param == "messages.0.content"
    assert clone.code == "custom_code"
    assert clone.status == cls.status
    assert clone.body() == error.body()
    assert clone.headers() == error.headers()


def test_pickled_error_keeps_its_class_default_code() -> None:
    clone = pickle.loads(pickle.dumps(ContextLengthExceeded("too long", param="max_tokens")))
    assert (clone.code, clone.param, clone.status) == ("context_length_exceeded", "max_tokens", 400)


def test_body_is_an_openai_error_object() -> None:
    body = ModelNotFound("no such model", param="model").body()
    assert isinstance(body, ErrorResponse)
    assert body.model_dump() == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_retry_after_only_on_capacity_errors() -> None:
    assert Overloaded("busy").headers() == {"Retry-After": "2"}
    assert ServiceUnavailable("down").headers() == {"Retry-After": "5"}
    assert InvalidRequest("bad").headers() == {}
    assert UpstreamTimeout("slow").status == 504


def test_backpressure_becomes_429_with_retry_after() -> None:
    exc = serve_exceptions.BackPressureError(
        num_queued_requests=1, max_queued_requests=1, status_code=429, retry_after_s=3
    )
    error = to_service_error(exc)
    assert isinstance(error, Overloaded)
    assert error.status == 429 and error.type == "rate_limit_error"
    assert error.headers() == {"Retry-After": "3"}


def test_backpressure_retry_after_rounds_up_to_whole_seconds() -> None:
    exc = serve_exceptions.BackPressureError(
        num_queued_requests=5, max_queued_requests=4, status_code=429, retry_after_s=2.2
    )
    assert to_service_error(exc).headers() == {"Retry-After": "3"}
    no_hint = serve_exceptions.BackPressureError(
        num_queued_requests=5, max_queued_requests=4, status_code=429
    )
    assert to_service_error(no_hint).headers() == {"Retry-After": "2"}


def test_backpressure_keeps_the_configured_503() -> None:
    exc = serve_exceptions.BackPressureError(
        num_queued_requests=1, max_queued_requests=1, status_code=503, retry_after_s=1
    )
    assert to_service_error(exc).status == 503


@pytest.mark.parametrize("exc", [TimeoutError("deadline"), TimeoutError()], ids=["builtin", "asyncio"])
def test_timeouts_become_504(exc: BaseException) -> None:
    error = to_service_error(exc)
    assert isinstance(error, UpstreamTimeout) and error.status == 504 and error.code == "timeout"


def test_unexpected_errors_are_500s_that_leak_nothing(caplog: pytest.LogCaptureFixture) -> None:
    error = to_service_error(RuntimeError("secret internal detail"), request_id="req-42")
    assert isinstance(error, InternalError)
    assert error.status == 500 and error.type == "internal_error"
    assert "secret" not in error.message and "internal detail" not in error.message
    assert "secret" not in error.body().model_dump_json()
    assert "req-42" in error.message
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert logged, "the traceback of an unexpected error must be logged"


def test_service_errors_pass_through_unchanged() -> None:
    original = InvalidRequest("bad n", param="n")
    assert to_service_error(original) is original


def test_validation_errors_become_invalid_request() -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"model": "m", "messages": [], "n": 1})
    error = to_service_error(caught.value)
    assert isinstance(error, InvalidRequest) and error.param == "messages"


def test_ray_task_error_is_unwrapped_to_its_cause() -> None:
    wrapped = ray_exceptions.RayTaskError("chat_completion", "traceback", InvalidRequest("bad", param="n"))
    error = to_service_error(wrapped)
    assert isinstance(error, InvalidRequest) and error.param == "n"
    # What a handle call actually raises: a RayTaskError that is also an instance of the cause's class.
    dual = wrapped.as_instanceof_cause()
    assert isinstance(dual, ServiceError)
    assert (to_service_error(dual).status, to_service_error(dual).param) == (400, "n")


def test_ray_task_error_around_an_unexpected_error_is_a_500() -> None:
    wrapped = ray_exceptions.RayTaskError("f", "traceback", KeyError("internal key"))
    error = to_service_error(wrapped)
    assert isinstance(error, InternalError) and "internal key" not in error.message


def test_dead_replicas_and_missing_deployments_are_503s() -> None:
    for exc in (serve_exceptions.ReplicaUnavailableError("replica-1"), ray_exceptions.RayActorError()):
        error = to_service_error(exc)
        assert (error.status, error.code) == (503, "replica_died")
        assert error.headers() == {"Retry-After": "5"}
    missing = serve_exceptions.DeploymentUnavailableError(DeploymentID(name="qwen2.5-7b", app_name="default"))
    assert (to_service_error(missing).status, to_service_error(missing).code) == (
        503,
        "deployment_unavailable",
    )


def test_engine_death_is_a_503_by_class_name() -> None:
    class EngineDeadError(Exception):
        pass

    error = to_service_error(EngineDeadError("engine core died"))
    assert (error.status, error.code) == (503, "engine_dead")


def test_invalid_request_from_handles_fastapi_body_locations() -> None:
    error = errors.invalid_request_from(
        [{"type": "greater_than", "loc": ("body", "top_p"), "msg": "Input should be greater than 0"}]
    )
    assert error.param == "top_p" and error.message == "top_p: Input should be greater than 0"


def test_internal_text_is_logged_never_sent(caplog: pytest.LogCaptureFixture) -> None:
    import pickle

    from serve_app.errors import InvalidRequest, log_internal

    error = InvalidRequest("The engine rejected top_k.", param="top_k", internal="ValueError: top_k=-7 < -1")
    body = error.body().model_dump_json()
    assert "-7" not in body and "ValueError" not in body
    copy = pickle.loads(pickle.dumps(error))  # as Ray carries it across a handle call
    assert (copy.internal, copy.param, copy.code) == (error.internal, "top_k", error.code)
    with caplog.at_level("WARNING", logger="ray.serve"):
        log_internal(copy, "req-9")
    assert "req-9" in caplog.text and "top_k=-7" in caplog.text
