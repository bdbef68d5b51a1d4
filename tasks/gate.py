"""Shared brakes on submitting: a rate limit that 429s slow down, a budget, and stop flags.

All of it lives in one event loop (the flow's), so plain attributes and asyncio locks suffice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


class RunStopped(Exception):
    """The whole run must stop now (authentication failed): nothing else is sent."""


@dataclass
class SubmitGate:
    """Spaces submissions `1/rate` seconds apart and pauses everyone after a 429."""

    rate: float
    stop_reason: str | None = None  # authentication failure: nothing more is sent at all
    payment_exhausted: bool = False  # 402: no new submissions, in-flight tasks carry on
    # After this many connection failures in a row the API is taken as unreachable and the
    # rows left are not even tried (each try costs the client's whole connect-retry budget).
    unreachable_after: int = 3
    connect_failures: int = 0
    _next_at: float = 0.0
    _paused_until: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def wait_turn(self) -> None:
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next_at, self._paused_until)
            self._next_at = start + 1.0 / self.rate
        if start > now:
            await asyncio.sleep(start - now)

    def throttled(self, retry_after: float | None) -> float:
        """A 429 got through the client's own retries: halve the rate and pause everyone."""
        self.rate = max(self.rate / 2, 0.05)
        pause = retry_after if retry_after is not None else 5.0
        self._paused_until = max(self._paused_until, time.monotonic() + pause)
        return pause

    @property
    def unreachable(self) -> bool:
        return self.connect_failures >= self.unreachable_after

    def connected(self, ok: bool) -> None:
        self.connect_failures = 0 if ok else self.connect_failures + 1

    def stop(self, reason: str) -> None:
        self.stop_reason = reason

    def check(self) -> None:
        if self.stop_reason:
            raise RunStopped(self.stop_reason)


@dataclass
class Budget:
    """Reserves a row's estimated cost before it is sent; never lets the total pass the cap.

    `committed` starts from the ledger (real costs plus estimates still at risk), so a resumed
    run honours money spent by earlier runs into the same folder.
    """

    cap: float | None
    committed: float = 0.0

    def reserve(self, estimate: float) -> bool:
        if self.cap is not None and not (self.committed + estimate <= self.cap + 1e-9):
            return False  # written so that a NaN anywhere refuses rather than admits
        self.committed += estimate
        return True

    def release(self, estimate: float) -> None:
        self.committed -= estimate

    def settle(self, estimate: float, real: float | None) -> None:
        """Replace a reservation by the real cost once the API reports it."""
        if real is not None:
            self.committed += real - estimate
