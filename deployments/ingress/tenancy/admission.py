"""Who waits first: a per-model gate in the ingress that lets at most the model deployment's
capacity of tenant requests through at once and queues the rest by tier (FIFO within a tier).

Ray Serve's own queue in front of a model is first come, first served, and vLLM's priority
scheduling only orders what reaches the engine; so under overload the gate keeps the waiting here,
where the best tier is served first. The lower tiers may hold at most `slots - reserved` of the
slots: the rest stay free for the best tier, whose requests then start without waiting for a
running one to finish. A request that would wait past the deployment's queue bound gets the same
429 `overloaded` as Serve's backpressure.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from serve_app.errors import Overloaded

BEST = 0  # the high tier's priority (deployments/ingress/tenancy/keys.py TIER_PRIORITY)


class PriorityGate:
    def __init__(self, slots: int, max_waiting: int | None, retry_after_s: int = 2, reserved: int = 0):
        if not 0 <= reserved < slots:
            raise ValueError(f"reserved slots ({reserved}) must be fewer than the slots ({slots})")
        self.slots, self.max_waiting, self.retry_after_s = slots, max_waiting, retry_after_s
        self.reserved = reserved
        self.in_use = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    def cap(self, priority: int) -> int:
        return self.slots if priority <= BEST else self.slots - self.reserved

    def _best_waiting(self) -> int | None:
        while self._waiting and self._waiting[0][2].done():
            heapq.heappop(self._waiting)  # cancelled waiters
        return self._waiting[0][0] if self._waiting else None

    async def acquire(self, priority: int) -> None:
        ahead = self._best_waiting()
        if (ahead is None or ahead > priority) and self.in_use < self.cap(priority):
            self.in_use += 1
            return
        if self.max_waiting is not None and self.waiting >= self.max_waiting:
            # A full queue turns away its worst tier: a waiter of a worse tier than this request
            # gives up its place (the lower tiers absorb the overload), else this request is refused.
            worst = max((w for w in self._waiting if not w[2].done()), key=lambda w: (w[0], w[1]))
            if worst[0] <= priority:
                raise self._overloaded()
            worst[2].set_exception(self._overloaded())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), future))
        try:
            await future
        except Overloaded:
            self._waiting = [w for w in self._waiting if w[2] is not future]
            heapq.heapify(self._waiting)
            raise
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as the waiter gave up
            raise

    def _overloaded(self) -> Overloaded:
        error = Overloaded("The model's queue is full; retry after a short wait.")
        error.retry_after_s = self.retry_after_s
        return error

    def release(self) -> None:
        self.in_use -= 1
        # Hand free slots to the best waiters; a waiter its tier's cap holds back holds back the
        # (worse) ones behind it too.
        while (priority := self._best_waiting()) is not None and self.in_use < self.cap(priority):
            _, _, future = heapq.heappop(self._waiting)
            self.in_use += 1
            future.set_result(None)

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()
