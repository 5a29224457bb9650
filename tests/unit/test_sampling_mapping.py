"""One place maps a request onto engine sampling (`SamplingFields.to_sampling_spec`). Every request
field is either read by it (SAMPLING, OUTPUT_LIMIT) or named in NOT_SAMPLING with where it is
handled: a new field that is neither fails here. Each field said to be mapped must change the spec."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.ingress.orchestration.pipeline import INHERITED_FIELDS, VERDICT_INHERITED_FIELDS
from serve_app.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields

REQUESTS: list[type[SamplingFields]] = [ChatCompletionRequest, CompletionRequest]
# A value other than the default for each mapped field.
CHANGED: dict[str, Any] = {
    "temperature": 0.5,
    "top_p": 0.5,
    "n": 2,
    "stop": ["x"],
    "seed": 7,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "logit_bias": {"5": 1.0},
    "top_k": 5,
    "min_tokens": 1,
    "ignore_eos": True,
    "repetition_penalty": 1.5,
    "priority": 3,
    "max_tokens": 9,
    "max_completion_tokens": 9,
}


def _request(cls: type[SamplingFields], **fields: Any) -> SamplingFields:
    base: dict[str, Any] = {"model": "m"}
    base.update(
        {"messages": [{"role": "user", "content": "hi"}]}
        if cls is ChatCompletionRequest
        else {"prompt": "hi"}
    )
    return cls.model_validate({**base, **fields})


@pytest.mark.parametrize("cls", REQUESTS)
def test_every_field_is_mapped_or_named_elsewhere(cls: type[SamplingFields]) -> None:
    mapped = set(cls.SAMPLING) | set(cls.OUTPUT_LIMIT)
    elsewhere = set(cls.NOT_SAMPLING)
    assert not mapped & elsewhere, mapped & elsewhere
    unclassified = set(cls.model_fields) - mapped - elsewhere
    assert not unclassified, f"{cls.__name__} fields neither mapped nor named in NOT_SAMPLING: {unclassified}"
    assert not (mapped | elsewhere) - set(cls.model_fields), "classified fields that do not exist"


@pytest.mark.parametrize("cls", REQUESTS)
def test_each_mapped_field_changes_the_spec(cls: type[SamplingFields]) -> None:
    def spec(**fields: Any) -> Any:
        return _request(cls, **fields).to_sampling_spec(
            prompt_tokens=4, max_model_len=64, logprobs=None, vocab_size=100
        )

    default = spec()
    for field in (*cls.SAMPLING, *cls.OUTPUT_LIMIT):
        assert spec(**{field: CHANGED[field]}) != default, f"{cls.__name__}.{field} does not reach the spec"


def test_pipeline_steps_inherit_the_mapping_less_n_and_per_model_fields() -> None:
    expected = set(ChatCompletionRequest.SAMPLING) | set(ChatCompletionRequest.OUTPUT_LIMIT)
    assert set(INHERITED_FIELDS) == expected - {"n", "logit_bias"}
    assert set(VERDICT_INHERITED_FIELDS) <= set(INHERITED_FIELDS)
    assert not set(VERDICT_INHERITED_FIELDS) & {"max_tokens", "max_completion_tokens", "stop", "min_tokens"}
