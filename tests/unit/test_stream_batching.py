"""deployments/model/stream_batching.py: SSE events joined per time window, first event at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from deployments.model.stream_batching import batch_events


async def _events(*steps: str | float, closed: list[bool] | None = None) -> AsyncIterator[str]:
    """Yields the strings; a float is a pause of that many seconds."""
    try:
        for step in steps:
            if isinstance(step, float):
                await asyncio.sleep(step)
            else:
                yield step
    finally:
        if closed is not None:
            closed.append(True)


async def _collect(stream: AsyncIterator[str]) -> list[str]:
    return [item async for item in stream]


async def test_window_zero_passes_every_event_through() -> None:
    items = await _collect(batch_events(_events("a", "b", "c"), 0))
    assert items == ["a", "b", "c"]


# Verdicts below depend on the order of events, never on how fast this machine is: a source that
# waits for the reader (a gate) proves an event went out without waiting for the next one, and a
# one-hour window makes "held for the window" a hang, which HANG_GUARD_S turns into a failure.
HOUR = 3600.0
HANG_GUARD_S = 60


async def _gated(*steps: str | asyncio.Event) -> AsyncIterator[str]:
    """Yields the strings; an Event is a stall until the reader sets it."""
    for step in steps:
        if isinstance(step, asyncio.Event):
            await step.wait()
        else:
            yield step


async def _read_opening(stream: AsyncIterator[str], gate: asyncio.Event, count: int) -> list[str]:
    """Read `count` items (the source stalls at `gate` meanwhile), then open the gate, read the rest."""
    received: list[str] = []
    async with asyncio.timeout(HANG_GUARD_S):
        for _ in range(count):
            received.append(await anext(stream))
        gate.set()
        received.extend([item async for item in stream])
    return received


async def test_first_events_at_once_then_ready_events_travel_together() -> None:
    items = await _collect(batch_events(_events("a", "b", "c", "d", "e"), HOUR, immediate=1))
    assert items == ["a", "bcde"]
    gate = asyncio.Event()
    stream = batch_events(_gated("a", gate, "b", "c"), HOUR, immediate=1)
    assert await _read_opening(stream, gate, 1) == ["a", "bc"], "'a' must go out before 'b' exists"


async def test_the_first_token_after_the_role_chunk_is_not_held() -> None:
    # A chat stream: the role chunk at once, the first token after a prefill (the source stalls
    # until the reader has it, so a first token held for the window would never arrive).
    gate = asyncio.Event()
    stream = batch_events(_gated("role", "tok1", gate, "tok2", "tok3"), HOUR)
    assert await _read_opening(stream, gate, 2) == ["role", "tok1", "tok2tok3"]


async def test_a_stalled_source_does_not_hold_a_partial_batch() -> None:
    # The source stalls after "b" until the reader has "b": only the window's timer can send it.
    gate = asyncio.Event()
    stream = batch_events(_gated("a", "b", gate, "c"), 0.05, immediate=1)
    assert await _read_opening(stream, gate, 2) == ["a", "b", "c"]


async def test_spaced_events_are_not_delayed() -> None:
    items = await _collect(batch_events(_events("a", 0.06, "b", 0.06, "c"), 0.05))
    assert items == ["a", "b", "c"]


async def test_an_error_comes_after_the_events_before_it() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        raise RuntimeError("engine died")

    received: list[str] = []
    with pytest.raises(RuntimeError, match="engine died"):
        async for item in batch_events(failing(), 0.05):
            received.append(item)
    assert "".join(received) == "ab"


async def test_a_consumer_that_stops_early_closes_the_source() -> None:
    closed: list[bool] = []
    stream = batch_events(_events("a", 0.5, "b", closed=closed), 0.05)
    assert await anext(stream) == "a"
    await stream.aclose()  # type: ignore[attr-defined]
    assert closed == [True]
