"""serve_app/draining.py: the one-way cut switch of InflightRequests and the stop watcher's timing.

No real waiting: event-loop turns are counted, and time comes from a FakeClock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from serve_app.draining import InflightRequests, StopPlan, watch_for_stop
from serve_app.errors import ServiceError, ServiceUnavailable, restarting

from .fakes import FakeClock
from .support import turns_until

TURNS = 50  # loop turns in which a hand-off in this module would have happened


def same_error(raised: BaseException, cut: ServiceError) -> bool:
    """The cut's error, as a fresh instance per request (one shared instance would collect every
    raise's traceback)."""
    return (
        raised is not cut
        and type(raised) is type(cut)
        and isinstance(raised, ServiceError)
        and (raised.message, raised.code, raised.param, raised.retry_after_s)
        == (cut.message, cut.code, cut.param, cut.retry_after_s)
    )


def cut_error() -> ServiceUnavailable:
    return restarting("the test cut it", "service_restarting")


class FakeSource:
    """An SSE source: yields `items`, then (when `block`) waits forever. Records how it ended."""

    def __init__(self, items: list[str], *, block: bool = True, error: Exception | None = None):
        self.items = items
        self.block = block
        self.error = error
        self.delivered = 0
        self.blocked = False
        self.finally_ran = False
        self.cancelled = False

    async def events(self) -> AsyncIterator[str]:
        try:
            for item in self.items:
                self.delivered += 1
                yield item
            if self.error is not None:
                raise self.error
            if self.block:
                self.blocked = True
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.finally_ran = True


async def collect(stream: AsyncIterator[str], into: list[str]) -> None:
    async for item in stream:
        into.append(item)


# ---------------------------------------------------------------- InflightRequests.stream


async def test_a_cut_stream_delivers_what_was_read_then_raises_the_cut_error_and_closes_the_source() -> None:
    inflight = InflightRequests()
    source = FakeSource(["a", "b", "c"])
    stream = inflight.stream(source.events())
    assert await anext(stream) == "a"
    await turns_until(lambda: source.blocked)  # the pump has read "b" and "c" ahead of the reader
    error = cut_error()
    assert inflight.cut(error) == 0  # streams are not `counted` requests
    assert await anext(stream) == "b"
    assert await anext(stream) == "c"
    with pytest.raises(ServiceUnavailable) as raised:
        await anext(stream)
    assert same_error(raised.value, error)
    assert source.finally_ran and source.cancelled


async def test_a_cut_while_the_source_is_blocked_ends_the_stream_within_a_few_turns() -> None:
    inflight = InflightRequests()
    source = FakeSource(["first"])
    received: list[str] = []
    reader = asyncio.create_task(collect(inflight.stream(source.events()), received))
    await turns_until(lambda: source.blocked and received == ["first"])
    assert not reader.done()
    inflight.cut(cut_error())
    await turns_until(reader.done)
    assert isinstance(reader.exception(), ServiceUnavailable)
    assert received == ["first"]
    assert source.finally_ran and source.cancelled


async def test_an_uncut_stream_passes_everything_through_and_ends_normally() -> None:
    inflight = InflightRequests()
    source = FakeSource(["a", "b"], block=False)
    received: list[str] = []
    await collect(inflight.stream(source.events()), received)
    assert received == ["a", "b"] and source.finally_ran and not source.cancelled
    inflight.cut(cut_error())  # a later cut does not reach a stream that has ended
    assert received == ["a", "b"]


async def test_a_source_error_comes_after_the_items_before_it() -> None:
    inflight = InflightRequests()
    source = FakeSource(["a"], error=ValueError("engine said no"))
    received: list[str] = []
    with pytest.raises(ValueError, match="engine said no"):
        await collect(inflight.stream(source.events()), received)
    assert received == ["a"]
    assert inflight.cut_error is None


async def test_a_reader_that_stops_early_closes_the_source() -> None:
    inflight = InflightRequests()
    source = FakeSource(["a", "b"])
    stream = inflight.stream(source.events())
    assert await anext(stream) == "a"
    await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    assert source.finally_ran


# ---------------------------------------------------------------- the switch


async def test_after_the_cut_new_requests_and_streams_are_refused_with_the_cut_error() -> None:
    inflight = InflightRequests()
    error = cut_error()
    inflight.cut(error)
    with pytest.raises(ServiceError) as refused, inflight.counted():
        pytest.fail("a request was admitted after the cut")
    assert same_error(refused.value, error)
    with pytest.raises(ServiceError) as refused:
        inflight.refuse_if_cut()
    assert same_error(refused.value, error)
    source = FakeSource(["never"])
    with pytest.raises(ServiceError) as refused:
        await anext(inflight.stream(source.events()))
    assert same_error(refused.value, error) and source.delivered == 0
    assert inflight.open == 0


async def test_counted_requests_are_counted_while_open_and_reported_by_the_cut() -> None:
    inflight = InflightRequests()
    with inflight.counted():
        with inflight.counted():
            assert inflight.open == 2
        assert inflight.cut(cut_error()) == 1
    assert inflight.open == 0


async def test_the_switch_is_one_way_the_first_error_stays() -> None:
    inflight = InflightRequests()
    first, second = cut_error(), restarting("another reason", "model_restarting")
    inflight.cut(first)
    inflight.cut(second)
    assert inflight.cut_error is first
    assert same_error(await inflight.wait_cut(), first)


async def test_wait_cut_returns_the_error_once_the_switch_flips() -> None:
    inflight = InflightRequests()
    waiter = asyncio.create_task(inflight.wait_cut())
    for _ in range(TURNS):
        await asyncio.sleep(0)
    assert not waiter.done()
    error = cut_error()
    inflight.cut(error)
    await turns_until(waiter.done)
    assert same_error(waiter.result(), error)
    assert same_error(await inflight.wait_cut(), error)  # and at once afterwards


# ---------------------------------------------------------------- watch_for_stop


class FakeStopSignal:
    """`is_stopping` answers from a script (the last answer repeats); an exception is raised."""

    def __init__(self, answers: list[bool | BaseException]):
        self.answers = answers
        self.asked = 0

    async def is_stopping(self) -> bool:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        if isinstance(answer, BaseException):
            raise answer
        return answer


class FakeCutRecorder:
    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.cut_at: list[float] = []

    async def on_cut(self) -> None:
        self.cut_at.append(self.clock.now)


async def test_watch_for_stop_polls_until_stopping_then_cuts_at_budget_minus_margin() -> None:
    clock = FakeClock(100.0)
    signal = FakeStopSignal([False, False, False, True])
    recorder = FakeCutRecorder(clock)
    plan = await watch_for_stop(
        signal.is_stopping, 30.0, 5.0, recorder.on_cut, clock=clock, sleep=clock.sleep, poll_s=0.5
    )
    assert signal.asked == 4
    assert clock.sleeps == [0.5, 0.5, 0.5, 25.0]
    assert plan == StopPlan(budget_s=30.0, margin_s=5.0, seen_at=101.5)
    assert plan.cut_at == 126.5
    assert recorder.cut_at == [126.5]


async def test_watch_for_stop_counts_the_time_spent_since_the_stop_was_seen() -> None:
    # Every clock reading costs 0.25 s: readings after the stop was seen must not move the cut
    # off seen_at + budget - margin (a sleep from a later reading has to subtract it).
    clock = FakeClock(0.0, tick=0.25)
    recorder = FakeCutRecorder(clock)
    plan = await watch_for_stop(
        FakeStopSignal([True]).is_stopping, 10.0, 4.0, recorder.on_cut, clock=clock, sleep=clock.sleep
    )
    assert plan.seen_at == 0.25
    assert recorder.cut_at == [plan.cut_at] == [6.25]


async def test_watch_for_stop_cuts_at_once_when_the_margin_exceeds_the_budget() -> None:
    clock = FakeClock(7.0)
    recorder = FakeCutRecorder(clock)
    plan = await watch_for_stop(
        FakeStopSignal([True]).is_stopping, 3.0, 5.0, recorder.on_cut, clock=clock, sleep=clock.sleep
    )
    assert plan.cut_at == 7.0 and clock.sleeps == [0.0] and recorder.cut_at == [7.0]


async def test_watch_for_stop_retries_a_failing_question(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    signal = FakeStopSignal([RuntimeError("directory restarting"), ConnectionError("gone"), True])
    recorder = FakeCutRecorder(clock)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        plan = await watch_for_stop(
            signal.is_stopping, 20.0, 5.0, recorder.on_cut, clock=clock, sleep=clock.sleep, poll_s=1.0
        )
    assert signal.asked == 3
    assert clock.sleeps == [1.0, 1.0, 15.0]
    assert plan.seen_at == 2.0 and recorder.cut_at == [17.0]
    assert sum("failed; retrying" in r.getMessage() for r in caplog.records) == 2


async def test_watch_for_stop_does_not_cut_while_the_replica_is_not_stopping() -> None:
    clock = FakeClock(auto=False)
    recorder = FakeCutRecorder(clock)
    watcher = asyncio.create_task(
        watch_for_stop(
            FakeStopSignal([False]).is_stopping, 20.0, 5.0, recorder.on_cut, clock=clock, sleep=clock.sleep
        )
    )
    await turns_until(lambda: clock.sleeping == 1)
    await clock.advance(3600.0)
    assert not watcher.done() and recorder.cut_at == []
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher


async def test_watch_for_stop_lets_cancellation_of_the_question_through() -> None:
    clock = FakeClock()
    recorder = FakeCutRecorder(clock)
    with pytest.raises(asyncio.CancelledError):
        await watch_for_stop(
            FakeStopSignal([asyncio.CancelledError()]).is_stopping,
            20.0,
            5.0,
            recorder.on_cut,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps == [] and recorder.cut_at == []
