"""Waiting for an observable condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from support.files import tail

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
    logs: list[Path] | None = None,
    not_yet: tuple[type[Exception], ...] = (Exception,),
) -> T:
    """Poll `check` until it returns something truthy; fail with `what` (and log tails).

    An exception of a `not_yet` type from `check` means "not yet" (a server that is not up
    yet) and is named in the failure if time runs out; any other ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except not_yet as exc:
            last_error = exc
        time.sleep(interval)
    tails = "".join(f"\n--- {p.name} ---\n{tail(p)}" for p in logs or [])
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} ({last_error!r}){tails}"
    )
