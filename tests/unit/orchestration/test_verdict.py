"""deployments/ingress/orchestration/verdict.py: the critic's and judge's JSON contracts and their schemas."""

from __future__ import annotations

import json

import jsonschema
import pytest

from deployments.ingress.orchestration.verdict import parse_verdict, parse_winner, pick_schema, verdict_schema


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('{"verdict":"approved","problems":""}', ("approved", ""), id="approved"),
        pytest.param(
            '{"verdict":"needs_revision","problems":"1. empty input"}',
            ("needs_revision", "1. empty input"),
            id="needs-revision",
        ),
        pytest.param('{"verdict":"approved","problems":"fi', ("unclear", None), id="cut-short"),
        pytest.param("VERDICT: APPROVED", ("unclear", None), id="free-text-is-not-read"),
        pytest.param('{"verdict":"maybe","problems":""}', ("unclear", None), id="unknown-verdict"),
        pytest.param("", ("unclear", None), id="empty"),
        pytest.param(None, ("unclear", None), id="none"),
    ],
)
def test_verdict(text: str | None, expected: tuple[str, str | None]) -> None:
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('{"winner":2,"reason":"handles empty input"}', (1, "handles empty input"), id="second"),
        pytest.param('{"winner":4,"reason":"x"}', (None, "x"), id="out-of-range"),
        pytest.param('{"winner":0,"reason":"x"}', (None, None), id="zero"),
        pytest.param('{"winner":1,"rea', (None, None), id="cut-short"),
        pytest.param("WINNER: 1", (None, None), id="free-text-is-not-read"),
    ],
)
def test_winner(text: str, expected: tuple[int | None, str | None]) -> None:
    assert parse_winner(text, 3) == expected


def test_what_the_schemas_admit_parses() -> None:
    jsonschema.validate({"verdict": "approved", "problems": ""}, verdict_schema())
    jsonschema.validate({"winner": 3, "reason": "r"}, pick_schema(3))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"winner": 4, "reason": "r"}, pick_schema(3))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"verdict": "approved", "problems": "", "extra": 1}, verdict_schema())
    assert parse_winner(json.dumps({"winner": 3, "reason": "r"}), 3) == (2, "r")
