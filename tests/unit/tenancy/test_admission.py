"""deployments/ingress/tenancy/admission.py: the per-model gate serves the best tier first."""

from __future__ import annotations

import asyncio

import pytest

from deployments.ingress.tenancy.admission import PriorityGate
from serve_app.errors import Overloaded


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


async def test_reserved_slots_stay_free_for_the_high_tier() -> None:
    gate = PriorityGate(slots=4, max_waiting=None, reserved=1)
    for _ in range(3):
        await gate.acquire(2)
    low = asyncio.create_task(gate.acquire(2))
    normal = asyncio.create_task(gate.acquire(1))
    await settle()
    assert gate.in_use == 3 and gate.waiting == 2  # the lower tiers may hold 3 of the 4 slots
    await gate.acquire(0)  # a high-tier request starts at once, past the waiting lower tiers
    assert gate.in_use == 4
    gate.release()  # the high one ends: the lower tiers are still at their cap
    await settle()
    assert not low.done() and not normal.done()
    gate.release()  # a lower one ends: its slot goes to the best waiter, normal before low
    await settle()
    assert normal.done() and not low.done()
    gate.release()
    await settle()
    assert low.done() and gate.in_use == 3


def test_reserving_every_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        PriorityGate(slots=2, max_waiting=None, reserved=2)


async def test_a_full_queue_turns_away_its_worst_tier_not_a_better_newcomer() -> None:
    gate = PriorityGate(slots=1, max_waiting=2)
    await gate.acquire(1)
    low = asyncio.create_task(gate.acquire(2))
    normal = asyncio.create_task(gate.acquire(1))
    await settle()
    with pytest.raises(Overloaded):
        await gate.acquire(2)  # no worse waiter to turn away: the newcomer is refused
    high = asyncio.create_task(gate.acquire(0))
    await settle()
    with pytest.raises(Overloaded):
        await low  # the low one made room for the high one
    assert gate.waiting == 2
    gate.release()
    await high
    assert not normal.done()
    gate.release()
    await normal
    assert gate.in_use == 1
