"""Ending open requests cleanly when a drain budget runs out. Ray-free; used by the ingress and the
model replicas.

Ray Serve stops a replica by waiting for its ongoing requests and then, at the deployment's
`graceful_shutdown_timeout_s`, killing the process: whatever was still open is cut at the TCP level
(a stream simply stops). It has no hook at the start of a stop, so each replica learns that it is
stopping from the ModelDirectory (which reads the replica states from Serve's controller) and sets
its own cut time, `margin_s` before Ray's kill. At that time every request still open ends with an
OpenAI error (`service_restarting` / `model_restarting`, 503 with Retry-After; an error event and
`[DONE]` in a stream) instead of a silent cut. The unload drain uses the same cut (`model_unloading`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from serve_app.errors import ServiceError, fresh

logger = logging.getLogger("ray.serve")

# How often a replica asks whether it is stopping; part of the detection latency the margin covers.
STOP_POLL_S = 1.0


@dataclass
class StopPlan:
    """When a stopping replica cuts what is still open: `margin_s` before Ray's force-kill.

    `seen_at` is when this replica learnt of the stop (monotonic seconds); the stop itself began up
    to one poll of the directory and one of the replica earlier, which the margin covers."""

    budget_s: float
    margin_s: float
    seen_at: float

    @property
    def cut_at(self) -> float:
        return self.seen_at + max(0.0, self.budget_s - self.margin_s)


class _End:
    """Queue marker: the upstream iterator is exhausted."""


@dataclass(eq=False)  # hashed by identity: kept in a set of open streams
class _Stream:
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)


class InflightRequests:
    """The requests a process has open, and the one-way switch that ends them all with an error.

    The HTTP guard races a request against the switch (`wait_cut`) until its response starts; a
    stream is read by a pump task so that the switch can end it between two events without
    cancelling the task that writes to the client (`stream`)."""

    def __init__(self) -> None:
        self._cut: ServiceError | None = None
        self._switch = asyncio.Event()
        self._streams: set[_Stream] = set()
        self.open = 0

    @property
    def cut_error(self) -> ServiceError | None:
        return self._cut

    def cut(self, error: ServiceError) -> int:
        """End every open request with `error`, and refuse new ones with it. Returns how many."""
        if self._cut is None:
            self._cut = error
            self._switch.set()
            for stream in self._streams:
                stream.queue.put_nowait(fresh(error))
        return self.open

    def refuse_if_cut(self) -> None:
        if self._cut is not None:
            raise fresh(self._cut)

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        """One open request: refused once cut, counted while open."""
        self.refuse_if_cut()
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1

    async def wait_cut(self) -> ServiceError:
        """Return the cut error once the switch flips."""
        await self._switch.wait()
        assert self._cut is not None
        return fresh(self._cut)

    async def stream(self, source: AsyncIterator[str]) -> AsyncIterator[str]:
        """`source`'s items; when the switch flips, the cut error is raised after the items already
        delivered, and `source` is closed (which cancels the model call behind it)."""
        self.refuse_if_cut()
        entry = _Stream()
        self._streams.add(entry)

        async def pump() -> None:
            try:
                async for item in source:
                    entry.queue.put_nowait(item)
            except Exception as exc:  # re-raised by the consumer, in order
                entry.queue.put_nowait(exc)
            else:
                entry.queue.put_nowait(_End())

        task = asyncio.create_task(pump())
        try:
            while True:
                item = await entry.queue.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]  # only strings besides the markers
        finally:
            self._streams.discard(entry)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


async def watch_for_stop(
    is_stopping: Callable[[], Awaitable[bool]],
    budget_s: float,
    margin_s: float,
    on_cut: Callable[[], Awaitable[None]],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    poll_s: float = STOP_POLL_S,
) -> StopPlan:
    """Poll until the replica is stopping, wait until the plan's cut time, then run `on_cut`."""
    while True:
        try:
            if await is_stopping():
                break
        except asyncio.CancelledError:
            raise
        except Exception:  # the directory may be restarting with the same redeploy; ask again
            logger.warning("asking whether this replica is stopping failed; retrying", exc_info=True)
        await sleep(poll_s)
    plan = StopPlan(budget_s=budget_s, margin_s=margin_s, seen_at=clock())
    logger.info(
        "replica is stopping: requests still open in %.1f s end with an error (%.1f s before Ray's kill)",
        plan.cut_at - plan.seen_at,
        margin_s,
    )
    await sleep(max(0.0, plan.cut_at - clock()))
    await on_cut()
    return plan
