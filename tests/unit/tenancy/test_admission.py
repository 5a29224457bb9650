"""serve_app/tenancy/admission.py: the per-model gate serves the best tier first."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.errors import Overloaded
from serve_app.tenancy.admission import PriorityGate


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_pass_best_tier_first_fifo_within_a_tier() -> None:
    gate = PriorityGate(slots=1, max_waiting=None)
    order: list[str] = []
    await gate.acquire(1)

    async def request(name: str, priority: int) -> None:
        async with gate.slot(priority):
            order.append(name)
            await settle()

    tasks = []
    for name, priority in [("low-1", 2), ("normal-1", 1), ("low-2", 2), ("high-1", 0), ("high-2", 0)]:
        tasks.append(asyncio.create_task(request(name, priority)))
        await settle()
    assert gate.waiting == 5 and order == []
    gate.release()
    await asyncio.gather(*tasks)
    assert order == ["high-1", "high-2", "normal-1", "low-1", "low-2"]
    assert gate.in_use == 0 and gate.waiting == 0


async def test_free_slots_pass_at_once_and_a_full_queue_is_overloaded() -> None:
    gate = PriorityGate(slots=2, max_waiting=1, retry_after_s=3)
    await gate.acquire(2)
    await gate.acquire(2)
    waiter = asyncio.create_task(gate.acquire(0))
    await settle()
    with pytest.raises(Overloaded) as refused:
        await gate.acquire(0)
    assert refused.value.retry_after_s == 3 and refused.value.status == 429
    gate.release()
    await waiter
    assert gate.in_use == 2


async def test_a_cancelled_waiter_gives_up_its_place_and_never_leaks_a_slot() -> None:
    gate = PriorityGate(slots=1, max_waiting=None)
    await gate.acquire(1)
    gone = asyncio.create_task(gate.acquire(0))
    stays = asyncio.create_task(gate.acquire(2))
    await settle()
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    gate.release()
    await stays
    gate.release()
    assert gate.in_use == 0

    # Cancelled after the slot was handed over, before it ran: the slot comes back.
    await gate.acquire(1)
    late = asyncio.create_task(gate.acquire(0))
    await settle()
    gate.release()  # hands the slot to `late`
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    assert gate.in_use == 0
