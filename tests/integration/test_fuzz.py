"""Property-based fuzzing of /v1/chat/completions and /v1/completions (portable HTTP, hypothesis).

Bodies mix valid and invalid prompts (empty, one character, unicode, control characters, up to ~5000
characters, special-token text) and parameters inside and outside their ranges (temperature, top_p,
max_tokens incl. 0/-1/huge, n, stop, seed, logprobs/top_logprobs, penalties, logit_bias with odd keys
and values, vLLM's extensions), unknown fields and wrong types. Whatever the body:

* the status is never 5xx;
* a 4xx body is an OpenAI error object, without internal text;
* a 200 is a well-formed completion (or a complete SSE stream ending with [DONE]) whose
  completion_tokens stay within max_tokens (x n x prompts) when max_tokens was given;
* afterwards the service answers an ordinary request and every engine is still ready.

The very first requests are the raw very-short prompts ("a", "Hi", token ids [5]) on /v1/completions:
a 1-token first batch is what used to kill CPU engines with SIGILL (README "The short-prompt SIGILL").

Inputs that once hit product bugs are pinned by the regression tests at the end of this file. Bodies are
sent as JSON text with `ensure_ascii` escapes and NaN/Infinity allowed, as a sloppy client would.
FUZZ_MAX_EXAMPLES (60) sets the number of generated bodies per endpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .support import (
    BASE_URL,
    OK,
    STREAM_ERROR,
    TEST_TIMEOUT,
    auth_headers,
    classify_stream,
    ensure_service,
    fetch_models,
    http_timeout,
    openai_error,
)
from .validators import ResponseValidator

pytestmark = [pytest.mark.integration, pytest.mark.requires_model, pytest.mark.slow]

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)
MISSING: Any = object()  # a key left out of the body
SHORT_PROMPTS: list[Any] = ["a", "Hi", [5]]
# Internal text: tracebacks, Ray's wrappers, and raw engine exceptions (vLLM's class names, an
# exception's repr, its modules and internal types), which the service logs but never sends.
LEAK = re.compile(
    r"Traceback|File \"|site-packages|RayTaskError|\(pid=\d+|ray::"
    r"|VLLM\w*Error|\b(?:Value|Type|Key|Attribute|Runtime)Error\(|\bvllm\.|SamplingParams|EngineCore"
)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    ensure_service()
    with httpx.Client(
        base_url=BASE_URL, headers=auth_headers(), timeout=http_timeout(TEST_TIMEOUT)
    ) as client:
        yield client


@pytest.fixture(scope="module")
def ready_models(http: httpx.Client) -> list[str]:
    models = [c["id"] for c in fetch_models()["data"] if c.get("status") == "ready"]
    if not models:
        pytest.skip("No models loaded in inference service")
    return models


def assert_healthy(http: httpx.Client, models: list[str]) -> None:
    """Every engine that was ready still is, and each answers an ordinary request."""
    cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    not_ready = {
        m: cards.get(m, {}).get("status") for m in models if cards.get(m, {}).get("status") != "ready"
    }
    assert not not_ready, f"engines no longer ready after fuzzing: {not_ready}"
    for model in models:
        body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, (
            f"{model} after fuzzing: {response.status_code} {response.text[:300]}"
        )
        ResponseValidator.validate_completion(response.json(), max_tokens=4)


# ---------------------------------------------------------------- checking one body


def _as_int(value: Any) -> int | None:
    """What pydantic's lax mode makes of an int field (None: not an int we can reason about)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return None


def _prompt_count(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


def _describe(body: dict[str, Any]) -> str:
    text = json.dumps(body, allow_nan=True)
    return text if len(text) < 400 else text[:300] + f"... ({len(text)} chars)"


def send(http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    content = json.dumps(body, allow_nan=True).encode()  # ensure_ascii: odd text travels as \u escapes
    return http.post(path, content=content, headers={"content-type": "application/json"})


STATS: Counter[str] = Counter()


def check(http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    response = send(http, path, body)
    STATS[f"{path} {response.status_code}"] += 1
    where = f"POST {path} {_describe(body)} -> {response.status_code}"
    assert response.status_code < 500, f"{where}: {response.text[:300]}"
    if response.status_code >= 400:
        try:
            error = openai_error(response.json())
        except ValueError:
            error = None
        assert error is not None, f"{where}: not an OpenAI error object: {response.text[:300]}"
        assert "param" in error and "code" in error, f"{where}: {error}"
        assert not LEAK.search(response.text), f"{where}: internal text leaked: {response.text[:500]}"
        return response
    assert response.status_code == 200, f"{where}: {response.text[:300]}"
    obj = "chat.completion" if path.endswith("chat/completions") else "text_completion"
    n = _as_int(body.get("n", 1))
    choices = (n or 1) * _prompt_count(body)
    limit = body.get("max_tokens", body.get("max_completion_tokens", MISSING))
    max_tokens = None if limit is MISSING else _as_int(limit)
    orchestration = body.get("orchestration")
    # A pipeline's usage is the sum of its steps; each step is bounded by max_tokens instead.
    pipeline = isinstance(orchestration, dict) and orchestration.get("mode") in ("critique", "ensemble")
    total_limit = None if pipeline else max_tokens
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        outcome = classify_stream(response.text, total_limit, choices)
        if pipeline and outcome.kind == STREAM_ERROR and outcome.error:
            # README: a failing pipeline step ends the stream with an error event and [DONE] (e.g. a
            # critic prompt, task + draft, outgrowing the context). It must be a client-class error.
            assert outcome.error.get("type") == "invalid_request_error", f"{where}: {outcome}"
            STATS["pipeline step error events"] += 1
            return response
        assert outcome.kind == OK, f"{where}: {outcome}"
        final = [line for line in response.text.splitlines() if '"orchestration":{' in line]
        info = json.loads(final[-1][len("data:") :])["orchestration"] if final else None
    else:
        data = response.json()
        ResponseValidator.validate_completion(data, n=choices, max_tokens=total_limit, obj=obj)
        info = data.get("orchestration")
    if pipeline:
        assert isinstance(info, dict) and info.get("steps"), f"{where}: no orchestration metadata"
        for step in info["steps"]:
            ResponseValidator.validate_usage(step["usage"], max_tokens=max_tokens)
    return response


# ---------------------------------------------------------------- strategies
#
# A body is a valid request (a random subset of the sampling parameters, each inside its range),
# then up to two corruptions: a parameter out of range or of the wrong type, a prompt or message
# list that is invalid, a required field dropped, an unknown field added. So about half the bodies
# are valid and exercise generation, and the rest probe validation one or two faults at a time.


def maybe(strategy: st.SearchStrategy[Any], missing_weight: int = 2) -> st.SearchStrategy[Any]:
    """The strategy, or (more often) the key left out."""
    return st.one_of(*([st.just(MISSING)] * missing_weight), strategy)


def _dict(**fields: Any) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(fields).map(lambda d: {k: v for k, v in d.items() if v is not MISSING})


weird = st.one_of(
    st.just(float("nan")),
    st.just(float("inf")),
    st.just(float("-inf")),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
control_text = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0, max_codepoint=0x1F),
        st.sampled_from("\x7f\x85\u2028\u2029\ufeff\u200b"),
    ),
    min_size=1,
    max_size=16,
)
long_text = st.builds(
    lambda piece, count: (piece * count)[:5000],
    st.text(min_size=1, max_size=12),
    st.integers(100, 5000),
)
special_text = st.sampled_from(
    [
        "a",
        "Hi",
        " ",
        "\n",
        "\x00",
        "<think>",
        "</think>",
        "<think>unfinished",
        "<|eot_id|>",
        "<|start_header_id|>system<|end_header_id|>",
        "{{ raise_exception('x') }}",
        "{% for x in range(10**9) %}{% endfor %}",
        "\U0001f600" * 50,
        "مرحبا بالعالم",
        "é" * 300,
    ]
)
text = st.one_of(
    st.text(min_size=1, max_size=1),
    st.text(min_size=1, max_size=80),
    control_text,
    long_text,
    special_text,
)
short_text = st.text(min_size=1, max_size=6)

token_ids = st.lists(st.integers(0, 464), min_size=1, max_size=8)
valid_prompt = st.one_of(
    text,
    text,
    st.lists(text, min_size=1, max_size=3),
    token_ids,
    st.lists(token_ids, min_size=1, max_size=3),
)
invalid_prompt = st.one_of(
    st.sampled_from(["", [], [""], [[]], ["a", ""]]),
    st.lists(st.just("x"), min_size=17, max_size=18),  # over the 16-prompt limit
    st.lists(st.sampled_from([-1, 465, 2**31, 2**63, 2**64]), min_size=1, max_size=3),
    st.lists(st.one_of(st.integers(), st.text(max_size=2)), min_size=2, max_size=3),  # mixed types
    weird,
)

valid_role = st.sampled_from(["user", "user", "user", "system", "developer", "assistant"])
valid_content = st.one_of(
    text,
    text,
    st.just(""),
    st.lists(_dict(type=st.just("text"), text=text), min_size=1, max_size=3),
)
valid_message = _dict(role=valid_role, content=valid_content, name=maybe(st.text(max_size=8), 6))
valid_messages = st.lists(valid_message, min_size=1, max_size=4)
invalid_message = st.one_of(
    _dict(role=st.sampled_from(["tool", "function", "wizard", "", "USER"]) | st.integers(), content=text),
    _dict(role=valid_role, content=st.integers() | st.dictionaries(st.text(max_size=2), st.text(max_size=2))),
    _dict(role=valid_role, content=st.just([{"type": "image_url", "image_url": {"url": "x"}}])),
    _dict(role=valid_role, content=text, tool_calls=st.just([])),
    _dict(content=text),
    st.text(max_size=4),
    st.none(),
)
invalid_messages = st.one_of(
    st.tuples(valid_messages, invalid_message).map(lambda pair: [*pair[0], pair[1]]),
    st.just([]),
    st.builds(lambda m: [m] * 257, valid_message),  # over the 256-message limit
    weird,
)

valid_bias = st.dictionaries(st.integers(0, 464).map(str), st.floats(-100, 100), max_size=4)
bias_key = st.one_of(
    st.integers(0, 600).map(str),
    st.sampled_from(["-1", "abc", "", "\uff11", "\u0663", "99999999999999999999", " 1", "1.5", "0x10"]),
    st.text(max_size=3),
)
invalid_bias = st.one_of(
    st.dictionaries(
        bias_key, st.one_of(st.floats(-150, 150), st.integers(-200, 200), weird), min_size=1, max_size=4
    ),
    weird,
)
valid_max_tokens = st.integers(1, 48)
invalid_max_tokens = st.one_of(
    st.sampled_from([0, -1, 2048, 2**31, 10**9, 2**63, 2**64]), st.floats(-5, 50), weird
)


def _param(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> tuple[Any, Any]:
    return valid, st.one_of(invalid, weird)


# name -> (valid values, anything else); shared by both endpoints.
SAMPLING: dict[str, tuple[Any, Any]] = {
    "temperature": _param(st.floats(0, 2), st.floats(-1, 3)),
    "top_p": _param(st.floats(0.01, 1), st.sampled_from([0, -0.1, 1.01, 2])),
    "n": _param(st.sampled_from([1, 1, 2, 3, 8]), st.sampled_from([0, -1, 9, 128, 129, "2", 2.0])),
    "stop": _param(
        st.one_of(short_text, st.lists(short_text, max_size=4)), st.sampled_from(["", [""], ["a"] * 5, 7])
    ),
    "seed": _param(st.integers(-(2**63), 2**64 - 1), st.sampled_from([-(2**63) - 1, 2**64, 1.5])),
    "presence_penalty": _param(st.floats(-2, 2), st.floats(-5, 5)),
    "frequency_penalty": _param(st.floats(-2, 2), st.floats(-5, 5)),
    "logit_bias": _param(valid_bias, invalid_bias),
    "top_k": _param(st.one_of(st.just(-1), st.integers(0, 464)), st.sampled_from([-2, 10**6, 2**63])),
    "min_tokens": _param(st.integers(0, 4), st.sampled_from([-1, 49, 1000, 100000])),
    "ignore_eos": _param(st.booleans(), st.sampled_from(["maybe", 2])),
    "repetition_penalty": _param(st.floats(0.01, 2), st.sampled_from([0, -1, 2.5, 100])),
    "user": _param(st.text(max_size=10), st.integers()),
    "metadata": _param(
        st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2), st.just({"a": 1})
    ),
    "stream": _param(st.booleans(), st.sampled_from(["yes", "true", 1, 2, "sometimes"])),
}
CHAT_ONLY: dict[str, tuple[Any, Any]] = {
    "max_completion_tokens": _param(valid_max_tokens, invalid_max_tokens),
    "logprobs": _param(st.booleans(), st.integers(-1, 6)),
    "top_logprobs": _param(st.integers(0, 20), st.sampled_from([-1, 21, 100])),
    "orchestration": _param(
        _dict(mode=st.sampled_from(["single", "critique", "ensemble"]), rounds=maybe(st.integers(1, 2))),
        _dict(mode=st.sampled_from(["bogus", ""]), rounds=st.integers(-1, 6)),
    ),
}
COMPLETION_ONLY: dict[str, tuple[Any, Any]] = {
    "logprobs": _param(st.integers(0, 5), st.sampled_from([-1, 6, 21, True])),
    "echo": _param(st.just(False), st.just(True)),
    "best_of": _param(st.just(1), st.sampled_from([0, 2, -1])),
}
UNKNOWN = ["frobnicate", "functions", "tools", "response_format", "min_p", "guided_json", "suffix", "Model"]


BAD_MODELS = ["no-such-model", "", "D4 ", "../etc/passwd", "gpt-4o", "QWEN2.5-7B", 7, None, ["qwen2.5-7b"]]


@st.composite
def request_bodies(draw: st.DrawFn, models: list[str], chat: bool) -> dict[str, Any]:
    params = {**SAMPLING, **(CHAT_ONLY if chat else COMPLETION_ONLY)}
    body: dict[str, Any] = {"model": draw(st.sampled_from(models)), "max_tokens": draw(valid_max_tokens)}
    if chat:
        body["messages"] = draw(valid_messages)
    else:
        body["prompt"] = draw(valid_prompt)
    for name in draw(st.lists(st.sampled_from(sorted(params)), unique=True, max_size=6)):
        body[name] = draw(params[name][0])
    # Keep the valid base consistent: options that only make sense together.
    if "top_logprobs" in body:
        body["logprobs"] = True
    if "max_completion_tokens" in body:
        body["max_tokens"] = body["max_completion_tokens"]
    if body.get("stream") and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    if "orchestration" in body:
        body["n"] = 1
        body.pop("logprobs", None)
        body.pop("top_logprobs", None)

    faults = ["model", "prompt", "max_tokens", "drop", "unknown", "stream_options", *params]
    for fault in draw(st.lists(st.sampled_from(faults), unique=True, max_size=2)):
        if fault == "model":
            body["model"] = draw(st.sampled_from(BAD_MODELS))
        elif fault == "prompt" and chat:
            body["messages"] = draw(invalid_messages)
        elif fault == "prompt":
            body["prompt"] = draw(invalid_prompt)
        elif fault == "max_tokens":
            body["max_tokens"] = draw(invalid_max_tokens)
        elif fault == "drop":
            body.pop(draw(st.sampled_from(["model", "messages" if chat else "prompt", "max_tokens"])), None)
        elif fault == "unknown":
            body[draw(st.sampled_from(UNKNOWN))] = draw(
                st.one_of(st.integers(), st.text(max_size=3), st.none())
            )
        elif fault == "stream_options":
            body["stream_options"] = draw(
                st.one_of(st.just({"include_usage": True}), st.just({"bogus": 1}), weird)
            )
        else:
            body[fault] = draw(params[fault][1])
    return body


# ---------------------------------------------------------------- tests


def test_very_short_prompts_first(http: httpx.Client, ready_models: list[str]) -> None:
    """Before any fuzzing: 1-2 token prompts, as text and as token ids, on every ready engine."""
    for model in ready_models:
        for short in SHORT_PROMPTS:
            for stream in (False, True):
                body: dict[str, Any] = {"model": model, "prompt": short, "max_tokens": 4, "stream": stream}
                response = check(http, "/v1/completions", body)
                assert response.status_code == 200, f"{model} {short!r}: {response.text[:300]}"
                if not stream:
                    assert response.json()["usage"]["prompt_tokens"] >= 1, response.json()
    assert_healthy(http, ready_models)


def test_fuzz_completions(http: httpx.Client, ready_models: list[str]) -> None:
    first = ready_models[0]

    @FUZZ
    @given(body=request_bodies(ready_models, chat=False))
    @example(body={"model": first, "prompt": "a", "max_tokens": 4})
    @example(body={"model": first, "prompt": "Hi", "max_tokens": 4})
    @example(body={"model": first, "prompt": [5], "max_tokens": 4})
    @example(body={"model": first, "prompt": [[5], "Hi"], "max_tokens": 4})
    @example(body={"model": first, "prompt": "Hi", "max_tokens": 0})
    @example(body={"model": first, "prompt": "Hi", "max_tokens": -1})
    @example(body={"model": first, "prompt": "Hi", "max_tokens": 2**64})
    def run(body: dict[str, Any]) -> None:
        check(http, "/v1/completions", body)

    STATS.clear()
    run()
    print(f"\n/v1/completions fuzz statuses: {dict(STATS)}")
    assert_healthy(http, ready_models)


def test_fuzz_chat_completions(http: httpx.Client, ready_models: list[str]) -> None:
    first = ready_models[0]
    hi = [{"role": "user", "content": "Hi"}]

    @FUZZ
    @given(body=request_bodies(ready_models, chat=True))
    @example(body={"model": first, "messages": [{"role": "user", "content": "a"}], "max_tokens": 4})
    @example(body={"model": first, "messages": [{"role": "user", "content": ""}], "max_tokens": 4})
    @example(
        body={"model": first, "messages": hi, "max_tokens": 4, "n": 8, "logprobs": True, "top_logprobs": 20}
    )
    @example(body={"model": first, "messages": hi, "max_tokens": 4, "temperature": float("nan")})
    @example(body={"model": first, "messages": hi, "max_tokens": 4, "logit_bias": {"abc": 1}})
    @example(body={"model": first, "messages": hi, "max_tokens": 4, "seed": 2**64 - 1})
    @example(
        body={"model": first, "messages": hi, "max_tokens": 4, "stop": ["a", "b", "c", "d"], "stream": True}
    )
    def run(body: dict[str, Any]) -> None:
        check(http, "/v1/chat/completions", body)

    STATS.clear()
    run()
    print(f"\n/v1/chat/completions fuzz statuses: {dict(STATS)}")
    assert_healthy(http, ready_models)


# ---------------------------------------------------------------- known bugs, pinned


def _expect_400(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = send(http, path, body)
    assert response.status_code == 400, f"{response.status_code}: {response.text[:300]}"
    error = openai_error(response.json())
    assert error is not None and error["type"] == "invalid_request_error", response.text[:300]
    return error


def test_unicode_digit_logit_bias_key_is_400(http: httpx.Client, ready_models: list[str]) -> None:
    body = {"model": ready_models[0], "prompt": "Hi", "max_tokens": 2, "logit_bias": {"\u00b2": 1}}
    error = _expect_400(http, "/v1/completions", body)
    assert error["param"] == "logit_bias", error


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_lone_surrogate_is_400(http: httpx.Client, ready_models: list[str], path: str) -> None:
    body: dict[str, Any] = {"model": ready_models[0], "max_tokens": 2}
    if path == "/v1/completions":
        body["prompt"] = "abc\ud800def"
    else:
        body["messages"] = [{"role": "user", "content": "abc\ud800def"}]
    _expect_400(http, path, body)


def test_engine_side_validation_error_is_400(http: httpx.Client, ready_models: list[str]) -> None:
    body = {"model": ready_models[0], "messages": [{"role": "user", "content": "Hi"}], "min_tokens": 100_000}
    _expect_400(http, "/v1/chat/completions", body)
