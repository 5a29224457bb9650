"""Pieces every request and response shares: base models, text, usage, ids, finish reasons."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
)

MAX_CRITIQUE_ROUNDS = 5
MAX_TOP_LOGPROBS = 20
MAX_STOP_SEQUENCES = 4
# OpenAI's defaults where the request leaves a parameter out.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


def _require_utf8(value: str) -> str:
    # JSON can carry lone surrogates ("\\ud800") that no tokenizer can encode: refuse them here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it contains a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_require_utf8)]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------- shared pieces


class StreamOptions(Request):
    include_usage: bool = False


class Usage(Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def counted(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        """The usage of a prompt and its completion (the total is their sum)."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


# OpenAI's finish reasons; vLLM's "abort" never reaches a client (serving/common.py `observed`).
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
