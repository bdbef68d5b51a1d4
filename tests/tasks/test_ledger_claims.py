"""Many runs on one batch: claims with leases, the budget as one reservation, the stop flag.

Tests taking `site` run on both backends; the SKIP LOCKED test is PostgreSQL's own."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from conftest import LedgerSite

from tasks.store.ledger import CLAIMABLE, LeaseLost, Ledger, State


def _batch(ledger: Ledger, n: int) -> None:
    for i in range(n):
        ledger.ensure(f"r{i:02d}", i)


def _intent(ledger: Ledger, row_id: str, owner: str | None = None) -> None:
    ledger.record_intent(
        row_id,
        attempt=1,
        req_hash="h",
        key=f"k-{row_id}",
        estimated_cost=0.1,
        run_id="run",
        owner=owner,
    )


def test_claims_hand_out_rows_needing_work_once_in_order(site: LedgerSite) -> None:
    """Two runs claiming get disjoint rows in manifest order; done rows are never handed out."""
    with site.run() as ledger:
        _batch(ledger, 6)
        ledger.update("r01", state=State.DOWNLOADED)
        ledger.update("r02", state=State.SUBMITTED, task_id="t2")
        ledger.update("r03", state=State.FAILED)
        first = ledger.claim("run-a", 2, lease_s=600)
        second = ledger.claim("run-b", 10, lease_s=600)
        assert [r.row_id for r in first.rows] == ["r00", "r02"]  # to send, to poll
        assert [r.row_id for r in second.rows] == ["r04", "r05"]
        assert ledger.claim("run-c", 10, lease_s=600).rows == []
        assert ledger.lease("r00").owner == "run-a"  # type: ignore[union-attr]
        assert first.until > 0 and first.unknown == []


def test_a_released_or_expired_lease_is_taken_over_and_renewal_says_so(site: LedgerSite) -> None:
    """A lease that ran out is claimed by another run; the first run's renewal no longer
    lists the row, and a released row is claimable again."""
    with site.run() as ledger:
        _batch(ledger, 3)
        ledger.claim("alive", 1, lease_s=600)
        ledger.claim("dead", 1, lease_s=0)  # a run that never renewed: its lease is over
        taken = ledger.claim("heir", 5, lease_s=600)
        assert [r.row_id for r in taken.rows] == ["r01", "r02"]
        assert ledger.renew_lease("dead", lease_s=600) == []
        assert ledger.renew_lease("alive", lease_s=600) == ["r00"]
        assert ledger.release("heir", ["r02"]) == ["r02"]
        assert [r.row_id for r in ledger.claim("next", 5, lease_s=600).rows] == ["r02"]


def test_a_row_caught_mid_post_by_a_dead_run_becomes_unknown_not_resent(
    site: LedgerSite,
) -> None:
    """A row in intent whose lease ran out is reported unknown and never handed out; one under
    a live lease is left to its run."""
    with site.run() as ledger:
        _batch(ledger, 2)
        assert [r.row_id for r in ledger.claim("alive", 1, lease_s=600).rows] == ["r00"]
        _intent(ledger, "r00", owner="alive")
        assert [r.row_id for r in ledger.claim("dead", 1, lease_s=600).rows] == ["r01"]
        _intent(ledger, "r01", owner="dead")
        ledger.renew_lease("dead", lease_s=0)  # its last renewal, then it died mid-POST
        taken = ledger.claim("heir", 5, lease_s=600, states=CLAIMABLE | {State.UNKNOWN})
        assert taken.unknown == ["r01"] and taken.rows == []
        assert ledger.get("r01").state == State.UNKNOWN  # type: ignore[union-attr]
        assert ledger.get("r00").state == State.INTENT  # type: ignore[union-attr]
        assert [e["kind"] for e in ledger.events("r01")][-1] == "lease-expired"


def test_an_intent_needs_a_live_lease_when_its_owner_is_given(site: LedgerSite) -> None:
    """record_intent with an owner whose lease was taken over refuses: nothing may be sent."""
    with site.run() as ledger:
        _batch(ledger, 1)
        ledger.claim("slow", 1, lease_s=0)
        ledger.claim("heir", 1, lease_s=600)
        with pytest.raises(LeaseLost, match="r00"):
            _intent(ledger, "r00", owner="slow")
        assert ledger.get("r00").state == State.PENDING  # type: ignore[union-attr]
        _intent(ledger, "r00", owner="heir")
        assert ledger.get("r00").state == State.INTENT  # type: ignore[union-attr]


def test_concurrent_claimers_on_separate_connections_never_share_a_row(site: LedgerSite) -> None:
    """Eight threads, each with its own connection, claim until nothing is left: every row is
    handed out exactly once."""
    with site.run() as ledger:
        _batch(ledger, 60)
    got: list[str] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        with site.ledger() as mine:
            while rows := mine.claim(f"run-{k}", 3, lease_s=600).rows:
                with lock:
                    got.extend(r.row_id for r in rows)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert sorted(got) == [f"r{i:02d}" for i in range(60)]


def test_postgres_claims_skip_rows_another_transaction_holds(pg_url: str) -> None:
    """While another connection holds rows FOR UPDATE, a claim takes the others at once
    instead of waiting (SKIP LOCKED)."""
    from tasks.store.ledger import open_ledger

    with open_ledger(pg_url, batch="skip") as ledger:
        _batch(ledger, 4)
        with psycopg.connect(pg_url) as holder:
            holder.execute(
                "SELECT row_id FROM videobatch_rows WHERE batch = 'skip' "
                "AND row_id IN ('r00', 'r01') FOR UPDATE"
            )
            done: list[list[str]] = []
            claimer = threading.Thread(
                target=lambda: done.append(
                    [r.row_id for r in ledger.claim("b", 4, lease_s=60).rows]
                )
            )
            claimer.start()
            claimer.join(30)
            assert done == [["r02", "r03"]], "the claim waited for the locked rows"
            holder.rollback()
        assert [r.row_id for r in ledger.claim("c", 4, lease_s=60).rows] == ["r00", "r01"]


def test_reservations_from_many_threads_never_pass_the_cap(site: LedgerSite) -> None:
    """Threads on their own connections reserving at once: the cap holds exactly, a refused
    reservation changes nothing, and an intent turns a reservation into the row's money."""
    with site.run() as ledger:
        _batch(ledger, 40)
        ledger.update("r00", state=State.DOWNLOADED, cost=0.5)  # spent by an earlier run
    granted: list[str] = []

    def work(k: int) -> None:
        with site.ledger() as mine:
            for i in range(k, 40, 8):
                if mine.reserve_budget(f"r{i:02d}", 0.25, cap=3.0, hold_s=600):
                    granted.append(f"r{i:02d}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(1, 9)))
    with site.ledger() as ledger:
        assert len(granted) == 10  # (3.0 - 0.5) / 0.25
        assert ledger.reserved_cost() == pytest.approx(2.5)
        assert ledger.committed_cost() + ledger.reserved_cost() == pytest.approx(3.0)
        # A row no thread was granted (a row's own reservation is not counted twice).
        free = next(r for r in (f"r{i:02d}" for i in range(1, 40)) if r not in granted)
        assert not ledger.reserve_budget(free, 0.01, cap=3.0, hold_s=600)
        _intent(ledger, granted[0])  # estimate 0.1 of the 0.25 reserved
        assert ledger.reserved_cost() == pytest.approx(2.25)
        assert ledger.committed_cost() == pytest.approx(0.6)
        ledger.release_budget(granted[1])
        assert ledger.reserve_budget(free, 0.25 + 0.15, cap=3.0, hold_s=600)
        assert not ledger.reserve_budget("r38", float("nan"), cap=None, hold_s=600)


def test_a_reservation_of_a_dead_run_lapses_and_a_release_drops_it(site: LedgerSite) -> None:
    """A reservation held past its time no longer counts; releasing a lease drops its
    reservation; renewing a lease keeps it."""
    with site.run() as ledger:
        _batch(ledger, 3)
        assert ledger.reserve_budget("r00", 1.0, cap=1.0, hold_s=0)  # its run died
        assert ledger.reserve_budget("r01", 1.0, cap=1.0, hold_s=600)
        assert ledger.claim("w", 3, lease_s=600).rows
        assert ledger.reserve_budget("r02", 0.5, cap=2.0, hold_s=0)
        assert ledger.renew_lease("w", lease_s=600) == ["r00", "r01", "r02"]
        assert ledger.reserved_cost() == pytest.approx(2.5)  # r00 renewed back with it
        ledger.release("w")
        assert ledger.reserved_cost() == 0


def test_the_stop_flag_is_seen_by_every_run_of_the_batch(site: LedgerSite) -> None:
    """A 401 stop written by one run is read by another's connection; the first stop stands
    until cleared; other batches are not stopped."""
    with site.run() as one, site.ledger() as other, site.ledger("elsewhere") as third:
        assert other.stopped() is None
        one.stop_batch("auth", "401 from the API: the key was refused")
        later = other.stop_batch("payment", "402")
        assert later.kind == "auth" and "401" in later.reason
        seen = other.stopped()
        assert seen is not None and seen.kind == "auth"
        assert third.stopped() is None
        with pytest.raises(ValueError, match="stop kind"):
            one.stop_batch("oops", "x")
        other.clear_stop()
        assert one.stopped() is None


def test_a_run_resending_unknown_rows_never_claims_one_it_saw_turn_unknown(
    site: LedgerSite,
) -> None:
    """With unknown_before (the run's start), a later claim of a resending run skips a row
    that turned unknown during the run (another run's POST may still be answering), while a
    row unknown before the run started is handed out."""
    with site.run() as ledger:
        _batch(ledger, 3)
        ledger.claim("old", 1, lease_s=600)
        _intent(ledger, "r00", owner="old")
        ledger.renew_lease("old", lease_s=0)
        ledger.claim("sweeper", 0, lease_s=600)  # r00 unknown before the resending run starts
        started = time.time()
        ledger.claim("slow", 1, lease_s=600)
        _intent(ledger, "r01", owner="slow")
        ledger.renew_lease("slow", lease_s=0)  # its lease runs out while its POST is out
        wanted = CLAIMABLE | {State.UNKNOWN}
        first = ledger.claim("resender", 1, lease_s=600, states=wanted, unknown_before=started)
        assert first.unknown == ["r01"]
        later = ledger.claim("resender", 5, lease_s=600, states=wanted, unknown_before=started)
        handed = {r.row_id for r in first.rows} | {r.row_id for r in later.rows}
        assert handed == {"r00", "r02"}, "r01 turned unknown during the run: not resent"


def test_a_late_answer_never_overwrites_the_task_a_row_already_holds(site: LedgerSite) -> None:
    """A second task for one row (a late answer after a resend) is kept in an event and the
    first task stays the row's, so neither paid video is forgotten."""
    with site.run() as ledger:
        _batch(ledger, 1)
        _intent(ledger, "r00")
        assert ledger.record_submitted("r00", task_id="task-A", status="submitted")
        assert not ledger.record_submitted("r00", task_id="task-B", status="submitted")
        assert ledger.get("r00").task_id == "task-A"  # type: ignore[union-attr]
        kinds = [(e["kind"], e["detail"]) for e in ledger.events("r00")]
        assert kinds[-1][0] == "second-task" and "task-B" in kinds[-1][1]
        assert ledger.record_submitted("r00", task_id="task-A", status="submitted"), "same task"
