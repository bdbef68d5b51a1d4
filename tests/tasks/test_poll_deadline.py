"""One polling deadline per row per run: it bounds every wait and query, retries included.

The poll step is called through `.fn()` against the sandbox over real HTTP; the sandbox's
`query_5xx` fault makes every query fail and `hold_tasks` keeps every task running, so no
test here waits on a task finishing by chance.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.sandbox import FaultRule, RunningSandbox, SandboxConfig, run_in_thread
from tasks.run.lifecycle import open_run
from tasks.run.options import RunOptions
from tasks.run.runtime import Runtime
from tasks.steps.poll import poll_row
from tasks.steps.submit import submit_row
from tasks.store.ledger import State

KEY = "sk-poll-deadline-canary-0b7e"
ALWAYS = FaultRule(rate=1.0)
# The client's default policy: five tries per query.
TRIES_PER_QUERY = retry.RetryPolicy().attempts


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMART_API_KEY", KEY)


@asynccontextmanager
async def run_for(
    tmp_path: Path, rows: int = 1, **options: Any
) -> AsyncIterator[tuple[Runtime, RunningSandbox]]:
    config = SandboxConfig(api_key=KEY, time_scale=0.002)
    values: dict[str, Any] = {"poll_initial_delay": 0.05, "poll_interval": 0.05, **options}
    with run_in_thread(config) as sb:
        opts = RunOptions(
            manifest=str(
                write_manifest(
                    tmp_path / "m.csv", prompt_rows([f"deadline row {i}" for i in range(rows)])
                )
            ),
            out=str(tmp_path / "out"),
            base_url=sb.url,
            submit_rate=1000,
            **values,
        )
        async with open_run(opts) as runtime:
            yield runtime, sb


def queries(sb: RunningSandbox) -> int:
    return sum(sb.state.stats()["queries_by_task"].values())


def settled_queries(sb: RunningSandbox, quiet_s: float = 0.3) -> int:
    """The query count once it has stopped changing (a cancelled query may still be landing)."""
    last = queries(sb)
    for _ in range(100):
        time.sleep(quiet_s)
        now = queries(sb)
        if now == last:
            return now
        last = now
    raise AssertionError(f"queries never stopped ({last} and counting)")


def query_bound(poll_timeout: float, poll_interval: float) -> int:
    """Most queries one row may make under a total outage: failed polls back off by doubling
    from poll_interval, each poll being one client call of TRIES_PER_QUERY tries."""
    polls = math.floor(math.log2(poll_timeout / poll_interval + 1)) + 2
    return polls * TRIES_PER_QUERY


async def test_an_api_that_always_answers_503_ends_the_row_timeout_within_the_deadline(
    tmp_path: Path,
) -> None:
    """Every query 503: the row ends `timeout` at its deadline, queries bounded, id kept."""
    async with run_for(tmp_path, poll_timeout=1.0) as (rt, sb):
        assert await submit_row(rt, "r0") == State.SUBMITTED
        sb.config.faults.query_5xx = ALWAYS
        with retry.no_waits():  # the client retries as fast as it can: the worst case
            started = time.monotonic()
            assert await poll_row(rt, "r0") == State.TIMEOUT
            took = time.monotonic() - started
        record = rt.ledger.get("r0")
    # The query bound below is what proves the deadline held; the clock only rules out a
    # row that never ended (a loaded machine may stretch 1 s, not to 30).
    assert took < 30
    assert record is not None and record.state == State.TIMEOUT and record.task_id
    assert record.error_code == "poll_timeout"
    assert record.error_message is not None and "503" in record.error_message
    assert 0 < queries(sb) <= query_bound(1.0, 0.05)


async def test_the_clients_own_retry_waits_stop_at_the_deadline(tmp_path: Path) -> None:
    """Polling stops at its deadline even while the client's own retries are waiting."""
    async with run_for(tmp_path, poll_timeout=3.0, poll_initial_delay=0) as (rt, sb):
        assert await submit_row(rt, "r0") == State.SUBMITTED
        sb.config.faults.query_5xx = ALWAYS
        assert retry.waits_enabled()
        started = time.monotonic()
        assert await poll_row(rt, "r0") == State.TIMEOUT
        took = time.monotonic() - started
    # Uncut, the client would make all its tries; the count proves the cut, the clock
    # cannot (its four waits take 7.5 s or more, the deadline is 3 s: too close to assert).
    assert queries(sb) < TRIES_PER_QUERY
    assert took >= 3.0 - 0.1  # and it did not give up before the deadline


async def test_a_second_entry_in_the_same_run_keeps_the_first_deadline(tmp_path: Path) -> None:
    """A retried poll step does not restart the clock: past the deadline it ends at once."""
    async with run_for(tmp_path, poll_timeout=0.5) as (rt, sb):
        sb.config.faults.hold_tasks = True
        assert await submit_row(rt, "r0") == State.SUBMITTED
        assert await poll_row(rt, "r0") == State.TIMEOUT
        asked = settled_queries(sb)
        assert await poll_row(rt, "r0") == State.TIMEOUT
        # Had the retry restarted the clock, it would have queried the held task again.
        assert settled_queries(sb) == asked
        record = rt.ledger.get("r0")
    assert record is not None and record.task_id and record.api_status == "processing"


async def test_a_submitted_at_in_the_future_does_not_stretch_the_first_wait(
    tmp_path: Path,
) -> None:
    """A row stamped in the future (a fast clock) is first polled after the usual delay."""
    async with run_for(tmp_path, poll_timeout=1.0, poll_initial_delay=0.2) as (rt, sb):
        sb.config.faults.hold_tasks = True
        assert await submit_row(rt, "r0") == State.SUBMITTED
        rt.ledger.update("r0", submitted_at=time.time() + 3600)
        started = time.monotonic()
        state = await asyncio.wait_for(poll_row(rt, "r0"), timeout=10)
        took = time.monotonic() - started
    assert state == State.TIMEOUT
    assert took < 30  # not the hour the future stamp would have added
    assert queries(sb) >= 2


async def test_the_initial_delay_is_bounded_by_the_deadline(tmp_path: Path) -> None:
    """An initial delay past the deadline still ends the row on time, after one query."""
    async with run_for(tmp_path, poll_timeout=0.5, poll_initial_delay=60) as (rt, sb):
        sb.config.faults.hold_tasks = True
        assert await submit_row(rt, "r0") == State.SUBMITTED
        started = time.monotonic()
        state = await asyncio.wait_for(poll_row(rt, "r0"), timeout=10)
        took = time.monotonic() - started
    assert state == State.TIMEOUT
    assert took < 30  # not the 60 s initial delay
    assert queries(sb) == 1
