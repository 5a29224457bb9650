"""deployments/ingress/tenancy/buckets.py: token buckets and the shared ledger, on an injected clock."""

from __future__ import annotations

import pytest

from deployments.ingress.tenancy.buckets import Bucket, Ledger
from deployments.ingress.tenancy.keys import Limits

from .fakes import FakeClock


def test_bucket_refills_continuously_up_to_its_capacity() -> None:
    bucket = Bucket.per_minute(60, now=0.0)
    assert bucket.take_up_to(100) == 60 and bucket.level == 0
    bucket.refill(0.5)
    assert bucket.take_up_to(1) == 0  # half a request is not a request
    assert bucket.seconds_until(1) == pytest.approx(0.5)
    bucket.refill(10.0)
    assert bucket.level == pytest.approx(10)
    bucket.refill(1000.0)
    assert bucket.level == 60 and bucket.seconds_until(60) == 0


def test_requests_per_minute_and_retry_after_from_the_refill() -> None:
    clock = FakeClock()
    ledger = Ledger(clock)
    limits = Limits(requests_per_minute=3)
    assert [ledger.lease("k", limits, 1, False).requests for _ in range(4)] == [1, 1, 1, 0]
    refused = ledger.lease("k", limits, 1, False)
    assert refused.reason == "requests"
    assert refused.retry_after_s == pytest.approx(20)  # one request refills in 60/3 s
    assert refused.snapshot.remaining_requests == 0
    assert refused.snapshot.reset_requests_s == pytest.approx(60)
    clock.advance(5)
    assert ledger.lease("k", limits, 1, False).retry_after_s == pytest.approx(15)
    clock.advance(15)
    assert ledger.lease("k", limits, 1, False).requests == 1


def test_a_lease_takes_several_and_unused_ones_come_back() -> None:
    ledger = Ledger(FakeClock())
    limits = Limits(requests_per_minute=10)
    grant = ledger.lease("k", limits, 4, False)
    assert grant.requests == 4 and grant.snapshot.remaining_requests == 6
    assert ledger.lease("k", limits, 100, False, unused=3).requests == 9
    assert ledger.lease("k", limits, 1, False).requests == 0


def test_tokens_are_charged_after_the_fact_and_block_until_refilled() -> None:
    clock = FakeClock()
    ledger = Ledger(clock)
    limits = Limits(tokens_per_minute=600)
    assert ledger.lease("k", limits, 1, False).requests == 1
    snapshot = ledger.settle("k", limits, tokens=700)  # a long answer overshoots: the debt stays
    assert snapshot.remaining_tokens == 0 and snapshot.out_of_tokens()
    assert snapshot.tokens_retry_s == pytest.approx(10.1)  # 101 tokens at 10 per second
    refused = ledger.lease("k", limits, 1, False)
    assert (refused.requests, refused.reason) == (0, "tokens")
    assert refused.retry_after_s == pytest.approx(10.1)
    clock.advance(10.2)
    assert ledger.lease("k", limits, 1, False).requests == 1


def test_concurrency_slots_are_counted_and_freed() -> None:
    ledger = Ledger(FakeClock())
    limits = Limits(max_concurrent_requests=2)
    assert [ledger.lease("k", limits, 1, True).slot for _ in range(2)] == [True, True]
    refused = ledger.lease("k", limits, 1, True)
    assert (refused.requests, refused.reason, refused.retry_after_s) == (0, "concurrency", 1.0)
    ledger.settle("k", limits, slots=1)
    assert ledger.lease("k", limits, 1, True).slot
    assert ledger.lease("other", limits, 1, True).slot  # keys are counted apart


def test_a_changed_limit_keeps_what_was_spent() -> None:
    ledger = Ledger(FakeClock())
    for _ in range(4):
        ledger.lease("k", Limits(requests_per_minute=10), 1, False)
    assert ledger.lease("k", Limits(requests_per_minute=5), 1, False).snapshot.remaining_requests == 0
    assert ledger.lease("k", Limits(requests_per_minute=5), 1, False).requests == 0
    grown = ledger.lease("k", Limits(requests_per_minute=100), 1, False)
    assert grown.snapshot.limit_requests == 100 and grown.snapshot.remaining_requests == 94


def test_idle_keys_are_forgotten_only_once_nothing_would_change() -> None:
    clock = FakeClock()
    ledger = Ledger(clock)
    limits = Limits(requests_per_minute=60, max_concurrent_requests=1)
    ledger.lease("open", limits, 1, True)
    ledger.lease("done", limits, 1, True)
    ledger.settle("done", limits, slots=1)
    clock.advance(0.5)
    assert ledger.forget_idle(0) == 0  # "done" has not refilled yet
    clock.advance(600)
    assert ledger.forget_idle(600) == 1 and set(ledger.keys) == {"open"}
