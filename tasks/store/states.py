"""Every state a row can be in, every grouping of them, and how one vocabulary maps to the other.

Two vocabularies, one enum each:

* `State`: where a row stands in the ledger (`OUT/ledger.sqlite`, column `state`). Values are
  stored, so they never change: ledgers written by any earlier version still parse.
* `Status`: what the results table (`results.parquet`, column `status`) says became of a row.

They share some words and not their meaning. Ledger `completed` (`State.COMPLETED`) means the
vendor's task finished and was paid for, but no verified video is on disk yet: a run that ends
there reports the row `download_failed`. Result `completed` (`Status.COMPLETED`) means the
video is on disk and verified, which is ledger `downloaded`. The whole map (`result_status`):

    ledger state       result status     why
    pending            not_submitted
    intent             unknown           a POST was under way: it may have made a paid task
    unknown            unknown
    submitted          timeout           a task that has not ended (yet)
    timeout            timeout
    completed          download_failed   paid for, no verified video on disk
    downloaded         completed
    download_failed    download_failed
    failed             failed
    cancelled          cancelled
    rejected           rejected
    skipped_budget     skipped_budget
    skipped_payment    skipped_payment
    (no ledger row)    not_submitted
    (not a State)      unknown           a person should look before anything is resent
    (invalid row)      invalid           whatever the ledger holds

Two statuses never come from the map: `invalid` (the manifest row cannot be sent) and
`conflict` (the row's paid task was made from another version of it; see `tasks.store.results`).

Groupings of ledger states (`WITH_TASK`, `DOUBTFUL` and `NEVER_SENT` partition `State`):

    WITH_TASK     a task exists at the vendor: the row owns money, is never sent again unasked
    DOUBTFUL      a POST may have created a task; resent only when a person asks
    NEVER_SENT    certainly no task: may be sent (rejected: only once the request changed)
    TO_POLL       the poll step picks these up (again, on a resumed run)
    DOWNLOADABLE  a completed task whose video is to fetch, or to check again
    SETTLED       nothing more happens to the row in this attempt
    UNPAID_ENDS   the task ended without a charge
    AT_RISK       money spent or at risk while the real cost is unknown
    DONE          needs no more work in this run (the CLI's progress count)

Groupings of result statuses:

    FINAL_STATUSES  running again without new flags changes nothing (the inbox files these)
    NOT_DONE        money not settled yet: a later run may still send the row or learn its cost
    UNSENT          never sent (yet): its estimate is what sending it would cost
    NOT_FAILURES    neither made wrong nor failed: the failure tables leave these out
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, assert_never

__all__ = [
    "AT_RISK",
    "DONE",
    "DOUBTFUL",
    "DOWNLOADABLE",
    "FINAL_STATUSES",
    "NEVER_SENT",
    "NOT_DONE",
    "NOT_FAILURES",
    "SETTLED",
    "STATUS_ORDER",
    "TO_POLL",
    "UNPAID_ENDS",
    "UNSENT",
    "WITH_TASK",
    "State",
    "Status",
    "parse_state",
    "result_status",
]


class State(StrEnum):
    """Where a row stands in the ledger. Only rows in NEVER_SENT may be sent unasked."""

    PENDING = "pending"
    """Known, never sent (or sent and certainly not created)."""
    INTENT = "intent"
    """Key committed, POST under way; after a crash this reads as `unknown`."""
    UNKNOWN = "unknown"
    """The POST may have created a paid task."""
    SUBMITTED = "submitted"
    """Task id known, task not finished."""
    TIMEOUT = "timeout"
    """Polling gave up; the task id is kept and polled next run."""
    COMPLETED = "completed"
    """The task is done and paid for; its video is NOT yet verified on disk (the result
    status of a row left here is `download_failed`, never `completed`)."""
    DOWNLOADED = "downloaded"
    """Video on disk and verified: the row is done (result status `completed`)."""
    DOWNLOAD_FAILED = "download_failed"
    """A paid video we could not fetch; the next run tries again."""
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    """The API refused the request (400); nothing was charged."""
    SKIPPED_BUDGET = "skipped_budget"
    SKIPPED_PAYMENT = "skipped_payment"


class Status(StrEnum):
    """What the results table says became of a row, in display order: done first, then what
    went wrong, then what never started."""

    COMPLETED = "completed"
    """The video is on disk and verified (ledger `downloaded`)."""
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    DOWNLOAD_FAILED = "download_failed"
    """Paid for, but no verified video on disk."""
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"
    CONFLICT = "conflict"
    NOT_SUBMITTED = "not_submitted"
    SKIPPED_BUDGET = "skipped_budget"
    SKIPPED_PAYMENT = "skipped_payment"
    INVALID = "invalid"


STATUS_ORDER: Final[tuple[Status, ...]] = tuple(Status)

# --- ledger states --------------------------------------------------------------------------

WITH_TASK: Final = frozenset(
    {
        State.SUBMITTED,
        State.TIMEOUT,
        State.COMPLETED,
        State.DOWNLOADED,
        State.DOWNLOAD_FAILED,
        State.FAILED,
        State.CANCELLED,
    }
)
DOUBTFUL: Final = frozenset({State.INTENT, State.UNKNOWN})
NEVER_SENT: Final = frozenset(
    {State.PENDING, State.REJECTED, State.SKIPPED_BUDGET, State.SKIPPED_PAYMENT}
)
TO_POLL: Final = frozenset({State.SUBMITTED, State.TIMEOUT})
DOWNLOADABLE: Final = frozenset({State.COMPLETED, State.DOWNLOADED, State.DOWNLOAD_FAILED})
SETTLED: Final = frozenset(
    {
        State.COMPLETED,
        State.DOWNLOADED,
        State.DOWNLOAD_FAILED,
        State.FAILED,
        State.CANCELLED,
        State.REJECTED,
    }
)
UNPAID_ENDS: Final = frozenset({State.FAILED, State.CANCELLED})
AT_RISK: Final = (WITH_TASK | DOUBTFUL) - UNPAID_ENDS
DONE: Final = frozenset(
    {
        State.DOWNLOADED,
        State.FAILED,
        State.CANCELLED,
        State.REJECTED,
        State.DOWNLOAD_FAILED,
        State.SKIPPED_BUDGET,
        State.SKIPPED_PAYMENT,
        State.UNKNOWN,
        State.TIMEOUT,
    }
)

# --- result statuses ------------------------------------------------------------------------

FINAL_STATUSES: Final = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.INVALID, Status.REJECTED}
)
NOT_DONE: Final = frozenset(
    {
        Status.NOT_SUBMITTED,
        Status.SKIPPED_BUDGET,
        Status.SKIPPED_PAYMENT,
        Status.TIMEOUT,
        Status.UNKNOWN,
    }
)
UNSENT: Final = frozenset(
    {Status.NOT_SUBMITTED, Status.SKIPPED_BUDGET, Status.SKIPPED_PAYMENT, Status.REJECTED}
)
NOT_FAILURES: Final = frozenset({Status.COMPLETED, Status.NOT_SUBMITTED})


def parse_state(value: str) -> State | None:
    """The ledger state stored as `value`, or None for a value this version does not know."""
    try:
        return State(value)
    except ValueError:
        return None


def result_status(state: str | None, *, valid: bool = True) -> Status:
    """The status the results table reports for a row whose ledger state is `state`.

    `state` is None when the ledger has no row for it; `valid` is False for a manifest row
    that cannot be sent as now written (`invalid`, whatever the ledger holds). A stored value
    this version does not know reads as `unknown`: the one status that tells a person to look
    before anything is resent or written off.
    """
    if not valid:
        return Status.INVALID
    if state is None:
        return Status.NOT_SUBMITTED
    known = parse_state(state)
    if known is None:
        return Status.UNKNOWN
    match known:
        case State.PENDING:
            return Status.NOT_SUBMITTED
        case State.INTENT | State.UNKNOWN:
            return Status.UNKNOWN
        case State.SUBMITTED | State.TIMEOUT:
            return Status.TIMEOUT
        case State.COMPLETED | State.DOWNLOAD_FAILED:
            # The task finished and was paid for, but no verified video is on disk.
            return Status.DOWNLOAD_FAILED
        case State.DOWNLOADED:
            return Status.COMPLETED
        case State.FAILED:
            return Status.FAILED
        case State.CANCELLED:
            return Status.CANCELLED
        case State.REJECTED:
            return Status.REJECTED
        case State.SKIPPED_BUDGET:
            return Status.SKIPPED_BUDGET
        case State.SKIPPED_PAYMENT:
            return Status.SKIPPED_PAYMENT
        case _:
            assert_never(known)
