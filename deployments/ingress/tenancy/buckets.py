"""Token buckets and the ledger that holds them, shared by every ingress replica.

Pure logic with an injected clock: `deployments/quota_store.py` puts a `Ledger` in a Ray Serve
deployment, and `deployments/ingress/tenancy/quota.py` leases from it.

Requests are admitted from a requests bucket (capacity = requests per minute, refilled
continuously). Tokens are charged after they are spent, so the tokens bucket may go below zero; a
key is admitted only while its tokens bucket is above zero, and a pipeline stops between steps
once it is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from deployments.ingress.tenancy.keys import Limits

Clock = Callable[[], float]


@dataclass
class Bucket:
    capacity: float
    per_s: float
    level: float
    at: float

    @staticmethod
    def per_minute(limit: int, now: float) -> Bucket:
        return Bucket(float(limit), limit / 60.0, float(limit), now)

    def refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.per_s)
            self.at = now

    def resize(self, limit: int) -> None:
        """A reloaded keys file changed the limit: keep what was spent, within the new capacity."""
        spent = self.capacity - self.level
        self.capacity, self.per_s = float(limit), limit / 60.0
        self.level = min(self.capacity, self.capacity - spent)

    def take_up_to(self, wanted: int) -> int:
        granted = max(0, min(wanted, math.floor(self.level)))
        self.level -= granted
        return granted

    def seconds_until(self, level: float) -> float:
        """Time until the bucket holds `level` (0 if it already does)."""
        return max(0.0, (min(level, self.capacity) - self.level) / self.per_s)


@dataclass(frozen=True)
class Snapshot:
    """What a key's rate-limit headers report, as of `at`."""

    at: float
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float = 0.0
    tokens_retry_s: float = 0.0  # until the tokens bucket is above zero again: 0 if it is

    def out_of_tokens(self) -> bool:
        return self.tokens_retry_s > 0


@dataclass(frozen=True)
class Grant:
    """The ledger's answer to a lease: `requests` admissions (0: refused, see `retry_after_s`)."""

    requests: int
    slot: bool
    snapshot: Snapshot
    retry_after_s: float = 0.0
    reason: str = ""


@dataclass
class KeyState:
    limits: Limits
    requests: Bucket | None = None
    tokens: Bucket | None = None
    concurrent: int = 0
    touched: float = 0.0


class Ledger:
    """Every limited key's buckets and open-request count. One instance serves all replicas."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.keys: dict[str, KeyState] = {}

    def _state(self, key: str, limits: Limits) -> KeyState:
        now = self.clock()
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = KeyState(limits)
        state.limits, state.touched = limits, now
        state.requests = self._bucket(state.requests, limits.requests_per_minute, now)
        state.tokens = self._bucket(state.tokens, limits.tokens_per_minute, now)
        return state

    @staticmethod
    def _bucket(bucket: Bucket | None, limit: int | None, now: float) -> Bucket | None:
        if limit is None:
            return None
        if bucket is None:
            return Bucket.per_minute(limit, now)
        bucket.refill(now)
        if bucket.capacity != limit:
            bucket.resize(limit)
        return bucket

    def snapshot(self, state: KeyState) -> Snapshot:
        req, tok = state.requests, state.tokens
        return Snapshot(
            at=self.clock(),
            limit_requests=int(req.capacity) if req else None,
            remaining_requests=max(0, math.floor(req.level)) if req else None,
            reset_requests_s=req.seconds_until(req.capacity) if req else 0.0,
            limit_tokens=int(tok.capacity) if tok else None,
            remaining_tokens=max(0, math.floor(tok.level)) if tok else None,
            reset_tokens_s=tok.seconds_until(tok.capacity) if tok else 0.0,
            tokens_retry_s=tok.seconds_until(1) if tok else 0.0,
        )

    def lease(self, key: str, limits: Limits, wanted: int, slot: bool, unused: int = 0) -> Grant:
        """Admit up to `wanted` requests of `key` (and one open-request slot if `slot`), after
        taking back `unused` requests of the caller's previous lease."""
        state = self._state(key, limits)
        self._refund(state, unused)
        if state.tokens is not None and state.tokens.level < 1:
            return Grant(0, False, self.snapshot(state), state.tokens.seconds_until(1), "tokens")
        full = (
            limits.max_concurrent_requests is not None and state.concurrent >= limits.max_concurrent_requests
        )
        if slot and full:
            # When a slot frees up is not known; one second is the shortest honest wait.
            return Grant(0, False, self.snapshot(state), 1.0, "concurrency")
        granted = state.requests.take_up_to(wanted) if state.requests is not None else wanted
        if granted == 0:
            assert state.requests is not None
            return Grant(0, False, self.snapshot(state), state.requests.seconds_until(1), "requests")
        took_slot = slot and limits.max_concurrent_requests is not None
        state.concurrent += took_slot
        return Grant(granted, took_slot, self.snapshot(state))

    def settle(self, key: str, limits: Limits, tokens: int = 0, unused: int = 0, slots: int = 0) -> Snapshot:
        """Charge spent tokens, give back unused leased requests, and free open-request slots."""
        state = self._state(key, limits)
        if state.tokens is not None and tokens > 0:
            state.tokens.level -= tokens
        self._refund(state, unused)
        state.concurrent = max(0, state.concurrent - slots)
        return self.snapshot(state)

    @staticmethod
    def _refund(state: KeyState, unused: int) -> None:
        if state.requests is not None and unused > 0:
            state.requests.level = min(state.requests.capacity, state.requests.level + unused)

    def forget_idle(self, idle_s: float) -> int:
        """Drop keys untouched for `idle_s` with nothing open and full buckets (dropping them
        changes nothing but memory)."""
        now = self.clock()
        idle = []
        for key, state in self.keys.items():
            for bucket in (state.requests, state.tokens):
                if bucket is not None:
                    bucket.refill(now)
            full = all(b is None or b.level >= b.capacity for b in (state.requests, state.tokens))
            if full and state.concurrent == 0 and now - state.touched >= idle_s:
                idle.append(key)
        for key in idle:
            del self.keys[key]
        return len(idle)
