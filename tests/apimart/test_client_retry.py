"""RetryPolicy arithmetic, and the process-wide switch that tests of the tasks and flows use."""

from __future__ import annotations

import pytest

from apimart import retry
from apimart.retry import RetryAfterTooLong, RetryPolicy


def test_backoff_grows_then_caps() -> None:
    """Backoff doubles from the initial wait on each try and stops growing at max_wait."""
    policy = RetryPolicy(initial_wait=1.0, multiplier=2.0, max_wait=5.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stays_within_bounds() -> None:
    """Jitter adds between 0 and `jitter` seconds to a wait, never more, and it varies."""
    policy = RetryPolicy(initial_wait=1.0, multiplier=1.0, max_wait=1.0, jitter=0.5)
    waits = {policy.backoff(1) for _ in range(200)}
    assert all(1.0 <= w <= 1.5 for w in waits) and len(waits) > 1


def test_retry_after_replaces_backoff_up_to_the_cap() -> None:
    """A Retry-After up to max_retry_after replaces the backoff; a longer one ends retrying."""
    policy = RetryPolicy(jitter=0.0, max_wait=1.0, max_retry_after=60.0)
    assert policy.backoff(1, retry_after=45.0) == 45.0
    with pytest.raises(RetryAfterTooLong):
        policy.backoff(1, retry_after=61.0)


def test_attempts_count_the_first_try() -> None:
    """`attempts` counts the first try: three attempts allow two retries."""
    policy = RetryPolicy(attempts=3)
    assert [policy.can_retry(n) for n in (1, 2, 3)] == [True, True, False]


def test_no_waits_zeroes_every_wait_and_restores_the_setting() -> None:
    """Inside `no_waits()` every policy sleeps zero, nested blocks too; after it, real waits."""
    policy = RetryPolicy(initial_wait=3.0, jitter=0.0)
    previous = retry.waits_enabled()
    retry.set_waits(True)
    try:
        assert policy.sleep_for(1) == 3.0
        with retry.no_waits():
            assert policy.sleep_for(1) == 0.0
            with retry.no_waits():
                assert policy.sleep_for(2) == 0.0
            assert not retry.waits_enabled()
        assert retry.waits_enabled() and policy.sleep_for(1) == 3.0
    finally:
        retry.set_waits(previous)


def test_a_zero_wait_policy_never_sleeps_but_honours_retry_after() -> None:
    """With no initial wait and no jitter every backoff is zero; a Retry-After still counts."""
    policy = RetryPolicy(initial_wait=0.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.0] * 5
    assert policy.backoff(1, retry_after=0.25) == 0.25


@pytest.mark.parametrize("field", ["initial_wait", "multiplier", "max_wait", "jitter"])
def test_negative_settings_are_refused(field: str) -> None:
    """A negative wait, multiplier, jitter or cap, or zero attempts, is refused at once."""
    with pytest.raises(ValueError):
        RetryPolicy(**{field: -1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
