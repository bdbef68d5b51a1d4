"""Waiting for one task: a watch on the run's one poll scheduler, bounded by one deadline.

A row does not sleep in a loop of its own: `poll_row` puts its task on the run's
`PollScheduler` (`runtime.poller`, opened around the rows by `tasks.run.polling.open_poller`),
which queries every task in flight from one heap under one global rate cap, when the duration
model (or a pinned `--poll-interval`) says. Polling by task retries would cost the Prefect
server far more (see shared/prefect-notes.md). A query that failed in a way a later one could
cure (`TRANSIENT`) is a missed poll, followed by a longer wait, and only the row's deadline
ends it. That deadline is set once per row per run (monotonic, in the Runtime) and bounds
every wait and every query, the client's own retries included, so a resumed, retried or
throttled row can never poll past `poll_timeout`. A step called with no run poller (a test, a
script) watches through a private one of its own.
"""

from __future__ import annotations

import time
from typing import Any

from apimart import spec
from apimart.errors import AuthenticationError
from apimart.models import Task
from tasks.run.polling import TRANSIENT_ERRORS, private_poller
from tasks.run.runtime import Runtime, run_logger
from tasks.run.scheduler import PollScheduler, PollTimeout
from tasks.store.states import TO_POLL, State

# What a later try could cure; everything else fails the task at once (the download step
# uses it too).
TRANSIENT = TRANSIENT_ERRORS


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
    """Watch the row's task on the run's poller until it ends or this run's polling deadline
    for it passes; write what polling found into the ledger."""
    record = runtime.ledger.get(row_id)
    if record is None or record.task_id is None or record.state not in TO_POLL:
        return record.state if record else State.PENDING
    task_id = record.task_id
    polls = record.polls or 0
    deadline, first_entry = runtime.start_polling(row_id)
    if not first_entry and time.monotonic() >= deadline:
        # An earlier entry in this run used the deadline up: no further query.
        return _timed_out(runtime, row_id, record.api_status, polls, None)
    if runtime.poller is None:
        async with private_poller(runtime) as poller:
            return await _watch(runtime, poller, row_id, task_id, polls, deadline)
    return await _watch(runtime, runtime.poller, row_id, task_id, polls, deadline)


async def _watch(
    runtime: Runtime,
    poller: PollScheduler,
    row_id: str,
    task_id: str,
    polls: int,
    deadline: float,
) -> str:
    record = runtime.ledger.get(row_id)
    assert record is not None
    runtime.polling_rows[task_id] = row_id
    watch = poller.track(task_id, submitted_at=record.submitted_at, deadline=deadline)
    try:
        task = await watch
    except PollTimeout as exc:
        status = exc.last_task.status if exc.last_task else record.api_status
        return _timed_out(runtime, row_id, status, polls + exc.queries, exc.problem)
    except AuthenticationError as exc:
        code = exc.status_code
        if code == 403:
            runtime.gate.stop("permission denied (403) on a status query: check the API key")
        else:
            runtime.gate.stop(f"authentication failed ({code}): check the API key")
        raise
    finally:
        # Cancelled (the run stopped) or done: this row is no longer in flight.
        poller.forget(watch)
        runtime.polling_rows.pop(task_id, None)
    polls += watch.queries
    state = record_terminal(runtime, row_id, task, polls)
    run_logger().info("row %s: task %s %s after %d polls", row_id, task_id, task.status, polls)
    return state
