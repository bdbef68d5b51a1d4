"""When to wait and how long: capped exponential backoff with jitter, in the style of stamina.

Retrying is decided by the callers (each names the outcomes it retries); this module only
computes waits. A test of the client itself injects a policy whose waits are zero
(`RetryPolicy(initial_wait=0, jitter=0)`). Tests that drive the client through the tasks and
flows, which build their own client, cannot inject one: for them `with no_waits():` (or
`set_waits(False)`) turns every wait into zero for the whole process.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_waits_enabled = True


def set_waits(enabled: bool) -> None:
    """Switch every retry wait on or off, process-wide (off is meant for tests)."""
    global _waits_enabled
    _waits_enabled = bool(enabled)


def waits_enabled() -> bool:
    return _waits_enabled


@contextmanager
def no_waits() -> Iterator[None]:
    """Within this block retries happen at once; the previous setting is restored after."""
    previous = _waits_enabled
    set_waits(False)
    try:
        yield
    finally:
        set_waits(previous)


class RetryAfterTooLong(Exception):
    """The server asked for a longer pause than the policy accepts: give up now, not later."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often to try and how long to wait between tries.

    `attempts` counts every try, the first included. The n-th wait is
    `min(max_wait, initial_wait * multiplier ** (n - 1)) + uniform(0, jitter)`. A Retry-After
    hint replaces the computed wait when it is at most `max_retry_after`; a longer hint ends
    the retries at once, because sleeping less than asked only earns another 429.
    """

    attempts: int = 5
    initial_wait: float = 0.5
    multiplier: float = 2.0
    max_wait: float = 30.0
    jitter: float = 1.0
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        for name in ("initial_wait", "multiplier", "max_wait", "jitter", "max_retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def can_retry(self, attempt: int) -> bool:
        """Whether another try may follow try number `attempt` (1-based)."""
        return attempt < self.attempts

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """The pause after failed try number `attempt`, ignoring the process-wide switch.

        Raises RetryAfterTooLong when the server's hint exceeds `max_retry_after`.
        """
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                raise RetryAfterTooLong(retry_after)
            # Jitter on top of the hint keeps many clients from coming back in lockstep.
            return retry_after + random.uniform(0.0, self.jitter)
        base = self.initial_wait * self.multiplier ** max(0, attempt - 1)
        return min(self.max_wait, base) + random.uniform(0.0, self.jitter)

    def sleep_for(self, attempt: int, retry_after: float | None = None) -> float:
        """The pause to actually sleep: `backoff`, or 0 while waits are switched off."""
        delay = self.backoff(attempt, retry_after)
        return delay if _waits_enabled else 0.0
