"""Server-sent events framing for OpenAI streams."""

from __future__ import annotations

from pydantic import BaseModel

DONE = "data: [DONE]\n\n"


def encode_event(payload: BaseModel, exclude_none: bool = True) -> str:
    # Chunks drop null fields to stay small; error events keep them ("param": null) like OpenAI.
    return f"data: {payload.model_dump_json(exclude_none=exclude_none)}\n\n"
