"""Typed contracts that cross a Ray hop between the ingress, the model replicas and the
ModelDirectory (each a Ray Serve deployment of its own). Shared by every process; Ray-free."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from serve_app.protocol import ModelState

DesiredState = Literal["loaded", "unloaded"]


class ModelStatus(BaseModel):
    """One model as the ModelDirectory sees it: what load/unload asked for, and what its live
    replicas reported."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    desired: DesiredState = Field("loaded", description="What load/unload last asked for.")
    state: ModelState = Field("loading", description="The model's state over its live replicas.")
    replicas: dict[str, int] = Field(default_factory=dict, description="Live replicas per state.")
    error: str | None = Field(None, description="A failed replica's reason, if any.")


class ReplicaDirectory(Protocol):
    """What a model replica asks of the ModelDirectory."""

    async def report(
        self, model_id: str, replica_id: str, state: ModelState, error: str | None
    ) -> DesiredState:
        """Record this replica's state; answer the model's desired state."""

    async def is_stopping(self, replica_id: str) -> bool:
        """Whether Serve's controller is stopping this replica (redeploy, downscale)."""


class IngressDirectory(Protocol):
    """What the ingress asks of the ModelDirectory."""

    async def all_status(self) -> dict[str, ModelStatus]: ...

    async def set_desired(self, model_id: str, desired: DesiredState) -> None: ...

    async def is_stopping(self, replica_id: str) -> bool: ...
