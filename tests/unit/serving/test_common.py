"""serve_app/serving/common.py: stream merging and the sampling/limit mapping shared by both routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve_app.serving.common import merge


async def _items(name: str, count: int, pause: float = 0.0) -> AsyncIterator[str]:
    for i in range(count):
        await asyncio.sleep(pause)
        yield f"{name}{i}"


async def test_merge_tags_items_and_keeps_each_source_in_order() -> None:
    merged = [item async for item in merge([_items("a", 3), _items("b", 2)])]
    assert sorted(merged) == [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b0"), (1, "b1")]
    assert [v for i, v in merged if i == 0] == ["a0", "a1", "a2"]
    assert [v for i, v in merged if i == 1] == ["b0", "b1"]


async def test_merge_interleaves_as_items_arrive() -> None:
    merged = [v async for _, v in merge([_items("slow", 2, pause=0.02), _items("fast", 2)])]
    assert merged.index("fast1") < merged.index("slow0")


async def test_merge_of_one_source_passes_through() -> None:
    assert [item async for item in merge([_items("a", 2)])] == [(0, "a0"), (0, "a1")]


async def test_merge_reraises_a_source_error_and_stops_the_others() -> None:
    cancelled = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield "tick"
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def failing() -> AsyncIterator[str]:
        yield "ok"
        raise ValueError("engine failed")

    with pytest.raises(ValueError, match="engine failed"):
        async for _ in merge([endless(), failing()]):
            pass
    await asyncio.wait_for(cancelled.wait(), 1)
