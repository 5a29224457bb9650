"""Desired and observed load state of every model, shared by all replicas of all deployments.

Load and unload are requests to change *desired* state. Each model replica reconciles toward it
(starting or shutting down its vLLM engine) and reports what it observed, so the answer is true for
every replica, including ones the autoscaler adds later. One replica of this deployment exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast, get_args

from ray import serve

from deployments.desired_state_store import DesiredStateStore, GcsDesiredStateStore
from serve_app.contracts import DesiredState, ModelStatus
from serve_app.protocol import ModelState

REPORT_TTL_S = 15.0
# How often the directory reads replica states from Serve's controller (one call per application).
STOPPING_POLL_S = 1.0
# An answer older than this is read again before it is given (a directory that just started).
STOPPING_STALE_S = 2 * STOPPING_POLL_S
# How long a replica waits for the directory's answer before asking the controller itself: the
# directory is replaced by the same redeploy that stops the replica asking (Serve gives every
# deployment of an application whose args changed a new version), and a late answer eats the margin.
DIRECTORY_ANSWER_S = 1.0
# How often the directory re-reads the stored desired states (and retries a failed write).
DESIRED_SYNC_S = 5.0
STORE_CALL_TIMEOUT_S = 10.0
DESIRED_STATES: tuple[str, ...] = get_args(DesiredState)

T = TypeVar("T")

logger = logging.getLogger("ray.serve")


@dataclass
class ReplicaReport:
    state: ModelState
    error: str | None
    at: float = field(default_factory=time.monotonic)


class ModelDirectoryState:
    """The logic, free of Ray so it is unit-testable.

    Desired states are kept in `store` too (deployments/desired_state_store.py), so that a
    directory restarted by a redeploy starts from them (`restore`), and re-read from it every
    `DESIRED_SYNC_S` (`sync`): a load or unload that reached the old directory while the new one
    started is not lost. The store never stands in the way of serving: a failed read keeps what
    is in memory ("loaded" at start), a failed write keeps the new state in memory and is retried
    at the next sync."""

    def __init__(self, model_ids: list[str], store: DesiredStateStore | None = None):
        self.desired: dict[str, DesiredState] = dict.fromkeys(model_ids, "loaded")
        self.reports: dict[str, dict[str, ReplicaReport]] = {m: {} for m in model_ids}
        self._store = store
        # Desired states the store has not taken yet: kept over what it says, written again.
        self.unsaved: set[str] = set()
        # One store call at a time: a read that overlapped a write could bring back the old value.
        self._store_calls = asyncio.Lock()

    async def restore(self) -> None:
        """At start: adopt the stored desired states of this app's models (the others start
        loaded), and forget stored ones of models the app no longer has, so that a model added back
        later starts loaded like any new one."""
        stored = await self.sync()
        if self._store is None or stored is None:
            return
        for model_id in sorted(set(stored) - set(self.desired)):
            try:
                async with self._store_calls:
                    await self._store_call(self._store.delete(model_id))
            except Exception:
                logger.warning("forgetting the desired state of %s failed", model_id, exc_info=True)

    async def sync(self) -> dict[str, str] | None:
        """Write what the store has not taken yet, then adopt what it holds for this app's models.
        Returns what it read (None: no store, or the read failed)."""
        if self._store is None:
            return None
        for model_id in sorted(self.unsaved):
            await self._save(model_id)
        async with self._store_calls:
            try:
                stored = await self._store_call(self._store.read_all())
            except Exception:
                logger.warning("reading desired states failed; keeping %s", self.desired, exc_info=True)
                return None
            for model_id, value in stored.items():
                # `unsaved` also holds a model whose load/unload came in during the read.
                if model_id not in self.desired or model_id in self.unsaved:
                    continue
                if value not in DESIRED_STATES:
                    logger.warning("ignoring stored desired state %r of %s", value, model_id)
                    continue
                if self.desired[model_id] != value:
                    logger.info("desired state of %s from the store: %s", model_id, value)
                self.desired[model_id] = cast(DesiredState, value)
        return stored

    async def set_desired(self, model_id: str, desired: DesiredState) -> None:
        """In force at once (the next report gets it); kept in the store before it returns, unless
        the store fails (then at a later sync)."""
        self.desired[model_id] = desired
        if self._store is not None:
            self.unsaved.add(model_id)
            await self._save(model_id)

    async def _save(self, model_id: str) -> None:
        async with self._store_calls:
            # Not unsaved: a save that waited before this one wrote it.
            if self._store is None or model_id not in self.unsaved:
                return
            desired = self.desired[model_id]
            try:
                await self._store_call(self._store.write(model_id, desired))
            except Exception:
                logger.warning(
                    "keeping the desired state %s of %s failed; in force here, written again later",
                    desired,
                    model_id,
                    exc_info=True,
                )
                return
            if self.desired[model_id] == desired:
                self.unsaved.discard(model_id)

    @staticmethod
    async def _store_call(call: Awaitable[T]) -> T:
        # The GCS implementation has its own RPC timeout; this bounds any store.
        return await asyncio.wait_for(call, STORE_CALL_TIMEOUT_S)

    def desired_state(self, model_id: str) -> DesiredState:
        return self.desired[model_id]

    def report(self, model_id: str, replica_id: str, state: ModelState, error: str | None) -> DesiredState:
        self.reports[model_id][replica_id] = ReplicaReport(state, error)
        return self.desired[model_id]

    def forget(self, model_id: str, replica_id: str) -> None:
        self.reports[model_id].pop(replica_id, None)

    def status(self, model_id: str) -> ModelStatus:
        now = time.monotonic()
        live = {r: rep for r, rep in self.reports[model_id].items() if now - rep.at < REPORT_TTL_S}
        self.reports[model_id] = live
        counts: dict[str, int] = {}
        for rep in live.values():
            counts[rep.state] = counts.get(rep.state, 0) + 1
        desired = self.desired[model_id]
        errors = [rep.error for rep in live.values() if rep.error]
        return ModelStatus(
            desired=desired,
            state=aggregate_state(desired, counts),
            replicas=counts,
            error=errors[0] if errors else None,
        )


def aggregate_state(desired: DesiredState, counts: dict[str, int]) -> ModelState:
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


def stopping_replica_ids(details: dict[str, Any], app_name: str) -> set[str]:
    """The replicas of `app_name` that Serve is stopping, from the controller's instance details
    (the schema of Serve's REST API, `ServeInstanceDetails`)."""
    app = details.get("applications", {}).get(app_name) or {}
    return {
        replica["replica_id"]
        for deployment in (app.get("deployments") or {}).values()
        for replica in deployment.get("replicas") or []
        if replica.get("state") == "STOPPING"
    }


class StoppingReplicas:
    """Which replicas of one application Serve is stopping, refreshed in the background.

    Serve has no hook at the start of a replica's graceful stop, so replicas ask here (through
    `ModelDirectory.is_stopping`), and one poll of the controller serves them all."""

    def __init__(
        self,
        read_details: Callable[[], Awaitable[dict[str, Any]]],
        app_name: str,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._read = read_details
        self._app = app_name
        self._clock = clock
        self.ids: set[str] = set()
        self.read_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._refreshing = asyncio.Lock()

    def ensure_polling(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll_forever())

    async def current(self) -> set[str]:
        """The stopping replicas, never from a read older than `STOPPING_STALE_S` when one can be
        made: the first question to a new directory is answered from a fresh read, not an empty set."""
        self.ensure_polling()
        if self._stale():
            async with self._refreshing:
                if self._stale():
                    await self._refresh()
        return self.ids

    def _stale(self) -> bool:
        return self.read_at is None or self._clock() - self.read_at > STOPPING_STALE_S

    async def _refresh(self) -> None:
        self.ids = stopping_replica_ids(await self._read(), self._app)
        self.read_at = self._clock()

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("reading replica states from Serve's controller failed", exc_info=True)
            await asyncio.sleep(STOPPING_POLL_S)


async def read_serve_details() -> dict[str, Any]:
    # The controller call behind `serve status` and the dashboard's Serve page (Serve has no public
    # in-cluster API for replica states; the REST API would need the dashboard's token).
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None  # raises itself when no controller runs
    return await client._controller.get_serve_instance_details.remote()


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class ModelDirectory:
    async def __init__(  # type: ignore[misc]  # Ray Serve awaits async constructors
        self,
        model_ids: list[str],
        store_cls: Callable[[str], DesiredStateStore] = GcsDesiredStateStore,
    ):
        """`store_cls` makes the desired-state store from the application's name."""
        app_name = serve.get_replica_context().app_name
        self._state = ModelDirectoryState(model_ids, store_cls(app_name))
        # Before the first answer: a model replica asks for its desired state as it starts.
        await self._state.restore()
        self._stopping = StoppingReplicas(read_serve_details, app_name)
        self._sync = asyncio.create_task(self._sync_forever())

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(DESIRED_SYNC_S)
            try:
                await self._state.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # sync logs the store's failures; this is anything else
                logger.exception("syncing desired states failed")

    async def is_stopping(self, replica_id: str) -> bool:
        return replica_id in await self._stopping.current()

    async def set_desired(self, model_id: str, desired: DesiredState) -> None:
        await self._state.set_desired(model_id, desired)

    def report(self, model_id: str, replica_id: str, state: ModelState, error: str | None) -> DesiredState:
        return self._state.report(model_id, replica_id, state, error)

    def forget(self, model_id: str, replica_id: str) -> None:
        self._state.forget(model_id, replica_id)

    def status(self, model_id: str) -> ModelStatus:
        return self._state.status(model_id)

    def all_status(self) -> dict[str, ModelStatus]:
        return {model_id: self._state.status(model_id) for model_id in self._state.desired}


class HandleDirectoryClient:
    """The ModelDirectory deployment through its handle: both the ingress's and a model
    replica's view of it (`IngressDirectory`, `ReplicaDirectory`).

    `is_stopping` falls back to reading the controller itself when the directory does not answer
    within `DIRECTORY_ANSWER_S` (it is being replaced, or is down): a replica must learn of its own
    stop in time to end its requests before Ray's kill."""

    def __init__(
        self,
        handle: Any,
        app_name: str = "",
        read_details: Callable[[], Awaitable[dict[str, Any]]] = read_serve_details,
        answer_timeout_s: float = DIRECTORY_ANSWER_S,
    ):
        self.handle = handle
        self._app = app_name
        self._read = read_details
        self._answer_timeout_s = answer_timeout_s

    async def report(
        self, model_id: str, replica_id: str, state: ModelState, error: str | None
    ) -> DesiredState:
        return await self.handle.report.remote(model_id, replica_id, state, error)

    async def is_stopping(self, replica_id: str) -> bool:
        async def ask_directory() -> bool:
            return await self.handle.is_stopping.remote(replica_id)

        try:
            return await asyncio.wait_for(ask_directory(), self._answer_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # TimeoutError included: the directory is restarting
            logger.info("the ModelDirectory did not answer (%r); asking Serve's controller", exc)
        return replica_id in stopping_replica_ids(await self._read(), self._app)

    async def all_status(self) -> dict[str, ModelStatus]:
        return await self.handle.all_status.remote()

    async def set_desired(self, model_id: str, desired: DesiredState) -> None:
        await self.handle.set_desired.remote(model_id, desired)
