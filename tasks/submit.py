"""Submitting one row: the only step that spends money, so the only one never retried blindly.

`submit_row` decides from the ledger whether the row may be sent at all, reserves its estimated
cost, commits the intent (idempotency key) before the POST and the task id right after it.
The Prefect task around it has no retries and no cache: a retry re-runs the body and could pay
twice; resending is the ledger's decision, not Prefect's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from apimart.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    PaymentRequiredError,
    RateLimitError,
    SubmitOutcomeUnknown,
)
from apimart.models import SubmitResult, VideoRequest
from tasks.ledger import DOUBTFUL, NEVER_SENT, RowRecord, State, request_hash
from tasks.options import RunOptions
from tasks.runtime import Runtime, get_runtime, run_logger

# How often one row is re-queued after 429s that outlasted the client's own retries.
MAX_THROTTLED_ROUNDS = 8
# How long a cancelled run still waits for a POST under way to answer and be recorded.
ANSWER_GRACE_S = 90.0
RECORD_TRIES = 5


async def _post_and_record(
    runtime: Runtime, row_id: str, request: VideoRequest, key: str
) -> SubmitResult:
    result = await runtime.client.submit(request, idempotency_key=key)
    _record_task_id(runtime, row_id, result)
    return result


def _record_task_id(runtime: Runtime, row_id: str, result: SubmitResult) -> None:
    """The one write that must not be lost: a paid task whose id is forgotten is lost money."""
    for attempt in range(1, RECORD_TRIES + 1):
        try:
            runtime.ledger.record_submitted(row_id, task_id=result.task_id, status=result.status)
            return
        except Exception as exc:
            run_logger().error(
                "row %s: PAID task %s created but not recorded (try %d of %d): %s",
                row_id,
                result.task_id,
                attempt,
                RECORD_TRIES,
                exc,
            )
            if attempt == RECORD_TRIES:
                raise
            time.sleep(0.2 * attempt)


async def _shielded(post: Coroutine[Any, Any, SubmitResult]) -> SubmitResult:
    """Let a POST under way reach the ledger even when the run is cancelled (Ctrl-C).

    Cancelling between the request and the write of its task id would forget a paid task.
    """
    inner = asyncio.ensure_future(post)
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        await asyncio.wait({inner}, timeout=ANSWER_GRACE_S)
        if inner.done() and not inner.cancelled():
            inner.exception()  # seen here; the outcome is in the ledger either way
        raise


def send_decision(
    record: RowRecord, request: VideoRequest, options: RunOptions
) -> tuple[str, int] | str:
    """(`send`, attempt) when the row should be POSTed now, else the state it keeps.

    The one statement of when money may be spent; the run's planning reads it too.
    """
    if record.state in DOUBTFUL:
        return ("send", record.attempt) if options.resubmit_unknown else State.UNKNOWN
    if record.state in (State.FAILED, State.CANCELLED):
        return ("send", record.attempt + 1) if options.retry_failed else record.state
    if record.state == State.REJECTED and record.request_hash == request_hash(request):
        return State.REJECTED  # the API refused this exact request; resending cannot help
    if record.state in NEVER_SENT:
        return ("send", max(record.attempt, 1))
    return record.state  # has a task: poll or download it, never pay again


def submit_decision(runtime: Runtime, row_id: str) -> tuple[str, int] | str:
    """`send_decision` for a row of this run, recording the row first if it is new."""
    row = runtime.row(row_id)
    assert row.request is not None, "invalid rows are never submitted"
    record = runtime.ledger.ensure(row_id, row.index)
    return send_decision(record, row.request, runtime.options)


async def submit_row(runtime: Runtime, row_id: str) -> str:
    """Send the row if the ledger allows it; return the row's state afterwards."""
    decision = submit_decision(runtime, row_id)
    if isinstance(decision, str):
        return decision
    _, attempt = decision
    log = run_logger()
    ledger, gate, row = runtime.ledger, runtime.gate, runtime.row(row_id)
    assert row.request is not None
    gate.check()
    estimate = runtime.estimate(row)
    record = runtime.ledger.get(row_id)
    assert record is not None
    doubtful = record.state in DOUBTFUL
    if gate.payment_exhausted:
        if doubtful:
            return State.UNKNOWN
        ledger.update(row_id, "skipped", state=State.SKIPPED_PAYMENT, attempt=attempt)
        return State.SKIPPED_PAYMENT
    # What the ledger counted as at risk for a doubtful row when the run began; it is
    # reserved afresh below like any other row, so the budget never counts it twice.
    at_risk = (record.estimated_cost or estimate) if doubtful else 0.0
    runtime.budget.release(at_risk)
    if not runtime.budget.reserve(estimate):
        if doubtful:
            runtime.budget.committed += at_risk  # still at risk: it stays `unknown`
            return State.UNKNOWN
        ledger.update(
            row_id,
            "skipped",
            state=State.SKIPPED_BUDGET,
            attempt=attempt,
            estimated_cost=estimate,
            error_code="budget",
            error_message=f"estimated {estimate:.2f} would pass the cap {runtime.budget.cap}",
        )
        return State.SKIPPED_BUDGET

    def not_sent(state: str, event: str, *, settles_doubt: bool = False, **fields: Any) -> str:
        """This POST certainly created nothing: give the reservation back.

        A resend of a doubtful row that never got through says nothing of the first POST, so
        the row stays `unknown` with its estimate at risk, unless the answer settles the doubt.
        The attempt number is kept, so `--retry-failed` is not undone by a skip.
        """
        if doubtful and not settles_doubt:
            ledger.update(row_id, event, state=State.UNKNOWN, **fields)
            return State.UNKNOWN
        runtime.budget.release(estimate)
        ledger.update(row_id, event, state=state, attempt=attempt, **fields)
        return state

    req_hash = request_hash(row.request)
    reuse_key = doubtful and record.idempotency_key
    key = record.idempotency_key if reuse_key else None
    key = key or ledger.idempotency_key(row_id, req_hash, attempt)

    for _ in range(MAX_THROTTLED_ROUNDS):
        await gate.wait_turn()
        gate.check()
        if gate.unreachable:
            return not_sent(
                State.PENDING,
                "not-sent",
                error_code="connect",
                error_message="the API was unreachable for the rows before this one; not tried",
            )
        if gate.payment_exhausted:
            return not_sent(State.SKIPPED_PAYMENT, "skipped")
        ledger.record_intent(
            row_id,
            attempt=attempt,
            req_hash=req_hash,
            key=key,
            estimated_cost=estimate,
            run_id=runtime.run_id,
        )
        try:
            result = await _shielded(_post_and_record(runtime, row_id, row.request, key))
        except SubmitOutcomeUnknown as exc:
            ledger.update(
                row_id,
                "outcome-unknown",
                state=State.UNKNOWN,
                error_code="submit_outcome_unknown",
                error_message=f"{exc.cause}; not resent (use --resubmit-unknown)",
            )
            log.warning("row %s: submit outcome unknown (%s); money at risk", row_id, exc.cause)
            return State.UNKNOWN
        except RateLimitError as exc:
            # Out of `intent` while everyone pauses: a crash now must not read as a doubtful POST.
            back = State.UNKNOWN if doubtful else State.PENDING
            ledger.update(row_id, "throttled", state=back, error_code="rate_limited")
            pause = gate.throttled(exc.retry_after)
            log.warning("row %s: throttled; all submits pause %.1fs", row_id, pause)
            continue
        except ConnectError as exc:
            gate.connected(False)
            log.error("row %s: API unreachable, row not sent: %s", row_id, exc)
            return not_sent(State.PENDING, "not-sent", error_code="connect", error_message=str(exc))
        except AuthenticationError:
            not_sent(State.PENDING, "not-sent", error_code="authentication")
            gate.stop("authentication failed (401): check the API key")
            raise
        except PaymentRequiredError as exc:
            gate.payment_exhausted = True
            log.error("balance exhausted (402): no new submissions; in-flight tasks continue")
            return not_sent(
                State.SKIPPED_PAYMENT,
                "payment-required",
                error_code="payment_required",
                error_message=str(exc),
            )
        except BadRequestError as exc:
            log.error("row %s: rejected by the API: %s", row_id, exc)
            # Only a plain 400 to the very same body says the first POST was refused too; a
            # 409 or 422 from a server that knows the key means the first task exists.
            return not_sent(
                State.REJECTED,
                "rejected",
                settles_doubt=exc.status_code == 400,
                error_code=exc.error_type or "bad_request",
                error_message=str(exc),
            )
        gate.connected(True)
        log.info("row %s: submitted as %s (attempt %d)", row_id, result.task_id, attempt)
        return State.SUBMITTED
    return not_sent(State.PENDING, "not-sent", error_code="rate_limited")


@task(
    name="submit",
    task_run_name="submit-{row_id}",
    retries=0,
    cache_policy=NO_CACHE,
    log_prints=False,
)
async def submit_task(run_key: str, row_id: str) -> str:
    return await submit_row(get_runtime(run_key), row_id)
