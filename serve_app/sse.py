"""Server-sent events framing for OpenAI streams."""

from __future__ import annotations

from pydantic import BaseModel

DONE = "data: [DONE]\n\n"

# JSON may carry these raw inside strings, and SSE does not end lines at them, but parsers that split
# with Python's str.splitlines() (or JavaScript's line terminators) do: escape them, which decodes to
# the same string.
_LINE_SEPARATORS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def encode_event(payload: BaseModel, exclude_none: bool = True) -> str:
    # Chunks drop null fields to stay small; error events keep them ("param": null) like OpenAI.
    data = payload.model_dump_json(exclude_none=exclude_none)
    if not data.isascii():
        data = data.translate(_LINE_SEPARATORS)
    return f"data: {data}\n\n"
