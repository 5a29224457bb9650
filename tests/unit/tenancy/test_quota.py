"""deployments/ingress/tenancy/quota.py: admission from leases, two replicas sharing one ledger, token
charging, and OpenAI's rate-limit headers and 429s."""

from __future__ import annotations

import pickle

import pytest

from deployments.ingress.tenancy.buckets import Snapshot
from deployments.ingress.tenancy.keys import Limits, Principal, Role, Tier
from deployments.ingress.tenancy.quota import (
    LEASE_TTL_S,
    Quota,
    RateLimited,
    format_reset,
    lease_size,
    rate_limit_headers,
)

from .fakes import FakeClock, FakeQuotaStore


def principal(tenant: str = "team", **limits: int) -> Principal:
    return Principal(tenant, Role.user, Limits(**limits), Tier.normal, None, f"id-{tenant}")


async def admitted(quota: Quota, who: Principal, attempts: int) -> int:
    count = 0
    for _ in range(attempts):
        try:
            await quota.admit(who)
            count += 1
        except RateLimited:
            pass
    return count


async def test_two_replicas_share_one_limit() -> None:
    clock = FakeClock()
    store = FakeQuotaStore(clock)
    replicas = [Quota(store, clock), Quota(store, clock)]
    who = principal(requests_per_minute=500)  # leases of 10
    total = 0
    for _ in range(60):
        for replica in replicas:
            total += await admitted(replica, who, 10)
    assert total == 500
    # The hot path leased: far fewer store calls than admissions, and refusals are not asked again
    # until the bucket can have refilled.
    assert store.calls.count("lease") <= 500 // lease_size(500) + 2
    clock.advance(60 / 500)
    assert await admitted(replicas[0], who, 2) == 1
    assert lease_size(500) == 10 and lease_size(3) == 1


async def test_a_lease_serves_locally_until_it_expires_then_gives_back_the_rest() -> None:
    clock = FakeClock()
    store = FakeQuotaStore(clock)
    quota = Quota(store, clock)
    who = principal(requests_per_minute=600)  # leases of 12
    assert await admitted(quota, who, 5) == 5
    assert store.calls == ["lease"]
    assert store.ledger.lease(who.key_id, who.limits, 500, False).requests == 500  # another replica
    clock.advance(LEASE_TTL_S)
    await quota.admit(who)
    assert store.calls == ["lease", "lease"]
    # 600 - 12 (first lease) - 500, + 10 refilled in 1 s, + 7 unused given back, - 12 (new lease).
    state = store.ledger.keys[who.key_id]
    assert state.requests is not None and state.requests.level == pytest.approx(88 + 10 + 7 - 12)


async def test_rpm_refusal_is_openais_429_with_retry_after_from_the_refill() -> None:
    clock = FakeClock()
    quota = Quota(FakeQuotaStore(clock), clock)
    who = principal(requests_per_minute=2)
    await quota.admit(who)
    await quota.admit(who)
    clock.advance(12)
    with pytest.raises(RateLimited) as refused:
        await quota.admit(who)
    error = refused.value
    assert (error.status, error.type, error.code) == (429, "requests", "rate_limit_exceeded")
    assert error.retry_after_s == 18  # 30 s per request, 12 s already refilled
    headers = error.headers()
    assert headers["Retry-After"] == "18" and headers["retry-after-ms"] == "18000"
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "48s"
    assert "x-ratelimit-limit-tokens" not in headers
    assert "RPM" in error.message and "18s" in error.message
    copy = pickle.loads(pickle.dumps(error))  # as it crosses a Ray handle
    assert (copy.type, copy.retry_after_s, copy.headers()) == (error.type, error.retry_after_s, headers)


async def test_tokens_are_charged_and_the_next_call_is_refused() -> None:
    clock = FakeClock()
    store = FakeQuotaStore(clock)
    quota = Quota(store, clock)
    who = principal(tokens_per_minute=100)
    admission = await quota.admit(who)
    admission.check_tokens()
    await admission.charge(60)
    assert admission.headers()["x-ratelimit-remaining-tokens"] == "40"
    admission.check_tokens()  # tokens remain: a next pipeline step may start
    await admission.charge(50)
    with pytest.raises(RateLimited) as refused:
        admission.check_tokens()
    assert refused.value.type == "tokens" and "spent 110" in refused.value.message
    assert refused.value.retry_after_s == 7  # 11 tokens short at 100/60 per second: 6.6 s
    with pytest.raises(RateLimited) as next_request:
        await quota.admit(who)
    assert next_request.value.type == "tokens"
    assert next_request.value.headers()["x-ratelimit-remaining-tokens"] == "0"


async def test_concurrency_is_exact_across_replicas_and_freed_on_release() -> None:
    clock = FakeClock()
    store = FakeQuotaStore(clock)
    first, second = Quota(store, clock), Quota(store, clock)
    who = principal(max_concurrent_requests=1)
    admission = await first.admit(who)
    with pytest.raises(RateLimited) as refused:
        await second.admit(who)
    assert "concurrent" in refused.value.message and refused.value.retry_after_s == 1
    await admission.release()
    await admission.release()  # idempotent: the slot is given back once
    assert store.ledger.keys[who.key_id].concurrent == 0
    await (await second.admit(who)).release()


async def test_unlimited_keys_never_reach_the_store() -> None:
    clock = FakeClock()
    store = FakeQuotaStore(clock)
    quota = Quota(store, clock)
    admission = await quota.admit(principal())
    await admission.charge(10_000)
    admission.check_tokens()
    assert admission.headers() == {} and store.calls == []
    assert (await quota.admit(None)).headers() == {}


def test_headers_report_limits_remaining_and_reset() -> None:
    snapshot = Snapshot(
        at=0,
        limit_requests=100,
        remaining_requests=40,
        reset_requests_s=36,
        limit_tokens=1000,
        remaining_tokens=10,
        reset_tokens_s=59.4,
    )
    assert rate_limit_headers(snapshot, local_requests=5) == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "45",
        "x-ratelimit-reset-requests": "36s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "10",
        "x-ratelimit-reset-tokens": "59.4s",
    }
    assert rate_limit_headers(None) == {}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0ms"), (0.0201, "21ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (61.25, "1m1.25s")],
)
def test_reset_durations_use_openais_format(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text
