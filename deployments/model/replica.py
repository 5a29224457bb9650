"""The model replica's state machine, free of Ray: engine load and unload, the drain with its cut,
reconciling to the ModelDirectory's desired state, and admission of requests.

`deployments/model/server.py` is the thin Ray Serve shell around it; unit tests drive this class
with a fake engine and a fake directory (tests/unit/deployments/test_model_replica.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from deployments.model.serving.chat import ChatServing
from deployments.model.serving.completion import CompletionServing
from serve_app.config.app_args import RequestLimits
from serve_app.contracts import ReplicaDirectory
from serve_app.draining import watch_for_stop
from serve_app.engine_api import Engine
from serve_app.errors import (
    ModelNotLoaded,
    RequestAborted,
    ServiceError,
    ServiceUnavailable,
    fresh,
    restarting,
)
from serve_app.metrics import EngineMetrics, NoMetrics
from serve_app.protocol import ModelState

logger = logging.getLogger("ray.serve")

RECONCILE_PERIOD_S = 1.0
DRAIN_POLL_S = 0.2


@dataclass(frozen=True)
class DrainBudgets:
    """How long open requests may run once the replica stops admitting them.

    `unload_s` bounds the drain of an unload; `shutdown_s` is Ray's graceful_shutdown_timeout_s,
    after which Ray kills the replica, and what is open is cut `margin_s` before that."""

    unload_s: float
    shutdown_s: float
    margin_s: float


class ModelReplica:
    def __init__(
        self,
        model_id: str,
        replica_id: str,
        engine: Engine,
        limits: RequestLimits,
        directory: ReplicaDirectory,
        budgets: DrainBudgets,
        metrics: EngineMetrics | None = None,
        *,
        start_timeout_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.model_id = model_id
        self.replica_id = replica_id
        self.engine = engine
        self.limits = limits
        self.directory = directory
        self.budgets = budgets
        self.metrics = metrics or NoMetrics()
        self.start_timeout_s = start_timeout_s
        self.clock = clock
        self.sleep = sleep
        self.state: ModelState = "unloaded"
        self.error: str | None = None
        self.inflight = 0
        # Set when the replica ends what is still open: the error those requests get.
        self.cut_error: ServiceError | None = None
        self.stopping = False
        self._transition = asyncio.Lock()
        self.chat_serving: ChatServing | None = None
        self.completion_serving: CompletionServing | None = None

    # ------------------------------------------------------------------ lifecycle

    async def report(self) -> str:
        return await self.directory.report(self.model_id, self.replica_id, self.state, self.error)

    async def start(self) -> None:
        """At construction: load if the model is desired loaded; fail the replica if it cannot."""
        if await self.report() == "loaded":
            await self.load()
            if self.state == "failed":
                await self.report()
                raise RuntimeError(f"engine of {self.model_id} failed to start: {self.error}")

    async def load(self) -> None:
        async with self._transition:
            if self.state == "ready":
                return
            self.state, self.error, self.cut_error = "loading", None, None
            await self.report()
            try:
                await asyncio.wait_for(self.engine.start(), self.start_timeout_s)
            except TimeoutError:
                logger.error("engine of %s not ready within %g s", self.model_id, self.start_timeout_s)
                self.state = "failed"
                self.error = (
                    f"engine did not start within {self.start_timeout_s:g} s (engine_start_timeout_s)"
                )
                await self.engine.shutdown()
                return
            except Exception as exc:  # reported as the model's state; the replica stays up
                logger.exception("engine of %s failed to start", self.model_id)
                self.state, self.error = "failed", f"engine failed to start: {type(exc).__name__}"
                await self.engine.shutdown()
                return
            vocab = getattr(self.engine, "vocab_size", None)
            self.chat_serving = ChatServing(self.engine, self.model_id, self.limits, vocab, self.metrics)
            self.completion_serving = CompletionServing(
                self.engine, self.model_id, self.limits, vocab, self.metrics
            )
            self.state = "ready"
            logger.info("engine of %s ready on replica %s", self.model_id, self.replica_id)

    async def unload(self) -> None:
        async with self._transition:
            if self.state not in ("ready", "failed"):
                return
            self.state = "unloading"
            await self.report()
            if not await self._drain(self.budgets.unload_s):
                await self.cut(
                    restarting(
                        f"model {self.model_id} is being unloaded and its "
                        f"{self.budgets.unload_s:g} s drain ran out",
                        "model_unloading",
                    )
                )
            await self.engine.shutdown()
            self.state = "unloaded"
            logger.info("engine of %s unloaded on replica %s", self.model_id, self.replica_id)

    async def _drain(self, budget_s: float) -> bool:
        """Wait up to `budget_s` for open requests to finish; whether they all did."""
        deadline = self.clock() + budget_s
        while self.inflight and self.clock() < deadline:
            await self.sleep(DRAIN_POLL_S)
        return self.inflight == 0

    async def cut(self, error: ServiceError) -> None:
        """End every open request with `error` (each engine request is aborted, and the replica
        turns vLLM's "abort" into this error), then wait briefly until they have left."""
        self.cut_error = error
        aborted = await self.engine.abort_all()
        if self.inflight:
            logger.warning(
                "%s: ending %d open requests (%d engine requests): %s",
                self.model_id,
                self.inflight,
                aborted,
                error.code,
            )
        await self._drain(self.budgets.margin_s / 2)

    async def reconcile_forever(self) -> None:
        # Reporting doubles as the heartbeat, so it must never wait on a transition (a drain can
        # take a minute): transitions run as their own task, one at a time.
        transition: asyncio.Task[None] | None = None
        while True:
            try:
                desired = await self.report()
                idle = transition is None or transition.done()
                if idle and desired == "unloaded" and self.state in ("ready", "failed"):
                    transition = asyncio.create_task(self.unload())
                elif idle and desired == "loaded" and self.state == "unloaded":
                    transition = asyncio.create_task(self.load())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reconciling %s failed; retrying", self.model_id)
            await self.sleep(RECONCILE_PERIOD_S)

    async def watch_for_stop(self) -> None:
        """When Serve starts stopping this replica, refuse new requests and cut what is still
        open `margin_s` before Ray's force-kill."""

        async def is_stopping() -> bool:
            self.stopping = await self.directory.is_stopping(self.replica_id)
            return self.stopping

        async def on_cut() -> None:
            await self.cut(
                restarting(
                    f"replica of model {self.model_id} is shutting down and its "
                    f"{self.budgets.shutdown_s:g} s drain ran out",
                    "model_restarting",
                )
            )

        await watch_for_stop(
            is_stopping,
            self.budgets.shutdown_s,
            self.budgets.margin_s,
            on_cut,
            clock=self.clock,
            sleep=self.sleep,
        )

    async def stop(self) -> None:
        """The replica's end (Ray calls `__del__` once its drain is over). A request Serve routed here
        while the drain was ending may still be open: end it with `model_restarting` (its caller,
        a pipeline say, tries again elsewhere) rather than kill the engine under it."""
        self.stopping = True
        if self.inflight and self.state == "ready":
            await self.cut(
                restarting(f"replica of model {self.model_id} is shutting down", "model_restarting")
            )
        await self.engine.shutdown()

    async def check_health(self) -> None:
        # An engine that died on its own (not unloaded by us) makes Ray replace this replica.
        if self.state == "ready" and not self.engine.is_running():
            raise RuntimeError(f"engine of {self.model_id} is dead")
        if self.state == "ready":
            await self.engine.check_health()

    # ------------------------------------------------------------------ requests

    def _admit(self) -> None:
        if self.stopping:
            raise restarting(f"replica of model {self.model_id} is shutting down", "model_restarting")
        if self.state == "ready":
            return
        if self.state in ("unloaded", "unloading"):
            raise ModelNotLoaded(
                f"Model {self.model_id} is unloaded; load it with POST /v1/models/{self.model_id}/load."
            )
        raise ServiceUnavailable(
            f"Model {self.model_id} is {self.state}; retry shortly.", code="model_loading"
        )

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """One request's stay: admission, the in-flight count the drain waits for, and the
        replacement of vLLM's "abort" by the reason this replica stopped the request."""
        self._admit()
        self.inflight += 1
        try:
            yield
        except RequestAborted:
            if self.cut_error is not None:
                raise fresh(self.cut_error) from None
            raise
        finally:
            self.inflight -= 1

    def serving(self) -> tuple[ChatServing, CompletionServing]:
        assert self.chat_serving is not None and self.completion_serving is not None
        return self.chat_serving, self.completion_serving
