"""Desired and observed load state of every model, shared by all replicas of all deployments.

Load and unload are requests to change *desired* state. Each model replica reconciles toward it
(starting or shutting down its vLLM engine) and reports what it observed, so the answer is true for
every replica, including ones the autoscaler adds later. One replica of this deployment exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ray import serve

from serve_app.protocol import ModelState

REPORT_TTL_S = 15.0


@dataclass
class ReplicaReport:
    state: ModelState
    error: str | None
    at: float = field(default_factory=time.monotonic)


class ModelDirectoryState:
    """The logic, free of Ray so it is unit-testable."""

    def __init__(self, model_ids: list[str]):
        self.desired: dict[str, str] = dict.fromkeys(model_ids, "loaded")
        self.reports: dict[str, dict[str, ReplicaReport]] = {m: {} for m in model_ids}

    def set_desired(self, model_id: str, desired: str) -> None:
        self.desired[model_id] = desired

    def desired_state(self, model_id: str) -> str:
        return self.desired[model_id]

    def report(self, model_id: str, replica_id: str, state: ModelState, error: str | None) -> str:
        self.reports[model_id][replica_id] = ReplicaReport(state, error)
        return self.desired[model_id]

    def forget(self, model_id: str, replica_id: str) -> None:
        self.reports[model_id].pop(replica_id, None)

    def status(self, model_id: str) -> dict[str, object]:
        now = time.monotonic()
        live = {r: rep for r, rep in self.reports[model_id].items() if now - rep.at < REPORT_TTL_S}
        self.reports[model_id] = live
        counts: dict[str, int] = {}
        for rep in live.values():
            counts[rep.state] = counts.get(rep.state, 0) + 1
        desired = self.desired[model_id]
        errors = [rep.error for rep in live.values() if rep.error]
        return {
            "desired": desired,
            "state": aggregate_state(desired, counts),
            "replicas": counts,
            "error": errors[0] if errors else None,
        }


def aggregate_state(desired: str, counts: dict[str, int]) -> ModelState:
    """One state for the model. Ready when every live replica is ready, or when some are ready and
    the rest failed (it still serves; a failed replica is Ray's to replace and shows in `error`)."""
    if not counts:
        return "loading" if desired == "loaded" else "unloaded"
    if desired == "unloaded":
        return "unloaded" if set(counts) <= {"unloaded", "failed"} else "unloading"
    if set(counts) == {"ready"}:
        return "ready"
    if "failed" in counts and not counts.get("loading"):
        return "ready" if counts.get("ready") else "failed"
    return "loading"


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class ModelDirectory:
    def __init__(self, model_ids: list[str]):
        self._state = ModelDirectoryState(model_ids)

    def set_desired(self, model_id: str, desired: str) -> None:
        self._state.set_desired(model_id, desired)

    def report(self, model_id: str, replica_id: str, state: ModelState, error: str | None) -> str:
        return self._state.report(model_id, replica_id, state, error)

    def forget(self, model_id: str, replica_id: str) -> None:
        self._state.forget(model_id, replica_id)

    def status(self, model_id: str) -> dict[str, object]:
        return self._state.status(model_id)

    def all_status(self) -> dict[str, dict[str, object]]:
        return {model_id: self._state.status(model_id) for model_id in self._state.desired}
