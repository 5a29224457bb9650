"""Parse what a critic or judge decided. Models answer in free text; these parsers are tolerant
of case, markdown emphasis and surrounding prose, and say "unclear" rather than guess."""

from __future__ import annotations

import re
from typing import Literal

Verdict = Literal["approved", "needs_revision", "unclear"]

_VERDICT_LINE = re.compile(r"verdict\s*[:\-]\s*\**\s*(approved|needs[\s_-]*revision|rejected)", re.I)
_NEGATED = re.compile(
    r"\b(not|never|isn'?t|aren'?t|can'?t|cannot|won'?t|wouldn'?t|shouldn'?t)\s+(?:\w+\s+){0,2}approved\b",
    re.I,
)
_APPROVED = re.compile(r"\bapproved\b|\blgtm\b", re.I)
_REVISE = re.compile(r"\bneeds?[\s_-]*revision\b|\brevise\b|\bincorrect\b|\brejected\b", re.I)
_WINNER = re.compile(r"winner\s*[:\-]\s*\**\s*(?:candidate\s*)?#?\s*(\d+)", re.I)
_REASON = re.compile(r"reason\s*\**\s*[:\-]\s*\**\s*(.+)", re.I | re.S)


def parse_verdict(text: str | None) -> Verdict:
    if not text:
        return "unclear"
    explicit = _VERDICT_LINE.findall(text)
    if explicit:
        last = explicit[-1].lower()
        return "approved" if last == "approved" else "needs_revision"
    if _NEGATED.search(text) or _REVISE.search(text):
        return "needs_revision"
    if _APPROVED.search(text):
        return "approved"
    return "unclear"


def parse_winner(text: str | None, candidates: int) -> tuple[int | None, str | None]:
    """Return the 0-based winning candidate (None if absent or out of range) and the stated reason."""
    if not text:
        return None, None
    match = _WINNER.search(text)
    winner = None
    if match and 1 <= int(match.group(1)) <= candidates:
        winner = int(match.group(1)) - 1
    reason_match = _REASON.search(text)
    reason = reason_match.group(1).strip()[:500] if reason_match else None
    return winner, reason
