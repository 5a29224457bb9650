"""A ModelReplica on fakes for tests/unit/deployments/test_model_replica.py: a FakeDirectoryClient,
the Rig that holds a replica with its FakeEngine, FakeClock and directory, and the stream helpers.

Requests go the way deployments/model/server.py sends them: `replica.serving()[0].stream(...)`
inside `replica.admitted()`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from deployments.model.replica import DrainBudgets, ModelReplica
from serve_app.config.app_args import RequestLimits
from serve_app.contracts import DesiredState
from serve_app.errors import ServiceError
from serve_app.protocol import ChatCompletionChunk, ChatCompletionRequest, ModelState

from ..fakes import FakeClock, FakeEngine
from ..support import turns_until

MODEL = "qwen2.5-7b"
REPLICA = "replica-1"
BUDGETS = DrainBudgets(unload_s=2.0, shutdown_s=30.0, margin_s=5.0)


class FakeDirectoryClient:
    """The ModelDirectory as a replica sees it: records reports, answers `desired`; `stopping`
    answers is_stopping; `report_errors` makes that many next reports raise."""

    def __init__(self, desired: DesiredState = "loaded") -> None:
        self.desired = desired
        self.stopping = False
        self.report_errors = 0
        self.reports: list[tuple[ModelState, str | None]] = []
        self.stop_questions = 0

    async def report(
        self, model_id: str, replica_id: str, state: ModelState, error: str | None
    ) -> DesiredState:
        assert (model_id, replica_id) == (MODEL, REPLICA)
        if self.report_errors:
            self.report_errors -= 1
            raise ConnectionError("directory unreachable")
        self.reports.append((state, error))
        return self.desired

    async def is_stopping(self, replica_id: str) -> bool:
        assert replica_id == REPLICA
        self.stop_questions += 1
        return self.stopping

    @property
    def states(self) -> list[ModelState]:
        return [state for state, _ in self.reports]


@dataclass
class Rig:
    """A ModelReplica and the fakes it runs on."""

    replica: ModelReplica
    engine: FakeEngine
    directory: FakeDirectoryClient
    clock: FakeClock


@dataclass
class StreamingRig(Rig):
    """A started replica with one open stream: it has sent its first content chunk ("Hello") and
    waits on the engine until `engine.release()`."""

    stream: asyncio.Task[None]
    received: list[ChatCompletionChunk]


def make_rig(
    engine: FakeEngine | None = None,
    *,
    desired: DesiredState = "loaded",
    auto_clock: bool = True,
    budgets: DrainBudgets = BUDGETS,
) -> Rig:
    """A replica that is not started yet. With `auto_clock` every sleep returns at once (a drain
    runs out at once); otherwise time moves only by `clock.advance`."""
    clock = FakeClock(auto=auto_clock)
    engine = engine or FakeEngine()
    engine.clock = clock
    directory = FakeDirectoryClient(desired)
    replica = ModelReplica(
        MODEL, REPLICA, engine, RequestLimits(), directory, budgets, clock=clock, sleep=clock.sleep
    )
    return Rig(replica, engine, directory, clock)


async def started_rig(**options: Any) -> Rig:
    """`make_rig(**options)`, started."""
    rig = make_rig(**options)
    await rig.replica.start()
    return rig


async def streaming_rig(**options: Any) -> StreamingRig:
    """A started replica (`make_rig(**options)` with an engine that pauses after its first chunk)
    and one stream open on it."""
    rig = await started_rig(engine=FakeEngine(pause_after=1), **options)
    stream, received = await open_paused_stream(rig.replica, rig.engine)
    return StreamingRig(**vars(rig), stream=stream, received=received)


def chat_request() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )


async def chat_stream(replica: ModelReplica, received: list[ChatCompletionChunk]) -> None:
    with replica.admitted():
        chunks = await replica.serving()[0].stream(chat_request(), "req-1")
        async for chunk in chunks:
            received.append(chunk)


def content_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def admission_error(replica: ModelReplica) -> ServiceError:
    with pytest.raises(ServiceError) as refused, replica.admitted():
        pytest.fail("the request was admitted")
    return refused.value


async def open_paused_stream(
    replica: ModelReplica, engine: FakeEngine
) -> tuple[asyncio.Task[None], list[ChatCompletionChunk]]:
    """A stream that has sent its first content chunk and waits on the engine."""
    received: list[ChatCompletionChunk] = []
    task = asyncio.create_task(chat_stream(replica, received))
    await turns_until(lambda: engine.paused == 1 and len(received) == 2)
    assert replica.inflight == 1
    return task, received


async def unload_into_its_drain(rig: Rig) -> asyncio.Task[None]:
    """An unload on a held clock, started and waiting in its drain."""
    unloading = asyncio.create_task(rig.replica.unload())
    await turns_until(lambda: rig.replica.state == "unloading" and rig.clock.sleeping == 1)
    return unloading
