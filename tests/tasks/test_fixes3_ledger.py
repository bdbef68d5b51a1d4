"""The ledger's conditional writes that keep two runs of one batch from undoing each other's
paid work, on both backends (`site`: SQLite and PostgreSQL)."""

from __future__ import annotations

from contextlib import AbstractContextManager

from conftest import LedgerSite

from tasks.store.conflicts import renewed_record
from tasks.store.ledger import Ledger, RowRecord, State, open_ledger

_FIELDS = ("state", "attempt", "request_hash", "task_id", "estimated_cost", "error_code")


def _shared(site: LedgerSite) -> AbstractContextManager[Ledger]:
    """The batch as one of several runs sharing it opens it (a database batch, or a folder's
    ledger opened by a member)."""
    if site.url is None:
        return open_ledger(site.tmp / "one", shared=True)
    return site.run()


def _failed_row(ledger: Ledger, row_id: str = "r0") -> RowRecord:
    """`row_id` sent once as an old request, failed unpaid: what a changed row is renewed from."""
    ledger.ensure(row_id, 0)
    ledger.record_intent(
        row_id,
        attempt=1,
        req_hash="old-hash",
        key=f"k-{row_id}",
        estimated_cost=0.1,
        run_id="old-run",
    )
    ledger.record_submitted(row_id, task_id="task-old", status="submitted")
    ledger.update(row_id, "failed", state=State.FAILED, api_status="failed", cost=0.0)
    record = ledger.get(row_id)
    assert record is not None
    return record


def _renewal(record: RowRecord) -> dict[str, object]:
    fresh = renewed_record(record)
    return {f: getattr(fresh, f) for f in _FIELDS}


def _events(ledger: Ledger, kind: str) -> int:
    return sum(1 for e in ledger.events("r0") if e["kind"] == kind)


def test_a_renewal_applies_to_the_row_as_the_check_saw_it(site: LedgerSite) -> None:
    """A changed unpaid row still as the check read it is renewed: pending, next attempt,
    and one request-changed event."""
    with _shared(site) as ledger:
        seen = _failed_row(ledger)
        assert ledger.renew_request("r0", seen, _renewal(seen), owner="run-b")
        now = ledger.get("r0")
        assert now is not None
        assert (now.state, now.attempt, now.task_id) == (State.PENDING, 2, None)
        assert _events(ledger, "request-changed") == 1


def test_a_renewal_from_an_older_reading_never_wipes_a_task_sent_since(site: LedgerSite) -> None:
    """A row another run renewed and sent after this run's check keeps its task, its
    estimate and its state: the late renewal writes nothing, not even an event."""
    with _shared(site) as ledger:
        seen = _failed_row(ledger)
        # The other run: its renewal, then its send of the new request.
        assert ledger.renew_request("r0", seen, _renewal(seen), owner="run-a")
        ledger.record_intent(
            "r0",
            attempt=2,
            req_hash="new-hash",
            key="k-r0-a2",
            estimated_cost=0.2,
            run_id="run-a",
        )
        ledger.record_submitted("r0", task_id="task-new", status="submitted")
        assert not ledger.renew_request("r0", seen, _renewal(seen), owner="run-b")
        now = ledger.get("r0")
        assert now is not None
        assert (now.state, now.task_id, now.estimated_cost) == (State.SUBMITTED, "task-new", 0.2)
        assert _events(ledger, "request-changed") == 1


def test_a_renewal_never_touches_a_row_another_run_holds(site: LedgerSite) -> None:
    """On a shared batch a row under another run's live lease (its POST may be under way) is
    not renewed; once that lease ran out, or under the run's own lease, it is."""
    with _shared(site) as ledger:
        seen = _failed_row(ledger)
        claim = ledger.claim("run-a", 1, lease_s=600, states=[State.FAILED])
        assert [r.row_id for r in claim.rows] == ["r0"]
        assert not ledger.renew_request("r0", seen, _renewal(seen), owner="run-b")
        assert ledger.get("r0").state == State.FAILED  # type: ignore[union-attr]
        assert ledger.renew_request("r0", seen, _renewal(seen), owner="run-a")
        ledger.update(
            "r0", state=State.FAILED, attempt=1, request_hash="old-hash", task_id="task-old"
        )
        ledger.release("run-a")
        ledger.claim("run-dead", 1, lease_s=0, states=[State.FAILED])
        assert ledger.renew_request("r0", seen, _renewal(seen), owner="run-b")


def test_ensure_many_records_new_rows_and_keeps_what_existing_rows_hold(site: LedgerSite) -> None:
    """One call records every new row as pending, moves an existing row's index, and leaves an
    existing row's state and task alone; rows already as given are not written at all."""
    with site.run() as ledger:
        _failed_row(ledger)  # r0 at index 0, failed with task-old
        rows = [("r0", 3), *((f"n{i}", i + 10) for i in range(1200))]
        assert ledger.ensure_many(rows) == 1201
        records = ledger.all()
        assert len(records) == 1201
        assert (records["r0"].idx, records["r0"].state, records["r0"].task_id) == (
            3,
            State.FAILED,
            "task-old",
        )
        assert {records[f"n{i}"].state for i in range(1200)} == {State.PENDING}
        assert records["n1199"].idx == 1209
        assert ledger.ensure_many(rows) == 0
