"""serve_app/orchestration/verdict.py on realistic critic and judge replies."""

from __future__ import annotations

import pytest

from serve_app.orchestration.verdict import parse_verdict, parse_winner


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "The code is correct and handles edge cases.\n\nVERDICT: APPROVED", "approved", id="line"
        ),
        pytest.param("verdict: approved", "approved", id="lowercase"),
        pytest.param("**VERDICT: APPROVED**", "approved", id="bold-line"),
        pytest.param("VERDICT: **APPROVED**", "approved", id="bold-value"),
        pytest.param("**Verdict:** needs revision", "needs_revision", id="bold-label-needs-revision"),
        pytest.param(
            "1. Off-by-one in the loop.\n2. No test.\nVERDICT: NEEDS_REVISION", "needs_revision", id="list"
        ),
        pytest.param("Verdict - Needs-Revision", "needs_revision", id="dash"),
        pytest.param("VERDICT: REJECTED", "needs_revision", id="rejected"),
        pytest.param("VERDICT: NOT APPROVED", "needs_revision", id="verdict-not-approved"),
        pytest.param(
            "The draft is not approved: it ignores empty input.", "needs_revision", id="not-approved"
        ),
        pytest.param("This isn't approved yet.", "needs_revision", id="isnt-approved"),
        pytest.param("It cannot be approved as written.", "needs_revision", id="cannot-be-approved"),
        pytest.param(
            "I first thought VERDICT: NEEDS_REVISION, but on reflection the fix is there.\nVERDICT: APPROVED",
            "approved",
            id="last-verdict-line-wins",
        ),
        pytest.param(
            "The instructions say to write 'VERDICT: APPROVED' if fine.\nVERDICT: NEEDS_REVISION",
            "needs_revision",
            id="quoted-instruction-then-verdict",
        ),
        pytest.param("Approved. The answer is complete.", "approved", id="prose-approved"),
        pytest.param("LGTM", "approved", id="lgtm"),
        pytest.param("Please revise the second paragraph.", "needs_revision", id="prose-revise"),
        pytest.param("The result is incorrect for n = 0.", "needs_revision", id="prose-incorrect"),
        pytest.param("The answer looks reasonable overall.", "unclear", id="prose-without-verdict"),
        pytest.param("Unapproved changes were found.", "unclear", id="unapproved-is-not-approved"),
        pytest.param("", "unclear", id="empty"),
        pytest.param(None, "unclear", id="none"),
        pytest.param(
            "The draft is not yet approved; fix the loop.",
            "needs_revision",
            id="not-yet",
        ),
        pytest.param(
            "This can't be approved until the bug is fixed.",
            "needs_revision",
            id="cant-be",
        ),
    ],
)
def test_parse_verdict(text: str | None, expected: str) -> None:
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    ("text", "candidates", "winner", "reason"),
    [
        pytest.param(
            "WINNER: 2\nREASON: It handles the empty list.", 3, 1, "It handles the empty list.", id="plain"
        ),
        pytest.param("winner: 1\nreason: shorter and correct", 2, 0, "shorter and correct", id="lowercase"),
        pytest.param(
            "**Winner:** Candidate 2\nReason: more complete", 2, 1, "more complete", id="markdown-winner"
        ),
        pytest.param(
            "**Winner:** Candidate 2\n**Reason:** more complete",
            2,
            1,
            "more complete",
            id="markdown-reason",
        ),
        pytest.param("WINNER: #3\nREASON: only one with tests", 3, 2, "only one with tests", id="hash"),
        pytest.param("WINNER - 1", 2, 0, None, id="no-reason"),
        pytest.param("WINNER: 5\nREASON: best", 3, None, "best", id="out-of-range-high"),
        pytest.param("WINNER: 0\nREASON: best", 3, None, "best", id="out-of-range-zero"),
        pytest.param("Both answers are fine.", 2, None, None, id="no-winner"),
        pytest.param("", 2, None, None, id="empty"),
        pytest.param(None, 2, None, None, id="none"),
    ],
)
def test_parse_winner(text: str | None, candidates: int, winner: int | None, reason: str | None) -> None:
    assert parse_winner(text, candidates) == (winner, reason)


def test_winner_reason_is_capped() -> None:
    _, reason = parse_winner("WINNER: 1\nREASON: " + "x" * 2000, 2)
    assert reason is not None and len(reason) == 500
