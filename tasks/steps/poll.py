"""Waiting for one task: an async loop inside the task, bounded by one deadline per row.

Polling by task retries would cost the Prefect server far more than this loop (see
shared/prefect-notes.md). The loop also rides out a network or server that failed the
client's own retries: such a query is a missed poll, followed by a longer wait, and only the
row's deadline ends it. That deadline is set once per row per run (monotonic, in the Runtime)
and bounds every wait and every query, the client's own retries included, so a resumed,
retried or throttled row can never poll past `poll_timeout`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apimart import spec
from apimart.errors import (
    AuthenticationError,
    ProtocolError,
    RateLimitError,
    ServerError,
    TransportError,
)
from apimart.models import Task
from tasks.run.runtime import Runtime, run_logger
from tasks.store.states import TO_POLL, State

# What a later try could cure; everything else fails the task at once.
TRANSIENT = (TransportError, ServerError, ProtocolError, RateLimitError)


def record_terminal(runtime: Runtime, row_id: str, task: Task, polls: int) -> str:
    """Write a finished task into the ledger; keep its fresh link in memory only."""
    record = runtime.ledger.get(row_id)
    assert record is not None
    cost = task.cost
    if cost is not None and cost < 0:
        run_logger().warning("row %s: the API reported a negative cost %s; ignored", row_id, cost)
        cost = None
    if cost is None and task.status != spec.STATUS_COMPLETED:
        cost = 0.0  # failed and cancelled tasks are not charged
    common: dict[str, Any] = {
        "api_status": task.status,
        "terminal_at": time.time(),
        "api_created": task.created,
        "api_completed": task.completed,
        "generation_s": task.actual_time,
        "polls": polls,
        "cost": cost,
    }
    runtime.budget.settle(record.estimated_cost or 0.0, common["cost"])
    if task.status == spec.STATUS_COMPLETED:
        video = task.videos[0] if task.videos else None
        if video is not None:
            runtime.links[row_id] = video
        runtime.ledger.update(
            row_id,
            "completed",
            state=State.COMPLETED,
            url_expires_at=video.expires_at if video else None,
            **common,
        )
        return State.COMPLETED
    state = State.FAILED if task.status == spec.STATUS_FAILED else State.CANCELLED
    runtime.ledger.update(
        row_id,
        task.status,
        state=state,
        error_code=task.error.code if task.error else task.status,
        error_message=task.error.message if task.error else None,
        **common,
    )
    return state


# The first query of a row gets at least this long, even when the initial delay used up
# the whole deadline: every row is asked about at least once per run.
MIN_QUERY_S = 2.0
# After failed polls the wait doubles from poll_interval up to this, so an API that is down
# is not hammered by every row at once.
MAX_FAILED_POLL_WAIT_S = 120.0


def first_poll_delay(submitted_at: float | None, initial_delay: float, now: float) -> float:
    """What is left of the initial delay, by the wall clock that recorded the submission.

    A `submitted_at` in our future (written by a worker whose clock runs ahead of ours)
    counts as just submitted: the wait is never longer than `initial_delay`.
    """
    if submitted_at is None:
        return initial_delay
    return min(initial_delay, max(0.0, initial_delay - (now - submitted_at)))


def _failed_poll_wait(interval: float, failures: int) -> float:
    return min(interval * 2 ** (failures - 1), max(interval, MAX_FAILED_POLL_WAIT_S))


def _timed_out(
    runtime: Runtime, row_id: str, status: str | None, polls: int, problem: str | None
) -> str:
    timeout = runtime.options.poll_timeout
    if status is None:
        message = f"no answer about the task in {timeout:.0f}s of polling"
    else:
        message = f"still {status} after {timeout:.0f}s of polling"
    if problem:
        message += f"; the last query failed: {problem}"
    values: dict[str, Any] = {"api_status": status} if status is not None else {}
    runtime.ledger.update(
        row_id,
        "poll-timeout",
        state=State.TIMEOUT,
        polls=polls,
        error_code="poll_timeout",
        error_message=message + "; task id kept, the next run resumes polling",
        **values,
    )
    return State.TIMEOUT


async def poll_row(runtime: Runtime, row_id: str) -> str:
    """Query the row's task until it ends or this run's polling deadline for it passes."""
    options, ledger, log = runtime.options, runtime.ledger, run_logger()
    record = ledger.get(row_id)
    if record is None or record.task_id is None or record.state not in TO_POLL:
        return record.state if record else State.PENDING
    task_id = record.task_id
    polls = record.polls or 0
    status = record.api_status
    deadline, first_entry = runtime.start_polling(row_id)
    if first_entry:
        delay = first_poll_delay(record.submitted_at, options.poll_initial_delay, time.time())
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
    elif time.monotonic() >= deadline:
        return _timed_out(runtime, row_id, status, polls, None)
    warned: set[str] = set()
    failures = 0
    problem: str | None = None
    while True:
        runtime.gate.check()
        try:
            # Bounds the client's own retries (and their waits) by what is left.
            async with asyncio.timeout(max(deadline - time.monotonic(), MIN_QUERY_S)):
                task = await runtime.client.get_task(task_id)
        except AuthenticationError:
            runtime.gate.stop("authentication failed (401): check the API key")
            raise
        except (TimeoutError, *TRANSIENT) as exc:
            failures += 1
            problem = str(exc) or "no answer before the polling deadline"
            wait = _failed_poll_wait(options.poll_interval, failures)
            log.warning(
                "row %s: query of task %s failed (%s); polling on until the deadline",
                row_id,
                task_id,
                problem,
            )
        else:
            polls += 1
            failures, problem = 0, None
            if task.is_terminal:
                state = record_terminal(runtime, row_id, task, polls)
                log.info("row %s: task %s %s after %d polls", row_id, task_id, task.status, polls)
                return state
            status = task.status
            if not task.is_known_status and task.status not in warned:
                warned.add(task.status)
                log.warning("row %s: unknown status %r, still waiting", row_id, task.status)
            wait = options.poll_interval
        if time.monotonic() + wait > deadline:
            return _timed_out(runtime, row_id, status, polls, problem)
        await asyncio.sleep(wait)
