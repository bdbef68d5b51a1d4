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

Every row's end is logged naming the row and its task, at a price that does not grow with the
run: one INFO line per row for failures, cancellations, timeouts and the first
`ONE_LINE_EACH` completions of a run (so a small run reads as before), then completions named
together, `BATCH` to a line (each row still gets its own DEBUG line). A line per row cost ~5 %
of a large run's event loop, plus Prefect's log shipper and the server's ingestion of every
record (bench/scale-profile.md); a record naming 50 rows costs about what one naming one
does. A batch waits at most `BATCH_AGE_S` (checked as rows complete) and is written at once
when no other task of the run is being polled, so the last rows of a run, or of a run that
stopped, are never left unsaid.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from apimart import spec
from apimart.errors import AuthenticationError
from apimart.models import Task
from tasks.run.polling import TRANSIENT_ERRORS, private_poller
from tasks.run.runtime import Runtime, run_logger
from tasks.run.scheduler import PollScheduler, PollTimeout
from tasks.store.ledger import Ledger
from tasks.store.states import TO_POLL, State

# What a later try could cure; everything else fails the task at once (the download step
# uses it too).
TRANSIENT = TRANSIENT_ERRORS


# A run's first completions each get a line; later ones are named BATCH to a line.
ONE_LINE_EACH = 100
BATCH = 50
BATCH_AGE_S = 10.0


@dataclass
class _Completions:
    """One run's completions so far, and those not yet named in an INFO line."""

    count: int = 0
    pending: list[str] = field(default_factory=list)
    since: float = 0.0


# Keyed by the run's ledger, which lives exactly as long as the run.
_COMPLETIONS: weakref.WeakKeyDictionary[Ledger, _Completions] = weakref.WeakKeyDictionary()


def _completions(runtime: Runtime) -> _Completions:
    book = _COMPLETIONS.get(runtime.ledger)
    if book is None:
        book = _COMPLETIONS[runtime.ledger] = _Completions()
    return book


def _flush_completions(runtime: Runtime) -> None:
    book = _COMPLETIONS.get(runtime.ledger)
    if book is None or not book.pending:
        return
    named, book.pending = book.pending, []
    run_logger().info("%d rows completed: %s", len(named), "; ".join(named))


def _log_end(runtime: Runtime, row_id: str, task_id: str, status: str, polls: int) -> None:
    log = run_logger()
    book = _completions(runtime)
    if status == spec.STATUS_COMPLETED:
        book.count += 1
    now = time.monotonic()
    if status != spec.STATUS_COMPLETED or book.count <= ONE_LINE_EACH:
        log.info("row %s: task %s %s after %d polls", row_id, task_id, status, polls)
    else:
        log.debug("row %s: task %s %s after %d polls", row_id, task_id, status, polls)
        if not book.pending:
            book.since = now
        book.pending.append(f"row {row_id} (task {task_id}, {polls} polls)")
    if book.pending and (
        len(book.pending) >= BATCH or now - book.since >= BATCH_AGE_S or not runtime.polling_rows
    ):
        _flush_completions(runtime)


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
    record = runtime.ledger.get(row_id)
    run_logger().info(
        "row %s: task %s %s; the next run polls it again",
        row_id,
        record.task_id if record else None,
        message,
    )
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
    ended = False
    try:
        task = await watch
        ended = True
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
        if not ended and not runtime.polling_rows:
            # Nothing else is being polled (a timeout, or the run stopped): the completions
            # waiting for a line get it now. An ended task's `_log_end` does it itself.
            _flush_completions(runtime)
    polls += watch.queries
    state = record_terminal(runtime, row_id, task, polls)
    _log_end(runtime, row_id, task_id, task.status, polls)
    return state
