"""The critic's verdict and the judge's pick, as small JSON contracts.

Both steps are decoded under these schemas (vLLM structured outputs), so early stopping and the
winner come from a field of a JSON object, never from reading free text. Lengths are bounded so a
complete object always fits the step's token budget; output cut short anyway counts as "unclear".
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Verdict = Literal["approved", "needs_revision", "unclear"]

MAX_PROBLEMS_CHARS = 600
MAX_REASON_CHARS = 300
# Room for a complete object: every token of the tiny CPU model's vocabulary is at least one char.
VERDICT_MAX_TOKENS = 64 + MAX_PROBLEMS_CHARS
PICK_MAX_TOKENS = 64 + MAX_REASON_CHARS


class CriticVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Literal["approved", "needs_revision"]
    problems: str = Field(max_length=MAX_PROBLEMS_CHARS)


class JudgePick(BaseModel):
    model_config = ConfigDict(extra="forbid")

    winner: int = Field(ge=1)
    reason: str = Field(max_length=MAX_REASON_CHARS)


def verdict_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["approved", "needs_revision"]},
            "problems": {"type": "string", "maxLength": MAX_PROBLEMS_CHARS},
        },
        "required": ["verdict", "problems"],
        "additionalProperties": False,
    }


def pick_schema(candidates: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "winner": {"type": "integer", "minimum": 1, "maximum": candidates},
            "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
        },
        "required": ["winner", "reason"],
        "additionalProperties": False,
    }


def parse_verdict(text: str | None) -> tuple[Verdict, str | None]:
    """(verdict, the critic's stated problems); "unclear" when the object is incomplete."""
    try:
        parsed = CriticVerdict.model_validate_json(text or "")
    except ValidationError:
        return "unclear", None
    return parsed.verdict, parsed.problems


def parse_winner(text: str | None, candidates: int) -> tuple[int | None, str | None]:
    """The 0-based winning candidate (None if incomplete or out of range) and the stated reason."""
    try:
        parsed = JudgePick.model_validate_json(text or "")
    except ValidationError:
        return None, None
    if parsed.winner > candidates:
        return None, parsed.reason
    return parsed.winner - 1, parsed.reason
