"""Shared brakes on submitting: a rate limit that 429s slow down, a budget, and stop flags.

All of it lives in one event loop (the flow's), so plain attributes and asyncio locks suffice,
except what several runs of one batch share (a PostgreSQL ledger): there the budget is the
ledger's atomic reservation (`LedgerBudget`), so K runs together can never pass the cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tasks.errors import RunStopped
from tasks.store.ledger import Ledger

# The longest Retry-After one run waits for; the client's own retries stop at the same hint.
MAX_PAUSE_S = 120.0
# A 429 without a Retry-After pauses everyone this long.
DEFAULT_PAUSE_S = 5.0
# The slowest a run of 429s can push the rate (submissions per second).
MIN_RATE = 0.05


@dataclass
class SubmitGate:
    """Spaces submissions `1/rate` seconds apart and pauses everyone after a 429.

    A 429 halves the rate; every submission that gets through adds `recovery_step` back, up
    to the configured rate (additive increase, multiplicative decrease), so one throttled
    minute does not slow the rest of the run. Until the first POST of the run has been
    answered, only one is in flight (see `sending`).
    """

    rate: float
    stop_reason: str | None = None  # 401, 404 on the POST: nothing more is sent at all
    payment_exhausted: bool = False  # 402: no new submissions, in-flight tasks carry on
    # A 429 asked for a longer pause than `max_pause_s`: no new submissions this run, in-flight
    # tasks carry on, and this says why and when to run again.
    throttled_out: str | None = None
    max_pause_s: float = MAX_PAUSE_S
    # Submissions per second given back per successful submission; None: a tenth of `rate`.
    recovery_step: float | None = None
    # After this many connection failures in a row the API is taken as unreachable and the
    # rows left are not even tried (each try costs the client's whole connect-retry budget).
    unreachable_after: int = 3
    connect_failures: int = 0
    # Set once the API has answered a POST in a way that shows the route and key work.
    route_proven: bool = False
    clock: Callable[[], float] = time.monotonic
    max_rate: float = field(init=False)
    _next_at: float = 0.0
    _paused_until: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _first_post: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.max_rate = self.rate
        if self.recovery_step is None:
            self.recovery_step = self.rate / 10

    async def wait_turn(self) -> None:
        async with self._lock:
            now = self.clock()
            start = max(now, self._next_at, self._paused_until)
            self._next_at = start + 1.0 / self.rate
        if start > now:
            await asyncio.sleep(start - now)

    @asynccontextmanager
    async def sending(self) -> AsyncIterator[None]:
        """Hold this around one POST. Until the route is proven, POSTs go one at a time.

        A wrong base URL or key gets the same answer for every row: this way it costs one
        request, not one per row already on its way.
        """
        if self.route_proven:
            yield
            return
        async with self._first_post:
            yield

    def answered(self) -> None:
        """The API took or judged a POST (a task, 400, 402, 429): the route and key work."""
        self.route_proven = True

    def submitted(self) -> None:
        """A POST created a task: the API is reachable and the rate may climb back."""
        self.answered()
        self.connected(True)
        assert self.recovery_step is not None
        self.rate = min(self.max_rate, self.rate + self.recovery_step)

    def throttled(self, retry_after: float | None) -> float:
        """A 429 got through the client's own retries: halve the rate and pause everyone.

        A hint longer than `max_pause_s` closes submitting for this run instead (see
        `throttled_out`): waiting that long would hold every row, and sleeping less than
        asked only earns another 429. Returns the pause asked for.
        """
        self.answered()
        self.rate = max(self.rate / 2, MIN_RATE)
        pause = retry_after if retry_after is not None else DEFAULT_PAUSE_S
        if pause > self.max_pause_s:
            if self.throttled_out is None:
                when = datetime.now(UTC) + timedelta(seconds=pause)
                self.throttled_out = (
                    f"the API asked for a {pause:.0f}s pause (429 Retry-After), longer than the "
                    f"{self.max_pause_s:.0f}s a run waits: no new submissions in this run; rows "
                    f"not sent stay pending, run again after {when:%Y-%m-%d %H:%M} UTC"
                )
            return pause
        self._paused_until = max(self._paused_until, self.clock() + pause)
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

    def reserve(self, estimate: float, row_id: str | None = None) -> bool:
        """Reserve `estimate` (for `row_id`); False, changing nothing, when it would pass."""
        if self.cap is not None and not (self.committed + estimate <= self.cap + 1e-9):
            return False  # written so that a NaN anywhere refuses rather than admits
        self.committed += estimate
        return True

    def release(
        self, estimate: float, row_id: str | None = None, *, owner: str | None = None
    ) -> None:
        self.committed -= estimate

    def settle(self, estimate: float, real: float | None) -> None:
        """Replace a reservation by the real cost once the API reports it."""
        if real is not None:
            self.committed += real - estimate


@dataclass
class LedgerBudget(Budget):
    """The budget of a batch shared by several runs: each reservation is one transaction in
    the ledger (`Ledger.reserve_budget`), checked against committed cost plus every run's live
    reservations, so K runs reserving at once never pass the cap. A reservation lives
    `hold_s` seconds (renewed with the row's lease) and becomes the row's own estimate when
    its intent is written; `committed` here is only this run's view, the ledger decides."""

    ledger: Ledger | None = None
    hold_s: float = 600.0

    def reserve(self, estimate: float, row_id: str | None = None) -> bool:
        assert self.ledger is not None and row_id is not None, "a shared budget needs the row"
        if not self.ledger.reserve_budget(row_id, estimate, cap=self.cap, hold_s=self.hold_s):
            return False
        self.committed += estimate
        return True

    def release(
        self, estimate: float, row_id: str | None = None, *, owner: str | None = None
    ) -> None:
        """Give the reservation back; `owner` (the run's lease owner on a shared batch) fences
        the write, so a run that lost the row leaves the new owner's reservation alone."""
        # After its intent the reservation is gone already (the estimate is the row's own,
        # and the row's state says whether it is still at risk): dropping it is then a no-op.
        self.committed -= estimate
        if self.ledger is not None and row_id is not None:
            self.ledger.release_budget(row_id, owner=owner)
