"""Paths and small helpers shared by the unit tests (no fakes here; see fakes.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PRESETS_DIR = PROJECT_ROOT / "presets"
CATALOG_PATH = PRESETS_DIR / "catalog.yaml"
# Event-loop turns that are plenty for any hand-off between tasks in the unit tests.
TURNS = 200


def parse_sse(events: Sequence[str] | str) -> list[dict[str, Any] | str]:
    """Decode `data: ...` SSE events: JSON payloads as dicts, `[DONE]` as the string."""
    text = events if isinstance(events, str) else "".join(events)
    decoded: list[dict[str, Any] | str] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), f"not an SSE data event: {block!r}"
        payload = block.removeprefix("data: ")
        decoded.append(payload if payload == "[DONE]" else json.loads(payload))
    assert text.endswith("\n\n"), "every SSE event ends with a blank line"
    return decoded


def sse_json(event: dict[str, Any] | str) -> dict[str, Any]:
    """One event from `parse_sse` that must be a JSON payload (not `[DONE]`)."""
    assert isinstance(event, dict), f"not a JSON event: {event!r}"
    return event


async def turns_until(predicate: Callable[[], bool], turns: int = TURNS) -> None:
    """Lets other tasks run until `predicate` holds; fails if it does not within `turns` turns."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    assert predicate(), f"not reached within {turns} loop turns"
