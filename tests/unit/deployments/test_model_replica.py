"""deployments/model/replica.py: load/unload, the drain and its cut, stop handling and reconciling,
with a FakeEngine, a FakeDirectoryClient and a FakeClock (no Ray, no real waiting); the replica and
its fakes come as a Rig (replica_rig.py)."""

from __future__ import annotations

import asyncio

import pytest

from deployments.model.replica import DRAIN_POLL_S, RECONCILE_PERIOD_S, DrainBudgets
from serve_app.errors import ModelNotLoaded, ServiceUnavailable
from serve_app.protocol import ChatCompletionChunk

from ..fakes import FakeEngine
from ..support import turns_until
from .replica_rig import (
    BUDGETS,
    MODEL,
    Rig,
    StreamingRig,
    admission_error,
    chat_stream,
    content_of,
    make_rig,
    started_rig,
    streaming_rig,
    unload_into_its_drain,
)


@pytest.fixture
async def ready() -> Rig:
    """A started replica, its model loaded, on a clock whose sleeps return at once."""
    return await started_rig()


@pytest.fixture
async def streaming() -> StreamingRig:
    """A stream open on a started replica whose sleeps return at once (a drain runs out at once)."""
    return await streaming_rig()


@pytest.fixture
async def streaming_on_held_clock() -> StreamingRig:
    """A stream open on a started replica whose clock moves only by `clock.advance`."""
    return await streaming_rig(auto_clock=False)


# ---------------------------------------------------------------- start


async def test_start_loads_when_the_model_is_desired_loaded() -> None:
    rig = make_rig(desired="loaded")
    await rig.replica.start()
    assert rig.replica.state == "ready" and rig.engine.running and rig.engine.starts == 1
    assert rig.directory.states == ["unloaded", "loading"]
    received: list[ChatCompletionChunk] = []
    await chat_stream(rig.replica, received)
    assert content_of(received) == "Hello there!"
    assert received[-1].choices[0].finish_reason == "stop"
    assert rig.replica.inflight == 0


async def test_start_does_not_load_when_the_model_is_desired_unloaded() -> None:
    rig = make_rig(desired="unloaded")
    await rig.replica.start()
    assert rig.replica.state == "unloaded" and rig.engine.starts == 0 and not rig.engine.running
    assert rig.directory.states == ["unloaded"]
    error = admission_error(rig.replica)
    assert isinstance(error, ModelNotLoaded) and error.status == 409


async def test_an_engine_that_cannot_start_fails_the_replica() -> None:
    rig = make_rig(FakeEngine(start_error=RuntimeError("CUDA out of memory")), desired="loaded")
    with pytest.raises(RuntimeError, match=f"engine of {MODEL} failed to start"):
        await rig.replica.start()
    assert rig.replica.state == "failed"
    assert rig.replica.error == "engine failed to start: RuntimeError"
    assert rig.engine.shutdowns == 1  # what the engine had started is stopped
    assert rig.directory.reports[-1] == ("failed", "engine failed to start: RuntimeError")
    error = admission_error(rig.replica)
    assert isinstance(error, ServiceUnavailable) and error.code == "model_loading"


# ---------------------------------------------------------------- unload


async def test_unload_without_open_requests_shuts_the_engine_down_at_once(ready: Rig) -> None:
    replica, engine = ready.replica, ready.engine
    await replica.unload()
    assert replica.state == "unloaded" and engine.shutdowns == 1 and not engine.running
    assert engine.aborted_all == 0 and ready.clock.sleeps == []
    assert ready.directory.states[-1] == "unloading"
    assert isinstance(admission_error(replica), ModelNotLoaded)


async def test_unload_cuts_a_stream_that_outlasts_the_drain_with_model_unloading(
    streaming_on_held_clock: StreamingRig,
) -> None:
    rig = streaming_on_held_clock
    replica, engine, clock, stream = rig.replica, rig.engine, rig.clock, rig.stream

    unloading = await unload_into_its_drain(rig)
    await clock.advance(BUDGETS.unload_s - DRAIN_POLL_S)
    assert engine.aborted_all == 0 and not stream.done() and engine.running  # still within budget
    await clock.advance(2 * DRAIN_POLL_S)
    # cut at the first drain poll at or past the budget
    [aborted_at] = engine.aborted_at
    assert BUDGETS.unload_s <= aborted_at <= BUDGETS.unload_s + DRAIN_POLL_S
    await turns_until(stream.done)
    await clock.advance(BUDGETS.margin_s)
    await turns_until(unloading.done)
    await unloading

    error = stream.exception()
    assert isinstance(error, ServiceUnavailable)
    assert (error.status, error.code, error.retry_after_s) == (503, "model_unloading", 5)
    assert content_of(rig.received) == "Hello"  # what was sent before the cut stays sent
    assert all(c.choices[0].finish_reason is None for c in rig.received if c.choices)
    assert engine.shutdowns == 1 and not engine.running and replica.state == "unloaded"
    assert replica.inflight == 0


async def test_requests_during_an_unload_get_model_not_loaded(
    streaming_on_held_clock: StreamingRig,
) -> None:
    rig = streaming_on_held_clock
    replica, clock = rig.replica, rig.clock
    unloading = await unload_into_its_drain(rig)
    error = admission_error(replica)
    assert isinstance(error, ModelNotLoaded) and (error.status, error.code) == (409, "model_not_loaded")
    rig.engine.release()
    await turns_until(rig.stream.done)
    await clock.advance(DRAIN_POLL_S)
    await unloading
    assert rig.stream.exception() is None


async def test_a_request_that_ends_within_the_unload_budget_completes_normally(
    streaming_on_held_clock: StreamingRig,
) -> None:
    rig = streaming_on_held_clock
    replica, engine, clock, stream = rig.replica, rig.engine, rig.clock, rig.stream
    unloading = await unload_into_its_drain(rig)
    await clock.advance(BUDGETS.unload_s / 2)
    assert engine.running and not stream.done()
    engine.release()
    await turns_until(stream.done)
    assert engine.running  # the engine outlives the request it drains
    await clock.advance(DRAIN_POLL_S)
    await unloading
    assert stream.exception() is None
    assert content_of(rig.received) == "Hello there!"
    assert rig.received[-1].choices[0].finish_reason == "stop"
    assert engine.aborted_all == 0 and replica.cut_error is None
    assert engine.shutdowns == 1 and replica.state == "unloaded"


async def test_after_an_unload_that_cut_requests_the_model_answers_model_not_loaded(
    streaming: StreamingRig,
) -> None:
    await streaming.replica.unload()  # the drain runs out at once
    with pytest.raises(ServiceUnavailable, match="being unloaded"):
        await streaming.stream
    assert streaming.replica.state == "unloaded" and streaming.engine.aborted_all == 1
    error = admission_error(streaming.replica)
    assert isinstance(error, ModelNotLoaded), f"{error.status} {error.code}"


def traceback_length(error: BaseException) -> int:
    length, tb = 0, error.__traceback__
    while tb is not None:
        length, tb = length + 1, tb.tb_next
    return length


async def test_refusals_after_a_cut_do_not_accumulate_tracebacks(streaming: StreamingRig) -> None:
    await streaming.replica.unload()
    with pytest.raises(ServiceUnavailable):
        await streaming.stream
    lengths = [traceback_length(admission_error(streaming.replica)) for _ in range(20)]
    assert lengths[-1] == lengths[0], lengths


async def test_a_reload_after_a_cut_unload_admits_requests_again(streaming: StreamingRig) -> None:
    replica = streaming.replica
    await replica.unload()
    with pytest.raises(ServiceUnavailable, match="being unloaded"):
        await streaming.stream
    await replica.load()
    received: list[ChatCompletionChunk] = []
    await chat_stream(replica, received)  # no longer pauses: the abort released the engine
    assert content_of(received) == "Hello there!" and replica.state == "ready"


# ---------------------------------------------------------------- stop (redeploy, downscale)


async def test_a_stopping_replica_refuses_new_requests_and_cuts_open_ones_at_budget_minus_margin(
    streaming_on_held_clock: StreamingRig,
) -> None:
    rig = streaming_on_held_clock
    replica, engine, clock, directory, stream = rig.replica, rig.engine, rig.clock, rig.directory, rig.stream

    watcher = asyncio.create_task(replica.watch_for_stop())
    await turns_until(lambda: clock.sleeping == 1)
    await clock.advance(5.0)  # five polls: not stopping
    assert directory.stop_questions == 6 and not replica.stopping
    received_before = len(rig.received)

    directory.stopping = True
    await clock.advance(1.0)
    seen_at = clock.now
    assert replica.stopping and directory.stop_questions == 7
    refused = admission_error(replica)
    assert isinstance(refused, ServiceUnavailable)
    assert (refused.code, refused.retry_after_s) == ("model_restarting", 5)
    assert engine.aborted_all == 0 and not stream.done()

    budget_left = BUDGETS.shutdown_s - BUDGETS.margin_s
    await clock.advance(budget_left - 0.5)
    assert engine.aborted_all == 0 and not stream.done()
    await clock.advance(0.5)
    assert engine.aborted_at == [seen_at + budget_left]
    await turns_until(stream.done)
    await clock.advance(BUDGETS.margin_s)
    await turns_until(watcher.done)
    await watcher

    error = stream.exception()
    assert isinstance(error, ServiceUnavailable)
    assert (error.status, error.code, error.retry_after_s) == (503, "model_restarting", 5)
    assert len(rig.received) == received_before and content_of(rig.received) == "Hello"
    assert replica.inflight == 0


async def test_a_stopping_replica_with_nothing_open_cuts_nothing_and_keeps_refusing(ready: Rig) -> None:
    ready.directory.stopping = True
    await ready.replica.watch_for_stop()
    assert ready.engine.aborted_all == 1 and ready.replica.inflight == 0
    error = admission_error(ready.replica)
    assert isinstance(error, ServiceUnavailable) and error.code == "model_restarting"


# ---------------------------------------------------------------- reconcile_forever


async def test_reconcile_forever_follows_the_desired_state() -> None:
    rig = await started_rig(desired="unloaded")
    replica, engine, directory, clock = rig.replica, rig.engine, rig.directory, rig.clock
    reconciler = asyncio.create_task(replica.reconcile_forever())

    await turns_until(lambda: len(clock.sleeps) >= 3)
    assert replica.state == "unloaded" and engine.starts == 0

    directory.desired = "loaded"
    await turns_until(lambda: replica.state == "ready")
    assert engine.starts == 1

    directory.desired = "unloaded"
    await turns_until(lambda: replica.state == "unloaded")
    assert engine.shutdowns == 1

    directory.report_errors = 3  # a directory that cannot be reached is asked again
    directory.desired = "loaded"
    await turns_until(lambda: replica.state == "ready")
    assert engine.starts == 2 and directory.report_errors == 0

    await turns_until(lambda: directory.states[-1] == "ready")  # reports double as heartbeats
    assert set(clock.sleeps) == {RECONCILE_PERIOD_S}
    reconciler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reconciler


async def test_reconcile_keeps_reporting_while_an_unload_drains() -> None:
    rig = await streaming_rig(
        auto_clock=False, budgets=DrainBudgets(unload_s=60.0, shutdown_s=30.0, margin_s=5.0)
    )
    replica, engine, directory, clock = rig.replica, rig.engine, rig.directory, rig.clock
    reconciler = asyncio.create_task(replica.reconcile_forever())
    await turns_until(lambda: clock.sleeping == 1)

    directory.desired = "unloaded"
    await clock.advance(RECONCILE_PERIOD_S)
    await turns_until(lambda: replica.state == "unloading")
    reports = len(directory.reports)
    await clock.advance(10 * RECONCILE_PERIOD_S)
    assert len(directory.reports) >= reports + 10  # one report per period, the drain notwithstanding
    assert directory.states[-1] == "unloading" and engine.starts == 1 and engine.aborted_all == 0

    engine.release()
    await turns_until(rig.stream.done)
    await clock.advance(RECONCILE_PERIOD_S)
    await turns_until(lambda: replica.state == "unloaded")
    assert rig.stream.exception() is None and engine.shutdowns == 1 and engine.aborted_all == 0
    reconciler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reconciler


async def test_stop_ends_a_late_request_with_model_restarting_not_a_dead_engine(
    streaming: StreamingRig,
) -> None:
    # Serve may route a request here just before the replica stops; __del__ (stop) must end it as a
    # clean, retryable restart, then shut the engine down.
    await streaming.replica.stop()
    with pytest.raises(ServiceUnavailable) as ended:
        await streaming.stream
    assert ended.value.code == "model_restarting"
    assert streaming.engine.aborted_all == 1 and streaming.engine.shutdowns == 1
    assert admission_error(streaming.replica).code == "model_restarting"
