"""Time-window batching of an SSE stream: fewer, larger items across Ray's per-item streaming.

Each SSE event stays the OpenAI chunk object it was (one engine step's tokens); only the
events that are ready within one window travel together, as one string, so the client's SSE parser
sees exactly the same events. The first `immediate` events go out at once (a chat stream's role
chunk and its first token), so TTFT is unchanged; after that an event waits at most `window_s` (a
timer flushes a partial batch when the engine stalls).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator


class _End:
    """Queue marker: the source is exhausted."""


async def _pump(source: AsyncIterator[str], queue: asyncio.Queue[str | _End | BaseException]) -> None:
    try:
        async for event in source:
            queue.put_nowait(event)
    except Exception as exc:  # handed to the consumer, which re-raises it after the earlier events
        queue.put_nowait(exc)
    else:
        queue.put_nowait(_End())


async def batch_events(source: AsyncIterator[str], window_s: float, immediate: int = 2) -> AsyncIterator[str]:
    """`source`'s SSE strings, those that arrive within `window_s` of a flush joined into one."""
    if window_s <= 0:
        async for event in source:
            yield event
        return
    queue: asyncio.Queue[str | _End | BaseException] = asyncio.Queue()
    pump = asyncio.create_task(_pump(source, queue))
    try:
        pending: list[str] = []
        flushed_at: float | None = None
        while True:
            if pending and flushed_at is not None:
                remaining = flushed_at + window_s - time.monotonic()
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, remaining))
                except TimeoutError:
                    yield "".join(pending)
                    pending, flushed_at = [], time.monotonic()
                    continue
            else:
                item = await queue.get()
            if isinstance(item, _End | BaseException):
                if pending:
                    yield "".join(pending)
                if isinstance(item, BaseException):
                    raise item
                return
            pending.append(item)
            immediate -= 1
            if immediate >= 0 or flushed_at is None or time.monotonic() - flushed_at >= window_s:
                yield "".join(pending)
                pending, flushed_at = [], time.monotonic()
    finally:
        # The consumer may stop early (client gone): stop reading, so the source's own cleanup
        # (aborting the engine request) runs now.
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
