"""Prompts of the pipeline steps. The critic's <think> reasoning never enters the revision prompt:
only its final answer does, so the generator revises against conclusions, not a thought transcript."""

from __future__ import annotations

from serve_app.protocol import ChatMessage

CRITIC_SYSTEM = (
    "You are a rigorous reviewer. Judge whether the draft answer fully and correctly solves the task. "
    "End your reply with exactly one line: 'VERDICT: APPROVED' if it needs no change, otherwise "
    "'VERDICT: NEEDS_REVISION' after a numbered list of the concrete problems."
)

JUDGE_SYSTEM = (
    "You are a judge comparing candidate answers to the same task. Pick the best one. Reply with "
    "'WINNER: <number>' on the first line and 'REASON: <one or two sentences>' on the second."
)


def task_text(messages: list[ChatMessage]) -> str:
    return "\n\n".join(f"[{m.role}] {m.text()}" for m in messages)


def critique_messages(task: list[ChatMessage], draft: str) -> list[ChatMessage]:
    return [
        ChatMessage(role="system", content=CRITIC_SYSTEM),
        ChatMessage(role="user", content=f"Task:\n{task_text(task)}\n\nDraft answer:\n{draft}"),
    ]


def revision_messages(task: list[ChatMessage], draft: str, critique: str) -> list[ChatMessage]:
    feedback = critique.strip() or "(The reviewer gave no final answer; re-check the draft yourself.)"
    return [
        *task,
        ChatMessage(role="assistant", content=draft),
        ChatMessage(
            role="user",
            content=(
                f"A reviewer critiqued your answer:\n{feedback}\n\n"
                "Write the complete, corrected answer. Output only the answer."
            ),
        ),
    ]


def judge_messages(task: list[ChatMessage], candidates: list[str]) -> list[ChatMessage]:
    listed = "\n\n".join(f"Candidate {i + 1}:\n{text}" for i, text in enumerate(candidates))
    return [
        ChatMessage(role="system", content=JUDGE_SYSTEM),
        ChatMessage(role="user", content=f"Task:\n{task_text(task)}\n\n{listed}"),
    ]
