"""The ingress replica's side of the quotas: admission from local leases, token charging as
pipeline steps spend them, and OpenAI's rate-limit headers and 429s.

Keys with a requests-per-minute limit lease several admissions at once from the shared `Ledger`
(1/50 of the limit, kept at most `LEASE_TTL_S`), so the hot path does not cross to the store per
request; the leased admissions are taken from the shared bucket, so the limit holds in total however
many replicas lease. Keys with a concurrency limit take a slot from the store per request (the count
must be exact across replicas); tokens are settled with the store after each model call.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from deployments.ingress.tenancy.buckets import Grant, Snapshot
from deployments.ingress.tenancy.keys import Limits, Principal
from serve_app.errors import ServiceError

logger = logging.getLogger("ray.serve")

LEASE_FRACTION = 50  # a lease is 1/50 of the per-minute limit: ~1.2 s of refill
LEASE_TTL_S = 1.0


class QuotaStore(Protocol):
    """The shared ledger, as the ingress reaches it (a Ray Serve handle in production)."""

    async def lease(self, key: str, limits: Limits, wanted: int, slot: bool, unused: int) -> Grant: ...

    async def settle(self, key: str, limits: Limits, tokens: int, unused: int, slots: int) -> Snapshot: ...


class RateLimited(ServiceError):
    """OpenAI's rate-limit error: 429, type "requests" or "tokens", code rate_limit_exceeded."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        kind: str = "requests",
        retry_after_s: float = 1.0,
        headers: dict[str, str] | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message, param=param, code=code)
        self.type = kind
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        self.retry_after_ms = max(1, math.ceil(retry_after_s * 1000))
        self.extra_headers = dict(headers or {})

    def headers(self) -> dict[str, str]:
        return {
            **self.extra_headers,
            "Retry-After": str(self.retry_after_s),
            "retry-after-ms": str(self.retry_after_ms),
        }

    def __reduce__(self) -> tuple[object, ...]:
        fields = (
            self.message,
            self.type,
            self.retry_after_ms / 1000,
            self.extra_headers,
            self.param,
            self.code,
        )
        return (_rebuild, fields)


def _rebuild(
    message: str,
    kind: str,
    retry_after_s: float,
    headers: dict[str, str],
    param: str | None,
    code: str | None,
) -> RateLimited:
    return RateLimited(message, kind, retry_after_s, headers, param=param, code=code)


def format_reset(seconds: float) -> str:
    """OpenAI's duration format for x-ratelimit-reset-*: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def rate_limit_headers(snapshot: Snapshot | None, local_requests: int = 0) -> dict[str, str]:
    if snapshot is None:
        return {}
    headers = {}
    if snapshot.limit_requests is not None and snapshot.remaining_requests is not None:
        headers["x-ratelimit-limit-requests"] = str(snapshot.limit_requests)
        remaining = min(snapshot.limit_requests, snapshot.remaining_requests + local_requests)
        headers["x-ratelimit-remaining-requests"] = str(remaining)
        headers["x-ratelimit-reset-requests"] = format_reset(snapshot.reset_requests_s)
    if snapshot.limit_tokens is not None and snapshot.remaining_tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(snapshot.limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(snapshot.remaining_tokens)
        headers["x-ratelimit-reset-tokens"] = format_reset(snapshot.reset_tokens_s)
    return headers


def _refusal(principal: Principal, grant: Grant) -> RateLimited:
    limits, wait = principal.limits, f"Please try again in {format_reset(grant.retry_after_s)}."
    if grant.reason == "tokens":
        what, kind = f"tokens per min (TPM): Limit {limits.tokens_per_minute}", "tokens"
    elif grant.reason == "concurrency":
        what, kind = f"concurrent requests: Limit {limits.max_concurrent_requests}", "requests"
    else:
        what, kind = f"requests per min (RPM): Limit {limits.requests_per_minute}", "requests"
    return RateLimited(
        f"Rate limit reached for tenant {principal.tenant} on {what}. {wait}",
        kind,
        grant.retry_after_s,
        rate_limit_headers(grant.snapshot),
    )


@dataclass
class _Lease:
    left: int = 0
    expires: float = 0.0
    snapshot: Snapshot | None = None
    refused: Grant | None = None  # the store's last refusal, repeated locally until `refused_until`
    refused_until: float = 0.0


@dataclass
class Admission:
    """One admitted request: its meter for tokens, its headers, and its slot to give back."""

    quota: Quota | None
    principal: Principal | None
    slot: bool = False
    tokens: int = 0
    released: bool = field(default=False, repr=False)

    def headers(self) -> dict[str, str]:
        if self.quota is None or self.principal is None:
            return {}
        lease = self.quota.leases.get(self.principal.key_id)
        return rate_limit_headers(lease.snapshot, lease.left) if lease else {}

    def check_tokens(self) -> None:
        """Before a model call: refuse if the key's tokens are spent (a pipeline stops here)."""
        if self.quota is None or self.principal is None or self.principal.limits.tokens_per_minute is None:
            return
        lease = self.quota.leases.get(self.principal.key_id)
        if lease and lease.snapshot and lease.snapshot.out_of_tokens():
            wait = lease.snapshot.tokens_retry_s
            raise RateLimited(
                f"Rate limit reached for tenant {self.principal.tenant} on tokens per min (TPM): "
                f"Limit {self.principal.limits.tokens_per_minute}; this request has spent "
                f"{self.tokens}. Please try again in {format_reset(wait)}.",
                "tokens",
                wait,
                rate_limit_headers(lease.snapshot, lease.left),
            )

    async def charge(self, tokens: int) -> None:
        """Charge tokens a model call spent on this request's behalf."""
        self.tokens += tokens
        if self.quota is not None and self.principal is not None and tokens > 0:
            await self.quota.settle(self.principal, tokens=tokens)

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.slot and self.quota is not None and self.principal is not None:
            await self.quota.settle(self.principal, slots=1)


UNMETERED = Admission(None, None)
current_admission: contextvars.ContextVar[Admission] = contextvars.ContextVar(
    "current_admission", default=UNMETERED
)


class Quota:
    """Admission for one ingress replica, against the store every replica shares."""

    def __init__(self, store: QuotaStore, clock: Callable[[], float]):
        self.store, self.clock = store, clock
        self.leases: dict[str, _Lease] = {}

    async def admit(self, principal: Principal | None) -> Admission:
        if principal is None or principal.limits.unlimited():
            return Admission(None, principal)
        limits, now = principal.limits, self.clock()
        lease = self.leases.setdefault(principal.key_id, _Lease())
        slot = limits.max_concurrent_requests is not None
        tokens_ok = lease.snapshot is None or not lease.snapshot.out_of_tokens()
        if not slot and lease.left > 0 and now < lease.expires and tokens_ok:
            lease.left -= 1
            return Admission(self, principal)
        if lease.refused is not None and now < lease.refused_until:
            # Nothing refills before then: a key over its limit does not make a round trip per try.
            wait = replace(lease.refused, retry_after_s=lease.refused_until - now)
            raise _refusal(principal, wait)
        wanted = 1 if slot or limits.requests_per_minute is None else lease_size(limits.requests_per_minute)
        unused, lease.left = lease.left, 0
        grant = await self.store.lease(principal.key_id, limits, wanted, slot, unused)
        lease.snapshot = grant.snapshot
        if grant.requests == 0:
            if grant.reason != "concurrency":  # a slot may free up any moment: always ask
                lease.refused, lease.refused_until = grant, self.clock() + grant.retry_after_s
            raise _refusal(principal, grant)
        lease.left, lease.expires = grant.requests - 1, self.clock() + LEASE_TTL_S
        return Admission(self, principal, slot=grant.slot)

    async def settle(self, principal: Principal, tokens: int = 0, slots: int = 0) -> None:
        lease = self.leases.setdefault(principal.key_id, _Lease())
        try:
            lease.snapshot = await self.store.settle(principal.key_id, principal.limits, tokens, 0, slots)
        except Exception as exc:  # the answer was served: a lost charge must not fail it
            logger.warning(
                "quota store unreachable; %d token(s) and %d slot(s) of tenant %s not settled: %r",
                tokens,
                slots,
                principal.tenant,
                exc,
            )

    def snapshot_headers(self, principal: Principal | None) -> dict[str, str]:
        """Headers for a response that was not metered (e.g. GET /v1/models) by a limited key."""
        if principal is None:
            return {}
        lease = self.leases.get(principal.key_id)
        return rate_limit_headers(lease.snapshot, lease.left) if lease else {}


def lease_size(requests_per_minute: int) -> int:
    return max(1, requests_per_minute // LEASE_FRACTION)
