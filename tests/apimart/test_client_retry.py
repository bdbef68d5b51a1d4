"""RetryPolicy arithmetic and the process-wide switch that keeps tests from sleeping."""

from __future__ import annotations

import pytest

from apimart import retry
from apimart.retry import RetryAfterTooLong, RetryPolicy


def test_backoff_grows_then_caps() -> None:
    policy = RetryPolicy(initial_wait=1.0, multiplier=2.0, max_wait=5.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(initial_wait=1.0, multiplier=1.0, max_wait=1.0, jitter=0.5)
    waits = {policy.backoff(1) for _ in range(200)}
    assert all(1.0 <= w <= 1.5 for w in waits) and len(waits) > 1


def test_retry_after_replaces_backoff_up_to_the_cap() -> None:
    policy = RetryPolicy(jitter=0.0, max_wait=1.0, max_retry_after=60.0)
    assert policy.backoff(1, retry_after=45.0) == 45.0
    with pytest.raises(RetryAfterTooLong):
        policy.backoff(1, retry_after=61.0)


def test_attempts_count_the_first_try() -> None:
    policy = RetryPolicy(attempts=3)
    assert [policy.can_retry(n) for n in (1, 2, 3)] == [True, True, False]


def test_waits_can_be_switched_off() -> None:
    policy = RetryPolicy(initial_wait=3.0, jitter=0.0)
    # The suite runs with waits off (conftest); the switch nests and restores.
    assert not retry.waits_enabled()
    assert policy.sleep_for(1) == 0.0
    retry.set_waits(True)
    try:
        assert policy.sleep_for(1) == 3.0
        assert RetryPolicy(initial_wait=3.0, wait=False).sleep_for(1) == 0.0
        with retry.no_waits():
            assert policy.sleep_for(1) == 0.0
        assert retry.waits_enabled()
    finally:
        retry.set_waits(False)


@pytest.mark.parametrize("field", ["initial_wait", "multiplier", "max_wait", "jitter"])
def test_negative_settings_are_refused(field: str) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**{field: -1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
