"""Waiting for one task: an async loop inside the task, Prefect retries only for transient errors.

Polling by task retries would cost the Prefect server far more than this loop (see
shared/prefect-notes.md); the retries are for a network or server that failed the client's
own retries, never for "not finished yet".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from apimart import spec
from apimart.errors import (
    AuthenticationError,
    ProtocolError,
    RateLimitError,
    ServerError,
    TransportError,
)
from apimart.models import Task
from tasks.ledger import State
from tasks.runtime import Runtime, get_runtime, retry_when, run_logger

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


async def poll_row(runtime: Runtime, row_id: str) -> str:
    """Query the row's task until it ends or this run's polling deadline passes."""
    options, ledger, log = runtime.options, runtime.ledger, run_logger()
    record = ledger.get(row_id)
    if (
        record is None
        or record.task_id is None
        or record.state
        not in (
            State.SUBMITTED,
            State.TIMEOUT,
        )
    ):
        return record.state if record else State.PENDING
    task_id = record.task_id
    polls = record.polls or 0
    started = time.monotonic()
    since_submit = time.time() - (record.submitted_at or time.time())
    await asyncio.sleep(max(0.0, options.poll_initial_delay - since_submit))
    warned: set[str] = set()
    while True:
        runtime.gate.check()
        try:
            task = await runtime.client.get_task(task_id)
        except AuthenticationError:
            runtime.gate.stop("authentication failed (401): check the API key")
            raise
        polls += 1
        if task.is_terminal:
            state = record_terminal(runtime, row_id, task, polls)
            log.info("row %s: task %s %s after %d polls", row_id, task_id, task.status, polls)
            return state
        if not task.is_known_status and task.status not in warned:
            warned.add(task.status)
            log.warning("row %s: unknown status %r, still waiting", row_id, task.status)
        if time.monotonic() - started + options.poll_interval > options.poll_timeout:
            ledger.update(
                row_id,
                "poll-timeout",
                state=State.TIMEOUT,
                api_status=task.status,
                polls=polls,
                error_code="poll_timeout",
                error_message=(
                    f"still {task.status} after {options.poll_timeout:.0f}s of polling; "
                    "task id kept, the next run resumes polling"
                ),
            )
            return State.TIMEOUT
        await asyncio.sleep(options.poll_interval)


@task(
    name="poll",
    task_run_name="poll-{row_id}",
    retries=3,
    retry_delay_seconds=[5, 20, 60],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_when(*TRANSIENT),
    cache_policy=NO_CACHE,
)
async def poll_task(run_key: str, row_id: str) -> str:
    return await poll_row(get_runtime(run_key), row_id)
