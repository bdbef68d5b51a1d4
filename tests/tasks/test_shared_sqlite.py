"""A folder's SQLite ledger shared by the member runs of one batch (generate-sharded).

Members take the folder lock shared, a plain run exclusive; a member's ledger is `shared`, so
every rule of a shared batch applies: a row in `intent` under a live lease is another member's
POST under way and is never taken over, one whose lease ran out becomes `unknown`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tasks.errors import LeaseLost, LedgerLocked
from tasks.store.ledger import State, open_ledger


def _intent(ledger: object, row_id: str, owner: str) -> None:
    from tasks.store.ledger import Ledger

    assert isinstance(ledger, Ledger)
    ledger.record_intent(
        row_id,
        attempt=1,
        req_hash="h",
        key=f"k-{row_id}",
        estimated_cost=0.1,
        run_id=owner,
        owner=owner,
    )


def test_members_share_a_folder_that_a_plain_run_holds_alone(tmp_path: Path) -> None:
    """Two members open one folder together; a plain run is refused while they hold it, and a
    member is refused while a plain run holds it, each naming the holder; nothing is opened."""
    out = tmp_path / "out"
    with open_ledger(out, shared=True) as first, open_ledger(out, shared=True) as second:
        assert first.shared and second.shared
        with pytest.raises(LedgerLocked, match="member of a shared batch") as err, open_ledger(out):
            pass
        assert "Nothing was sent" in str(err.value)
    with open_ledger(out) as plain:
        assert not plain.shared
        with pytest.raises(LedgerLocked, match="plain run"), open_ledger(out, shared=True):
            pass


def test_a_member_never_takes_over_a_live_members_intent_row(tmp_path: Path) -> None:
    """A row in intent under another member's live lease stays intent when a member opens the
    folder and claims, is never handed out; its owner can still record its task."""
    out = tmp_path / "out"
    with open_ledger(out, shared=True) as alive:
        for i in range(3):
            alive.ensure(f"r{i}", i)
        claim = alive.claim("alive", 1, lease_s=600)
        assert [r.row_id for r in claim.rows] == ["r0"]
        _intent(alive, "r0", "alive")
        with open_ledger(out, shared=True) as joining:
            assert joining.get("r0").state == State.INTENT  # type: ignore[union-attr]
            taken = joining.claim("joining", 10, lease_s=600)
            assert [r.row_id for r in taken.rows] == ["r1", "r2"] and taken.unknown == []
            with pytest.raises(LeaseLost):
                _intent(joining, "r0", "joining")
        assert alive.record_submitted("r0", task_id="t-0", status="submitted")


def test_a_dead_members_intent_row_becomes_unknown_once_its_lease_ran_out(
    tmp_path: Path,
) -> None:
    """A member that died mid-POST leaves its row in intent; once its lease has run out the
    next member's claim turns it unknown (never resent blindly) and never hands it out."""
    out = tmp_path / "out"
    with open_ledger(out, shared=True) as dead:
        dead.ensure("r0", 0)
        dead.ensure("r1", 1)
        dead.claim("dead", 1, lease_s=0.2)
        _intent(dead, "r0", "dead")
    time.sleep(0.3)  # the dead member's lease is what must run out
    with open_ledger(out, shared=True) as member:
        claim = member.claim("member", 10, lease_s=60)
        assert [r.row_id for r in claim.rows] == ["r1"] and claim.unknown == ["r0"]
        record = member.get("r0")
        assert record is not None and record.state == State.UNKNOWN
        assert record.error_code == "submit_outcome_unknown"


def test_a_plain_run_after_the_members_ended_recovers_every_intent_row(tmp_path: Path) -> None:
    """The exclusive lock proves every member dead, so a plain run turns every intent row
    unknown, even one whose dead member's lease has not run out yet."""
    out = tmp_path / "out"
    with open_ledger(out, shared=True) as dead:
        dead.ensure("r0", 0)
        dead.claim("dead", 1, lease_s=600)
        _intent(dead, "r0", "dead")
    with open_ledger(out) as plain:
        assert plain.get("r0").state == State.UNKNOWN  # type: ignore[union-attr]


def test_heartbeats_are_kept_aged_and_removed(site: Any) -> None:
    """A member's heartbeat is read back with its age on the ledger's clock; leaving removes it."""
    with site.run() as ledger:
        ledger.beat("run-a")
        ledger.beat("run-b")
        time.sleep(0.2)
        ledger.beat("run-b")
        ages = ledger.members()
        assert set(ages) == {"run-a", "run-b"}
        assert ages["run-a"] >= 0.15 and ages["run-b"] < ages["run-a"]
        ledger.leave("run-a")
        assert set(ledger.members()) == {"run-b"}
        reader = site.ledger(readonly=True)
        try:
            assert set(reader.members()) == {"run-b"}
        finally:
            reader.close()
