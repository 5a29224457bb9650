"""deployments/model_directory.py: the Ray-free ModelDirectoryState and aggregate_state (its desired
states kept across restarts: test_desired_state_persistence.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from deployments import model_directory
from deployments.model_directory import REPORT_TTL_S, ModelDirectoryState, aggregate_state
from serve_app.contracts import DesiredState, ModelStatus


@pytest.mark.parametrize(
    ("desired", "counts", "expected"),
    [
        ("loaded", {}, "loading"),
        ("loaded", {"ready": 1}, "ready"),
        ("loaded", {"ready": 3}, "ready"),
        ("loaded", {"ready": 1, "loading": 1}, "loading"),
        ("loaded", {"loading": 2}, "loading"),
        ("loaded", {"ready": 1, "unloaded": 1}, "loading"),
        ("loaded", {"unloading": 1}, "loading"),
        ("loaded", {"failed": 2}, "failed"),
        ("loaded", {"failed": 1, "loading": 1}, "loading"),
        ("unloaded", {}, "unloaded"),
        ("unloaded", {"unloaded": 2}, "unloaded"),
        ("unloaded", {"unloaded": 1, "failed": 1}, "unloaded"),
        ("unloaded", {"ready": 1, "unloaded": 1}, "unloading"),
        ("unloaded", {"unloading": 1}, "unloading"),
        ("unloaded", {"ready": 2}, "unloading"),
    ],
)
def test_aggregate_state(desired: DesiredState, counts: dict[str, int], expected: str) -> None:
    assert aggregate_state(desired, counts) == expected


def test_a_new_model_is_desired_loaded_and_loading() -> None:
    state = ModelDirectoryState(["a", "b"])
    assert state.desired_state("a") == "loaded"
    assert state.status("a") == ModelStatus(desired="loaded", state="loading", replicas={}, error=None)


def test_reports_from_replicas_aggregate() -> None:
    state = ModelDirectoryState(["m"])
    assert state.report("m", "r1", "ready", None) == "loaded"
    state.report("m", "r2", "loading", None)
    assert state.status("m").state == "loading"
    assert state.status("m").replicas == {"ready": 1, "loading": 1}
    state.report("m", "r2", "ready", None)
    assert state.status("m").state == "ready" and state.status("m").replicas == {"ready": 2}


async def test_set_desired_is_returned_to_reporting_replicas() -> None:
    state = ModelDirectoryState(["m"])
    state.report("m", "r1", "ready", None)
    await state.set_desired("m", "unloaded")
    assert state.report("m", "r1", "ready", None) == "unloaded"
    assert state.status("m").state == "unloading"
    state.report("m", "r1", "unloaded", None)
    assert state.status("m").model_dump() == {
        "desired": "unloaded",
        "state": "unloaded",
        "replicas": {"unloaded": 1},
        "error": None,
    }


def test_failed_replica_error_is_reported() -> None:
    state = ModelDirectoryState(["m"])
    state.report("m", "r1", "failed", "engine failed to start: OutOfMemoryError")
    status = state.status("m")
    assert status.state == "failed" and status.error == "engine failed to start: OutOfMemoryError"


def test_forgotten_replicas_no_longer_count() -> None:
    state = ModelDirectoryState(["m"])
    state.report("m", "r1", "ready", None)
    state.report("m", "r2", "loading", None)
    state.forget("m", "r2")
    state.forget("m", "never-reported")
    assert state.status("m").state == "ready"


class FakeClock:
    """Stands in for the `time` module of model_directory: a fixed time plus an offset (no real
    time, so a slow machine cannot age a report past the TTL)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return 1000.0 + self.offset


def _stamp_reports(state: ModelDirectoryState, clock: FakeClock) -> None:
    """Date the reports by the fake clock: ReplicaReport's default_factory bound the real
    time.monotonic at import, out of the monkeypatch's reach."""
    for reports in state.reports.values():
        for report in reports.values():
            report.at = clock.monotonic()


def test_stale_reports_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(model_directory, "time", SimpleNamespace(monotonic=clock.monotonic))
    state = ModelDirectoryState(["m"])
    state.report("m", "r1", "ready", None)
    state.report("m", "r2", "ready", None)
    _stamp_reports(state, clock)
    clock.offset = REPORT_TTL_S - 1
    assert state.status("m").replicas == {"ready": 2}
    clock.offset = REPORT_TTL_S + 1  # nobody reported for longer than the TTL
    assert state.status("m") == ModelStatus(desired="loaded", state="loading", replicas={}, error=None)
    assert state.reports["m"] == {}


def test_only_the_silent_replica_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(model_directory, "time", SimpleNamespace(monotonic=clock.monotonic))
    state = ModelDirectoryState(["m"])
    state.report("m", "dead-replica", "loading", "stuck")
    state.report("m", "live-replica", "ready", None)
    _stamp_reports(state, clock)
    assert state.status("m").state == "loading"
    # The dead replica's last report is older than the TTL; the live one just reported.
    state.reports["m"]["dead-replica"].at -= REPORT_TTL_S + 1
    status = state.status("m")
    assert status.replicas == {"ready": 1} and status.state == "ready" and status.error is None
    assert set(state.reports["m"]) == {"live-replica"}


def _details(app: str, states: dict[str, str]) -> dict[str, object]:
    replicas = [{"replica_id": rid, "state": state} for rid, state in states.items()]
    return {"applications": {app: {"deployments": {"ingress": {"replicas": replicas}}}}}


def test_stopping_replica_ids_reads_only_the_app_and_the_stopping_state() -> None:
    details = _details("inference", {"a": "RUNNING", "b": "STOPPING", "c": "STARTING"})
    details["applications"]["tight"] = _details("tight", {"d": "STOPPING"})["applications"]["tight"]  # type: ignore[index]
    assert model_directory.stopping_replica_ids(details, "inference") == {"b"}
    assert model_directory.stopping_replica_ids(details, "tight") == {"d"}
    assert model_directory.stopping_replica_ids(details, "missing") == set()
    assert model_directory.stopping_replica_ids({}, "inference") == set()


async def test_stopping_replicas_poll_survives_a_failed_read(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[object] = [RuntimeError("controller restarting"), _details("app", {"r1": "STOPPING"})]
    reads = 0
    polled = asyncio.Event()

    async def fake_read() -> dict[str, object]:
        nonlocal reads
        reads += 1
        answer = answers[min(reads - 1, len(answers) - 1)]
        if reads >= 2:
            polled.set()
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    monkeypatch.setattr(model_directory, "STOPPING_POLL_S", 0)
    stopping = model_directory.StoppingReplicas(fake_read, "app")
    stopping.ensure_polling()
    stopping.ensure_polling()  # a second call does not start a second poller
    await asyncio.wait_for(polled.wait(), 5)
    await asyncio.sleep(0)
    assert stopping.ids == {"r1"}
    assert stopping._task is not None
    stopping._task.cancel()


async def test_a_new_directory_answers_from_a_fresh_read_not_an_empty_set() -> None:
    reads = 0

    async def fake_read() -> dict[str, object]:
        nonlocal reads
        reads += 1
        return _details("app", {"r1": "STOPPING"})

    stopping = model_directory.StoppingReplicas(fake_read, "app")
    try:
        assert await stopping.current() == {"r1"}
        assert reads >= 1
        assert stopping.read_at is not None
    finally:
        assert stopping._task is not None
        stopping._task.cancel()


def _fake_directory_handle(answer: object) -> SimpleNamespace:
    """A fake of the ModelDirectory's handle whose `is_stopping` answers `answer`: a bool, an
    exception to raise, or None to never answer."""

    async def is_stopping(replica_id: str) -> bool:
        if answer is None:
            await asyncio.Event().wait()
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, bool)
        return answer

    return SimpleNamespace(is_stopping=SimpleNamespace(remote=is_stopping))


@pytest.mark.parametrize("directory_answer", [None, RuntimeError("directory replica stopping")])
async def test_a_replica_asks_the_controller_when_the_directory_does_not_answer(
    directory_answer: object,
) -> None:
    async def fake_read() -> dict[str, object]:
        return _details("app", {"r1": "STOPPING", "r2": "RUNNING"})

    client = model_directory.HandleDirectoryClient(
        _fake_directory_handle(directory_answer), "app", read_details=fake_read, answer_timeout_s=0.01
    )
    assert await client.is_stopping("r1") is True
    assert await client.is_stopping("r2") is False


async def test_a_replica_takes_the_directorys_answer_when_it_comes() -> None:
    async def fake_read() -> dict[str, object]:
        raise AssertionError("the controller is not asked when the directory answers")

    client = model_directory.HandleDirectoryClient(
        _fake_directory_handle(False), "app", read_details=fake_read, answer_timeout_s=5
    )
    assert await client.is_stopping("r1") is False
