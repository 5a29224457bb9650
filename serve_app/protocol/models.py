"""The model list and cards (`/v1/models`), with load states and capabilities."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from serve_app.protocol.base import (
    Response,
    now,
)

ModelState = Literal["loading", "ready", "unloading", "unloaded", "failed"]


class ModelCapabilities(Response):
    """What a model can do through this API."""

    tools: bool = True  # named and required tool_choice work on every model (constrained decoding)
    tool_choice: list[str]  # "auto" only with a tool parser
    tool_parser: str | None = None
    structured_outputs: list[str] = Field(default_factory=lambda: ["json_object", "json_schema"])
    reasoning: bool = False


class ModelCard(Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "inference-service"
    status: ModelState
    role: str | None = None
    hf_source: str | None = None
    max_model_len: int | None = None
    replicas: dict[str, int] = Field(default_factory=dict)
    error: str | None = None
    # How long an unload lets open requests run before they end with a 503 / error event.
    unload_drain_timeout_s: float | None = None
    capabilities: ModelCapabilities | None = None


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    preset: str | None = None
    orchestration_mode: str | None = None
