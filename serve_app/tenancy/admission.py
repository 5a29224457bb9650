"""Who waits first: a per-model gate in the ingress that lets at most the model deployment's
capacity of tenant requests through at once and queues the rest by tier (FIFO within a tier).

Ray Serve's own queue in front of a model is first come, first served, and vLLM's priority
scheduling only orders what reaches the engine; so under overload the gate keeps the waiting here,
where the high tier is served first, and the engines' batches full. A request that would wait past
the deployment's queue bound gets the same 429 `overloaded` as Serve's backpressure.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from serve_app.errors import Overloaded


class PriorityGate:
    def __init__(self, slots: int, max_waiting: int | None, retry_after_s: int = 2):
        self.slots, self.max_waiting, self.retry_after_s = slots, max_waiting, retry_after_s
        self.in_use = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    async def acquire(self, priority: int) -> None:
        if self.in_use < self.slots and not self.waiting:
            self.in_use += 1
            return
        if self.max_waiting is not None and self.waiting >= self.max_waiting:
            error = Overloaded("The model's queue is full; retry after a short wait.")
            error.retry_after_s = self.retry_after_s
            raise error
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as the waiter gave up
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the slot passes to the best waiter
                return
        self.in_use -= 1

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()
