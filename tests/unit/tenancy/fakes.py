"""Fakes of the tenancy tests: a clock the test moves, and the quota store in process."""

from __future__ import annotations

import pickle

from deployments.ingress.tenancy.buckets import Grant, Ledger, Snapshot
from deployments.ingress.tenancy.keys import Limits


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeQuotaStore:
    """The QuotaStore deployment without Ray: one Ledger, every call counted. Arguments and answers
    go through pickle, as they do across a Ray handle."""

    def __init__(self, clock: FakeClock):
        self.ledger = Ledger(clock)
        self.calls: list[str] = []

    async def lease(self, key: str, limits: Limits, wanted: int, slot: bool, unused: int) -> Grant:
        self.calls.append("lease")
        grant = self.ledger.lease(key, pickle.loads(pickle.dumps(limits)), wanted, slot, unused)
        return pickle.loads(pickle.dumps(grant))

    async def settle(self, key: str, limits: Limits, tokens: int, unused: int, slots: int) -> Snapshot:
        self.calls.append("settle")
        return pickle.loads(pickle.dumps(self.ledger.settle(key, limits, tokens, unused, slots)))


class FakeUnreachableStore:
    """A quota store whose replica is gone: every call fails as a Ray handle call would."""

    async def lease(self, key: str, limits: Limits, wanted: int, slot: bool, unused: int) -> Grant:
        from ray.exceptions import RayActorError

        raise RayActorError()

    async def settle(self, key: str, limits: Limits, tokens: int, unused: int, slots: int) -> Snapshot:
        raise ConnectionError("store unreachable")
