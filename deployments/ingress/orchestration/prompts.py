"""Prompts of the pipeline steps. The critic's <think> reasoning never enters the revision prompt:
only its final answer does, so the generator revises against conclusions, not a thought transcript.

The critic and the judge answer in JSON (see verdict.py); their prompts say so, and structured
outputs enforce it."""

from __future__ import annotations

from serve_app.protocol import ChatMessage
from serve_app.tools import ToolCall

CRITIC_SYSTEM = (
    "You are a rigorous reviewer. Judge whether the draft answer fully and correctly solves the task. "
    'Reply with a JSON object: {"verdict": "approved"} with empty "problems" if it needs no change, '
    'otherwise {"verdict": "needs_revision", "problems": "<numbered list of the concrete problems>"}.'
)

JUDGE_SYSTEM = (
    "You are a judge comparing candidate answers to the same task. Pick the best one. Reply with a "
    'JSON object: {"winner": <candidate number>, "reason": "<one or two sentences>"}.'
)

FINALIZE_PROMPT = (
    "A reviewer approved your answer. Give it again now as your final answer, in the requested format."
)


def task_text(messages: list[ChatMessage]) -> str:
    return "\n\n".join(f"[{m.role}] {answer_text(m.text(), m.tool_calls)}" for m in messages)


def answer_text(content: str, tool_calls: list[ToolCall] | None) -> str:
    """An answer as a reviewer reads it: its text, and any tool calls it makes."""
    calls = "\n".join(f"call {c.function.name}({c.function.arguments})" for c in tool_calls or [])
    return "\n".join(part for part in (content, calls) if part)


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


def finalize_messages(task: list[ChatMessage], draft: str) -> list[ChatMessage]:
    return [
        *task,
        ChatMessage(role="assistant", content=draft),
        ChatMessage(role="user", content=FINALIZE_PROMPT),
    ]


def judge_messages(task: list[ChatMessage], candidates: list[str]) -> list[ChatMessage]:
    listed = "\n\n".join(f"Candidate {i + 1}:\n{text}" for i, text in enumerate(candidates))
    return [
        ChatMessage(role="system", content=JUDGE_SYSTEM),
        ChatMessage(role="user", content=f"Task:\n{task_text(task)}\n\n{listed}"),
    ]
