"""Submitting one row: the only step that spends money, so the only one never retried blindly.

`submit_row` decides from the ledger whether the row may be sent at all, reserves its estimated
cost, commits the intent (idempotency key) before the POST and the task id right after it.
It is never retried by Prefect (the chunk task around it has no retries and no cache): a retry
would re-run the body and could pay twice; resending is the ledger's decision, not Prefect's.

On a batch shared by several runs (a PostgreSQL ledger), three things are the batch's rather
than the run's: the intent is written only under this run's live lease on the row (`LeaseLost`
otherwise: another run may own the row now, and nothing is sent); the budget is reserved in the
ledger (`tasks.run.gate.LedgerBudget`); and a 401 or 402 sets the batch's stop flag, which every
run of the batch reads before each POST.

Local images are read here, not at manifest time (the manifest keeps a reference and the digest
of each data URI, see `tasks.store.manifest`): right before the intent, each round builds the
body from the files, and a file that changed since the manifest was checked keeps the row
never-sent: no intent written, its reservation given back, the row, file and rule named.
The fingerprint written with the intent is the manifest's, and the bytes sent match it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, assert_never

from apimart.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    EndpointNotFound,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    RequestValidationError,
    SubmitOutcomeUnknown,
    UnsendableRequest,
)
from apimart.models import SubmitResult, VideoRequest
from tasks.errors import TaskNotRecorded
from tasks.run.options import RunOptions
from tasks.run.runtime import Runtime, run_logger
from tasks.store.hashing import request_hash
from tasks.store.ledger import LeaseLost, Ledger, RowRecord
from tasks.store.states import DOUBTFUL, State, parse_state

# How often one row is re-queued after 429s that outlasted the client's own retries.
MAX_THROTTLED_ROUNDS = 8
# How long a cancelled run still waits for a POST under way to answer and be recorded.
ANSWER_GRACE_S = 90.0
RECORD_TRIES = 5


async def _post_and_record(
    runtime: Runtime, row_id: str, request: VideoRequest, key: str
) -> SubmitResult:
    result = await runtime.client.submit(request, idempotency_key=key)
    # From here on a task exists: whatever fails must not pass for a client error.
    try:
        _record_task_id(runtime, row_id, result)
    except Exception as exc:
        raise TaskNotRecorded(row_id, result.task_id, exc) from exc
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


def shares_batch(ledger: Ledger) -> bool:
    """Whether the ledger is one batch of a shared database (rows are claimed), rather than
    a folder's own SQLite file (the folder lock makes the run its only writer)."""
    return ledger.shared


def lease_owner(runtime: Runtime) -> str | None:
    """Who holds this run's leases on a shared batch (its run id); None on a folder's ledger."""
    return runtime.run_id if shares_batch(runtime.ledger) else None


def obey_batch_stop(runtime: Runtime) -> None:
    """Take over a stop another run of the batch set (401: stop; 402: no new submissions)."""
    if not shares_batch(runtime.ledger):
        return
    stop = runtime.ledger.stopped()
    if stop is None:
        return
    if stop.kind == "auth":
        runtime.gate.stop(f"the batch was stopped by another run: {stop.reason}")
    elif not runtime.gate.payment_exhausted:
        runtime.gate.payment_exhausted = True
        run_logger().error(
            "the batch was stopped by another run (%s): no new submissions", stop.reason
        )


def _write_held(runtime: Runtime, row_id: str, event: str, **values: Any) -> bool:
    """A write that turns the row back into a never-sent state: on a shared batch only while
    this run still holds the row (`Ledger.update_held`), since a run whose lease lapsed must
    not undo what the run that took the row over has sent since. False: not written."""
    owner = lease_owner(runtime)
    if owner is None:
        runtime.ledger.update(row_id, event, **values)
        return True
    if runtime.ledger.update_held(row_id, owner, event, **values):
        return True
    run_logger().warning(
        "row %s: another run of the batch holds it now; this run's %s is not written",
        row_id,
        event,
    )
    return False


def _state_now(runtime: Runtime, row_id: str) -> str:
    record = runtime.ledger.get(row_id)
    return record.state if record else State.PENDING


def _stop_batch(runtime: Runtime, kind: str, reason: str) -> None:
    if shares_batch(runtime.ledger):
        runtime.ledger.stop_batch(kind, reason)


def send_decision(
    record: RowRecord, request: VideoRequest, options: RunOptions
) -> tuple[str, int] | str:
    """(`send`, attempt) when the row should be POSTed now, else the state it keeps.

    The one statement of when money may be spent; the run's planning reads it too.
    """
    state = parse_state(record.state)
    if state is None:
        return record.state  # a state this version does not know: never pay on a guess
    match state:
        case State.INTENT | State.UNKNOWN:  # DOUBTFUL
            return ("send", record.attempt) if options.resubmit_unknown else State.UNKNOWN
        case State.FAILED | State.CANCELLED:
            return ("send", record.attempt + 1) if options.retry_failed else state
        case State.REJECTED if record.request_hash == request_hash(request):
            return State.REJECTED  # the API refused this exact request; resending cannot help
        case State.PENDING | State.REJECTED | State.SKIPPED_BUDGET | State.SKIPPED_PAYMENT:
            return ("send", max(record.attempt, 1))  # NEVER_SENT
        case (
            State.SUBMITTED
            | State.TIMEOUT
            | State.COMPLETED
            | State.DOWNLOADED
            | State.DOWNLOAD_FAILED
        ):
            return state  # has a task: poll or download it, never pay again
        case _:
            assert_never(state)


def submit_decision(runtime: Runtime, row_id: str) -> tuple[str, int] | str:
    """`send_decision` for a row of this run, recording the row first if it is new."""
    row = runtime.row(row_id)
    assert row.request is not None, "invalid rows are never submitted"
    # The run's open recorded every row: `ensure` (a write and a commit) only for one it did not.
    record = runtime.ledger.get(row_id) or runtime.ledger.ensure(row_id, row.index)
    return send_decision(record, row.request, runtime.options)


def _describe(exc: BaseException) -> str:
    text = str(exc)[:500]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def submit_row(runtime: Runtime, row_id: str) -> str:
    """Send the row if the ledger allows it; return the row's state afterwards.

    Money: a doubtful row's first POST may have created a paid task, and its estimate is in
    the budget already (the ledger counts it). A resend reserves its own estimate on top, so
    the cap holds even if both were charged; the ledger keeps counting the first until a plain
    400 settles the doubt (see `tasks.store.ledger`).
    """
    decision = submit_decision(runtime, row_id)
    if isinstance(decision, str):
        return decision
    _, attempt = decision
    log = run_logger()
    ledger, gate, budget, row = runtime.ledger, runtime.gate, runtime.budget, runtime.row(row_id)
    assert row.request is not None
    request = row.request
    gate.check()
    estimate = runtime.estimate(row)
    record = runtime.ledger.get(row_id)
    assert record is not None
    doubtful = record.state in DOUBTFUL
    # The doubtful row's first POST, as the ledger (and so the budget) counts it now.
    first_estimate = (record.estimated_cost or estimate) if doubtful else 0.0
    earlier = record.earlier_posts_cost or 0.0
    # How a doubtful row's money reads again once its resend certainly created nothing.
    as_before = (
        {"estimated_cost": first_estimate, "earlier_posts_cost": record.earlier_posts_cost}
        if doubtful
        else {}
    )
    if gate.payment_exhausted or gate.throttled_out:
        if doubtful:
            return State.UNKNOWN
        if gate.payment_exhausted:
            if not _write_held(
                runtime, row_id, "skipped", state=State.SKIPPED_PAYMENT, attempt=attempt
            ):
                return _state_now(runtime, row_id)
            return State.SKIPPED_PAYMENT
        if not _write_held(
            runtime,
            row_id,
            "not-sent",
            state=State.PENDING,
            attempt=attempt,
            error_code="rate_limited",
            error_message=gate.throttled_out,
        ):
            return _state_now(runtime, row_id)
        return State.PENDING

    def over_budget() -> str:
        if doubtful:
            _write_held(
                runtime,
                row_id,
                "resend-over-budget",
                error_message=(
                    f"not resent: the earlier POST may have been charged "
                    f"({first_estimate + earlier:.2f} still counted), and a resend estimated "
                    f"at {estimate:.2f} on top would pass the cap {budget.cap}"
                ),
            )
            return State.UNKNOWN
        if not _write_held(
            runtime,
            row_id,
            "skipped",
            state=State.SKIPPED_BUDGET,
            attempt=attempt,
            estimated_cost=estimate,
            error_code="budget",
            error_message=f"estimated {estimate:.2f} would pass the cap {budget.cap}",
        ):
            return _state_now(runtime, row_id)
        return State.SKIPPED_BUDGET

    if not budget.reserve(estimate, row_id):
        return over_budget()
    # Whether this POST's estimate is reserved now. A 429 gives it back for the pause (the row
    # is pending, no money at risk), so every later round reserves again before its intent:
    # another run of the batch may have spent the cap meanwhile.
    held = True

    def give_back() -> None:
        nonlocal held
        if held:
            budget.release(estimate, row_id, owner=lease_owner(runtime))
            held = False

    def not_sent(state: str, event: str, *, settles_doubt: bool = False, **fields: Any) -> str:
        """This POST certainly created nothing: give its reservation back.

        A resend of a doubtful row that never got through says nothing of the first POST, so
        the row stays `unknown` with the first estimate at risk, unless the answer settles the
        doubt; then no earlier POST of the row is counted any more either.
        The attempt number is kept, so `--retry-failed` is not undone by a skip.
        """
        give_back()
        if doubtful and not settles_doubt:
            if not _write_held(runtime, row_id, event, state=State.UNKNOWN, **as_before, **fields):
                return _state_now(runtime, row_id)
            return State.UNKNOWN
        if doubtful:
            fields["earlier_posts_cost"] = None
        if not _write_held(runtime, row_id, event, state=state, attempt=attempt, **fields):
            return _state_now(runtime, row_id)
        if doubtful:
            budget.release(first_estimate + earlier)
        return state

    req_hash = request_hash(request)
    reuse_key = doubtful and record.idempotency_key
    key = record.idempotency_key if reuse_key else None
    key = key or ledger.idempotency_key(row_id, req_hash, attempt)

    async def post_once() -> str | None:
        """One POST, or none when the gate says so; None asks for another round (429)."""
        await gate.wait_turn()
        obey_batch_stop(runtime)
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
        if gate.throttled_out:
            return not_sent(
                State.PENDING,
                "not-sent",
                error_code="rate_limited",
                error_message=gate.throttled_out,
            )
        nonlocal held
        if not held:
            if not budget.reserve(estimate, row_id):
                return over_budget()
            held = True
        try:
            # Before the intent: a refusal here is certain to have sent nothing. In a thread,
            # since a large image would stall polling and lease renewals on the event loop.
            sendable = (
                await asyncio.to_thread(request.inlined) if request.has_local_images else request
            )
        except RequestValidationError as exc:
            rule = "; ".join(f"{field}: {why}" for field, why in exc.problems.items())
            message = f"row {row.number} (id {row_id!r}): {rule}; not sent"
            log.error("%s", message)
            return not_sent(
                State.PENDING, "image-changed", error_code="image_changed", error_message=message
            )
        try:
            ledger.record_intent(
                row_id,
                attempt=attempt,
                req_hash=req_hash,
                key=key,
                estimated_cost=estimate,
                run_id=runtime.run_id,
                # The first POST's estimate moves aside, still counted, in the same write.
                earlier_posts_cost=earlier + first_estimate if doubtful else None,
                owner=lease_owner(runtime),
            )
        except LeaseLost as exc:
            give_back()  # nothing left: the intent was never written
            log.warning("row %s: %s", row_id, exc)
            current = ledger.get(row_id)
            return current.state if current else State.PENDING
        except Exception:
            give_back()  # nothing left: the intent was never written
            raise
        try:
            result = await _shielded(_post_and_record(runtime, row_id, sendable, key))
        except TaskNotRecorded as exc:
            # Paid: the row keeps its `intent` (unknown to the next run) and its reservation.
            log.critical("%s", exc)
            gate.stop(str(exc))
            raise
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
            pause = gate.throttled(exc.retry_after)
            if gate.throttled_out:
                log.error("row %s: %s", row_id, gate.throttled_out)
                return not_sent(
                    State.PENDING,
                    "not-sent",
                    error_code="rate_limited",
                    error_message=gate.throttled_out,
                )
            # Out of `intent` while everyone pauses: a crash now must not read as a doubtful POST.
            back = State.UNKNOWN if doubtful else State.PENDING
            ledger.update(row_id, "throttled", state=back, error_code="rate_limited", **as_before)
            give_back()
            log.warning("row %s: throttled; all submits pause %.1fs", row_id, pause)
            return None
        except ConnectError as exc:
            gate.connected(False)
            log.error("row %s: API unreachable, row not sent: %s", row_id, exc)
            return not_sent(State.PENDING, "not-sent", error_code="connect", error_message=str(exc))
        except PermissionDeniedError as exc:
            # A proxy or WAF answers 403 whatever the row holds: no verdict on the row.
            not_sent(
                State.PENDING, "not-sent", error_code="permission_denied", error_message=str(exc)
            )
            gate.stop(
                f"permission denied (403): {exc}; check the key's access, or what stands "
                "between this machine and the API"
            )
            raise
        except AuthenticationError as exc:
            not_sent(State.PENDING, "not-sent", error_code="authentication", error_message=str(exc))
            reason = f"authentication failed (401): check the API key ({exc})"
            gate.stop(reason)
            _stop_batch(runtime, "auth", reason)
            raise
        except EndpointNotFound as exc:
            # Every row would get the same answer, and none of them created anything.
            not_sent(
                State.PENDING, "not-sent", error_code="endpoint_not_found", error_message=str(exc)
            )
            log.error("row %s: %s", row_id, exc)
            gate.stop(f"the submit URL does not exist: {exc}")
            raise
        except PaymentRequiredError as exc:
            gate.answered()
            gate.payment_exhausted = True
            # The row first: a 402 created nothing, and a failing flag write must not leave
            # the row in `intent`, where it reads as money at risk.
            state = not_sent(
                State.SKIPPED_PAYMENT,
                "payment-required",
                error_code="payment_required",
                error_message=str(exc),
            )
            _stop_batch(runtime, "payment", f"balance exhausted (402): {exc}")
            log.error("balance exhausted (402): no new submissions; in-flight tasks continue")
            return state
        except BadRequestError as exc:
            gate.answered()
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
        except UnsendableRequest as exc:
            # h11 refused to put the request on the wire: every row would meet the same refusal.
            not_sent(
                State.PENDING, "not-sent", error_code="unsendable_request", error_message=str(exc)
            )
            gate.stop(f"the request cannot be sent: {exc}")
            raise
        except Exception as exc:
            # The client's contract: whatever may have created a task is SubmitOutcomeUnknown,
            # and a created task that the ledger refused is TaskNotRecorded (both above). So
            # anything else left `client.submit` before a task existed: the row is never-sent.
            not_sent(
                State.PENDING, "not-sent", error_code="submit_error", error_message=_describe(exc)
            )
            log.error("row %s: not sent, the client failed: %s", row_id, _describe(exc))
            raise
        gate.submitted()
        log.info("row %s: submitted as %s (attempt %d)", row_id, result.task_id, attempt)
        return State.SUBMITTED

    for _ in range(MAX_THROTTLED_ROUNDS):
        async with gate.sending():
            state = await post_once()
        if state is not None:
            return state
    return not_sent(
        State.PENDING,
        "not-sent",
        error_code="rate_limited",
        error_message=f"throttled (429) {MAX_THROTTLED_ROUNDS} times in a row; not sent",
    )
