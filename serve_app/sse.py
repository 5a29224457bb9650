"""Server-sent events framing for OpenAI streams."""

from __future__ import annotations

from pydantic import BaseModel

DONE = "data: [DONE]\n\n"


def encode_event(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"
