"""The one module of states: the ledger-to-result map, its groupings, and old ledgers' values."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tasks.store import states
from tasks.store.ledger import Ledger
from tasks.store.states import (
    AT_RISK,
    DONE,
    DOUBTFUL,
    DOWNLOADABLE,
    FINAL_STATUSES,
    NEVER_SENT,
    NOT_DONE,
    NOT_FAILURES,
    SETTLED,
    STATUS_ORDER,
    TO_POLL,
    UNPAID_ENDS,
    UNSENT,
    WITH_TASK,
    State,
    Status,
    parse_state,
    result_status,
)

# What ledgers and results files written by earlier versions hold, letter for letter.
OLD_LEDGER_VALUES = (
    "pending",
    "intent",
    "unknown",
    "submitted",
    "timeout",
    "completed",
    "downloaded",
    "download_failed",
    "failed",
    "cancelled",
    "rejected",
    "skipped_budget",
    "skipped_payment",
)
OLD_RESULT_STATUSES = (
    "completed",
    "failed",
    "cancelled",
    "rejected",
    "download_failed",
    "timeout",
    "unknown",
    "conflict",
    "not_submitted",
    "skipped_budget",
    "skipped_payment",
    "invalid",
)


def _documented_map() -> dict[str, str]:
    """The ledger-state -> result-status table of the module docstring."""
    doc = states.__doc__ or ""
    table: dict[str, str] = {}
    for line in doc.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in OLD_LEDGER_VALUES and line.startswith("    "):
            table[words[0]] = words[1]
    return table


@pytest.mark.parametrize("state", list(State))
def test_every_state_has_a_result_status(state: State) -> None:
    """Every ledger state maps to a result status, exactly as the module docstring's table says."""
    documented = _documented_map()
    assert set(documented) == {s.value for s in State}
    status = result_status(state)
    assert isinstance(status, Status)
    assert status == documented[state.value]


def test_stored_strings_map_like_the_enum_and_strangers_read_unknown() -> None:
    """Plain strings read from SQLite map like their members; an unknown value, no row and an
    invalid row read unknown, not_submitted and invalid."""
    for state in State:
        assert result_status(str(state.value)) is result_status(state)
    assert result_status("exploded") is Status.UNKNOWN
    assert result_status(None) is Status.NOT_SUBMITTED
    assert result_status(State.DOWNLOADED, valid=False) is Status.INVALID


def test_ledger_completed_is_not_result_completed() -> None:
    """A ledger `completed` row (paid, no verified video) reports `download_failed`; only a
    `downloaded` one reports `completed`."""
    assert result_status(State.COMPLETED) is Status.DOWNLOAD_FAILED
    assert [s for s in State if result_status(s) is Status.COMPLETED] == [State.DOWNLOADED]


def test_send_groupings_partition_the_states() -> None:
    """WITH_TASK, DOUBTFUL and NEVER_SENT are disjoint and cover every ledger state."""
    groups = (WITH_TASK, DOUBTFUL, NEVER_SENT)
    assert sum(len(g) for g in groups) == len(State)
    assert set(State) == WITH_TASK | DOUBTFUL | NEVER_SENT


def test_step_groupings_sit_inside_the_states_with_a_task() -> None:
    """Polled, downloadable and unpaid-ended rows all have a task; no money is at risk for a
    row never sent, and every settled or done row has stopped moving in this run."""
    assert TO_POLL <= WITH_TASK
    assert DOWNLOADABLE <= WITH_TASK
    assert UNPAID_ENDS <= WITH_TASK
    assert not TO_POLL & DOWNLOADABLE
    assert AT_RISK == (WITH_TASK | DOUBTFUL) - UNPAID_ENDS
    assert not AT_RISK & NEVER_SENT
    assert not SETTLED & (TO_POLL | DOUBTFUL)
    assert not DONE & {State.PENDING, State.INTENT, State.SUBMITTED, State.COMPLETED}


def test_status_groupings() -> None:
    """A final status is never one whose money is still open; unsent rows are not done; the
    statuses the map cannot produce are exactly invalid and conflict."""
    assert not FINAL_STATUSES & NOT_DONE
    assert UNSENT - {Status.REJECTED} <= NOT_DONE
    assert {Status.COMPLETED} | NOT_DONE >= NOT_FAILURES
    mapped = {result_status(s) for s in State}
    assert set(Status) - mapped == {Status.INVALID, Status.CONFLICT}


def test_values_are_the_stored_vocabularies() -> None:
    """Both enums keep the exact values earlier versions stored, and the results display order."""
    assert [s.value for s in State] == list(OLD_LEDGER_VALUES)
    assert [s.value for s in STATUS_ORDER] == list(OLD_RESULT_STATUSES)
    for value in OLD_LEDGER_VALUES:
        assert parse_state(value) == value
    assert parse_state("exploded") is None


def test_an_old_ledger_file_still_parses(tmp_path: Path) -> None:
    """Rows written straight into SQLite with every old state value read back as their members
    and sort into the same groupings."""
    with Ledger(tmp_path) as ledger:
        for idx, _ in enumerate(OLD_LEDGER_VALUES):
            ledger.ensure(f"r{idx}", idx)
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    with db:
        for idx, value in enumerate(OLD_LEDGER_VALUES):
            db.execute("UPDATE rows SET state = ? WHERE row_id = ?", (value, f"r{idx}"))
    db.close()
    with Ledger(tmp_path, readonly=True) as ledger:
        records = ledger.all()
    for idx, value in enumerate(OLD_LEDGER_VALUES):
        stored = records[f"r{idx}"].state
        assert parse_state(stored) is State(value)
        assert (stored in WITH_TASK) == (State(value) in WITH_TASK)
        assert result_status(stored) is result_status(State(value))
