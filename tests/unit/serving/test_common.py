"""deployments/model/serving/common.py: stream merging and the observed engine steps shared by
both routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from deployments.model.serving.common import merge, observed
from serve_app.engine_api import EngineStep, SampleDelta
from serve_app.errors import RequestAborted, ServiceUnavailable
from serve_app.metrics import NoMetrics


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
    # "slow" produces nothing until "fast" has been read to its end: a merge that drained its
    # sources one after the other would hang here (turned into a failure by the timeout).
    fast_done = asyncio.Event()

    async def slow() -> AsyncIterator[str]:
        await fast_done.wait()
        yield "slow0"

    async def fast() -> AsyncIterator[str]:
        yield "fast0"
        yield "fast1"

    merged: list[str] = []
    async with asyncio.timeout(60):
        async for _, value in merge([slow(), fast()]):
            merged.append(value)
            if value == "fast1":
                fast_done.set()
    assert merged == ["fast0", "fast1", "slow0"]


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


async def _steps(*finish_reasons: str | None) -> AsyncIterator[EngineStep]:
    for reason in finish_reasons:
        yield EngineStep(
            prompt_token_count=3,
            samples=[SampleDelta(index=0, text="x", token_ids=[7], finish_reason=reason)],
        )


@pytest.mark.parametrize(
    ("reason", "error", "code"),
    [("abort", RequestAborted, "request_aborted"), ("error", ServiceUnavailable, "engine_error")],
)
async def test_observed_turns_vllm_only_finish_reasons_into_errors(
    reason: str, error: type[Exception], code: str
) -> None:
    seen: list[EngineStep] = []
    with pytest.raises(error) as info:
        async for step in observed(_steps(None, reason), NoMetrics(), "m", 0.0):
            seen.append(step)
    assert len(seen) == 1, "the steps before the abort pass through"
    assert getattr(info.value, "code", None) == code


async def test_observed_passes_openai_finish_reasons() -> None:
    steps = [s async for s in observed(_steps(None, "length"), NoMetrics(), "m", 0.0)]
    assert [s.samples[0].finish_reason for s in steps] == [None, "length"]
