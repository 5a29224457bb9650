"""The shared quota ledger: one small Ray Serve deployment per application, which every ingress
replica reaches through its handle. Its state is a `Ledger` (deployments/ingress/tenancy/buckets.py): losing
the replica resets the buckets to full, which errs towards serving, never towards a wrong 429."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from deployments.ingress.tenancy.buckets import Grant, Ledger, Snapshot
from deployments.ingress.tenancy.keys import Limits

IDLE_FORGET_S = 600.0


class QuotaStore:
    def __init__(self) -> None:
        self.ledger = Ledger(time.monotonic)
        self._sweeper = asyncio.get_event_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(IDLE_FORGET_S / 10)
            self.ledger.forget_idle(IDLE_FORGET_S)

    # No await inside: each call runs whole on the replica's event loop, so the ledger needs no lock.
    async def lease(self, key: str, limits: Limits, wanted: int, slot: bool, unused: int) -> Grant:
        return self.ledger.lease(key, limits, wanted, slot, unused)

    async def settle(self, key: str, limits: Limits, tokens: int, unused: int, slots: int) -> Snapshot:
        return self.ledger.settle(key, limits, tokens, unused, slots)


class HandleQuotaStore:
    """`deployments.ingress.tenancy.quota.QuotaStore` over the deployment's handle."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def lease(self, key: str, limits: Limits, wanted: int, slot: bool, unused: int) -> Grant:
        grant: Grant = await self.handle.lease.remote(key, limits, wanted, slot, unused)
        return grant

    async def settle(self, key: str, limits: Limits, tokens: int, unused: int, slots: int) -> Snapshot:
        snapshot: Snapshot = await self.handle.settle.remote(key, limits, tokens, unused, slots)
        return snapshot
