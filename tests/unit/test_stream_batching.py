"""serve_app/stream_batching.py: SSE events joined per time window, first event at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from serve_app.stream_batching import batch_events


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


async def _collect(stream: AsyncIterator[str]) -> list[tuple[str, float]]:
    started = time.monotonic()
    return [(item, time.monotonic() - started) async for item in stream]


async def test_window_zero_passes_every_event_through() -> None:
    items = await _collect(batch_events(_events("a", "b", "c"), 0))
    assert [i for i, _ in items] == ["a", "b", "c"]


async def test_first_events_at_once_then_ready_events_travel_together() -> None:
    items = await _collect(batch_events(_events("a", "b", "c", "d", "e"), 0.05, immediate=1))
    assert [i for i, _ in items] == ["a", "bcde"]
    assert items[0][1] < 0.02


async def test_the_first_token_after_the_role_chunk_is_not_held() -> None:
    # A chat stream: the role chunk at once, the first token after a short prefill.
    items = await _collect(batch_events(_events("role", 0.01, "tok1", "tok2", "tok3"), 0.2))
    assert [i for i, _ in items] == ["role", "tok1", "tok2tok3"]
    assert items[1][1] < 0.1, "the first token must not wait for the window"


async def test_a_stalled_source_does_not_hold_a_partial_batch() -> None:
    items = await _collect(batch_events(_events("a", "b", 0.3, "c"), 0.05, immediate=1))
    assert [i for i, _ in items] == ["a", "b", "c"]
    assert items[1][1] < 0.2, "the timer must flush 'b' while the source stalls"
    assert items[2][1] >= 0.3


async def test_spaced_events_are_not_delayed() -> None:
    items = await _collect(batch_events(_events("a", 0.06, "b", 0.06, "c"), 0.05))
    assert [i for i, _ in items] == ["a", "b", "c"]


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
