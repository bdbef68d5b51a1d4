"""The ledger: durable, locked, and strict about the order of the two money writes.

Tests taking `site` run on both backends (SQLite in a folder, a batch of PostgreSQL)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

import pytest
from conftest import LedgerSite

from apimart.models import VideoRequest
from tasks.store.ledger import (
    SCHEMA_VERSION,
    FolderLock,
    Ledger,
    LedgerLocked,
    State,
    connect_ledger,
    open_ledger,
    request_hash,
)


def test_intent_then_task_id_survive_reopen(site: LedgerSite) -> None:
    """The intent and then the task id recorded for a row are there after the ledger is reopened."""
    with site.ledger() as ledger:
        ledger.ensure("a", 0)
        key = ledger.idempotency_key("a", "hash", 1)
        ledger.record_intent(
            "a", attempt=1, req_hash="hash", key=key, estimated_cost=0.2, run_id="r1"
        )
        ledger.record_submitted("a", task_id="task_1", status="submitted")
    with site.ledger() as ledger:
        record = ledger.get("a")
        assert record is not None
        assert (record.state, record.task_id, record.idempotency_key) == (
            State.SUBMITTED,
            "task_1",
            key,
        )
        kinds = [e["kind"] for e in ledger.events("a")]
        assert kinds == ["intent", "submitted"]


def test_ledger_is_wal_with_full_sync(tmp_path: Path) -> None:
    """The ledger database is opened in WAL journal mode."""
    Ledger(tmp_path).close()
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_idempotency_key_is_stable_per_attempt_and_folder(site: LedgerSite) -> None:
    """A row's idempotency key is the same on every call, new per attempt, request and batch."""
    with site.ledger("one") as one, site.ledger("two") as two:
        k1 = one.idempotency_key("row", "h", 1)
        assert k1 == one.idempotency_key("row", "h", 1)
        assert k1 != one.idempotency_key("row", "h", 2)
        assert k1 != one.idempotency_key("row", "h2", 1)
        assert k1 != two.idempotency_key("row", "h", 1)  # another batch, another key
    with site.ledger("one") as again:
        assert again.idempotency_key("row", "h", 1) == k1  # reopened: the same key
        assert 1 <= len(k1) <= 191 and k1.isascii() and k1.isprintable() and " " not in k1


def test_request_hash_follows_the_request() -> None:
    """The request hash ignores case-only spellings and changes when the request does."""
    a = VideoRequest.build(prompt="x", resolution="1080P")
    b = VideoRequest.build(prompt="x", resolution="1080p")
    c = VideoRequest.build(prompt="x", resolution="720p")
    assert request_hash(a) == request_hash(b) != request_hash(c)


def _die_mid_post(target: str, batch: str | None) -> None:
    ledger = connect_ledger(target, batch=batch)
    ledger.ensure("row", 0)
    ledger.record_intent(
        "row", attempt=1, req_hash="h", key="vb-row-a1-x", estimated_cost=0.1, run_id="r"
    )
    os.kill(os.getpid(), signal.SIGKILL)  # the POST never got its answer recorded


def test_a_crash_between_intent_and_task_id_becomes_unknown(site: LedgerSite) -> None:
    """A process killed between intent and task id leaves the row unknown, its cost at risk."""
    target, batch = site.target()
    proc = multiprocessing.get_context("fork").Process(
        target=_die_mid_post, args=(str(target), batch)
    )
    proc.start()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    with site.run() as ledger:
        record = ledger.get("row")
        assert record is not None
        assert record.state == State.UNKNOWN
        assert record.idempotency_key == "vb-row-a1-x"
        assert ledger.committed_cost() == pytest.approx(0.1)  # money at risk counts


def _hold_lock(folder: str, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    FolderLock(Path(folder)).acquire()
    ready.set()
    signal.pause()


def test_folder_lock_refuses_a_second_run_and_frees_on_death(tmp_path: Path) -> None:
    """A second run on a locked folder is refused naming the holder; the lock dies with it."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready))
    proc.start()
    assert ready.wait(10)
    with pytest.raises(LedgerLocked, match=f"pid {proc.pid}"):
        FolderLock(tmp_path).acquire()
    proc.kill()
    proc.join()
    with FolderLock(tmp_path):  # the dead holder's lock is gone with it
        pass


def test_committed_cost_counts_real_costs_and_estimates_at_risk(site: LedgerSite) -> None:
    """Committed cost is real costs plus estimates of rows in flight; spent is real costs."""
    with site.ledger() as ledger:
        for i, (state, est, cost) in enumerate(
            [
                (State.DOWNLOADED, 0.2, 0.25),
                (State.SUBMITTED, 0.2, None),
                (State.UNKNOWN, 0.4, None),
                (State.FAILED, 0.2, 0.0),
                (State.SKIPPED_BUDGET, 0.2, None),
                (State.REJECTED, 0.2, None),
            ]
        ):
            ledger.ensure(f"r{i}", i)
            ledger.update(f"r{i}", state=state, estimated_cost=est, cost=cost)
        assert ledger.committed_cost() == pytest.approx(0.25 + 0.2 + 0.4)
        assert ledger.spent() == pytest.approx(0.25)
        assert ledger.counts()[State.DOWNLOADED] == 1


def test_update_refuses_unknown_columns_and_rows(site: LedgerSite) -> None:
    """Updating a column or a row the ledger does not have raises instead of passing."""
    with site.ledger() as ledger:
        ledger.ensure("a", 0)
        with pytest.raises(KeyError):
            ledger.update("a", nonsense=1)
        with pytest.raises(KeyError):
            ledger.update("missing", state=State.PENDING)


def test_readonly_ledger_needs_an_existing_folder(site: LedgerSite) -> None:
    """A read-only ledger of a folder (or batch) nothing ran in is refused, saying so."""
    with pytest.raises(FileNotFoundError, match="nothing was run"):
        site.ledger("none", readonly=True)


def test_a_video_whose_cost_was_never_reported_still_counts_at_its_estimate(
    site: LedgerSite,
) -> None:
    """A downloaded video without a reported cost counts at its estimate; a failed one not."""
    with site.ledger() as ledger:
        ledger.ensure("done", 0)
        ledger.update("done", state=State.DOWNLOADED, estimated_cost=0.3, cost=None)
        ledger.ensure("lost", 1)
        ledger.update("lost", state=State.FAILED, estimated_cost=0.3, cost=None)
        assert ledger.committed_cost() == pytest.approx(0.3)


def test_an_earlier_unsettled_post_counts_on_top_of_the_row_own_money(site: LedgerSite) -> None:
    """committed_cost adds a row's earlier unsettled POSTs to its real cost or estimate."""
    with site.ledger() as ledger:
        for i, (state, est, cost, earlier) in enumerate(
            [
                (State.UNKNOWN, 0.1, None, 0.1),  # resent, and the resend is doubtful too
                (State.DOWNLOADED, 0.1, 0.12, 0.1),  # resent, done: the first may be billed
                (State.FAILED, 0.1, 0.0, 0.1),  # a failed resend says nothing of the first
                (State.REJECTED, 0.1, None, None),  # settled by a plain 400
            ]
        ):
            ledger.ensure(f"r{i}", i)
            ledger.update(
                f"r{i}", state=state, estimated_cost=est, cost=cost, earlier_posts_cost=earlier
            )
        assert ledger.committed_cost() == pytest.approx(0.2 + 0.22 + 0.1)
        assert ledger.spent() == pytest.approx(0.12)  # only what the API said it charged


def test_a_resend_intent_moves_the_first_estimate_aside_in_one_write(site: LedgerSite) -> None:
    """record_intent of a resend keeps the first POST's estimate counted beside the new one."""
    with site.ledger() as ledger:
        ledger.ensure("a", 0)
        ledger.record_intent("a", attempt=1, req_hash="h", key="k", estimated_cost=0.1, run_id="1")
        ledger.update("a", state=State.UNKNOWN)
        ledger.record_intent(
            "a",
            attempt=1,
            req_hash="h",
            key="k",
            estimated_cost=0.1,
            run_id="2",
            earlier_posts_cost=0.1,
        )
        assert ledger.committed_cost() == pytest.approx(0.2)
        # A later attempt (--retry-failed) does not forget the unsettled first POST.
        ledger.update("a", state=State.FAILED, cost=0.0)
        ledger.record_intent("a", attempt=2, req_hash="h", key="k2", estimated_cost=0.1, run_id="3")
        assert ledger.get("a").earlier_posts_cost == pytest.approx(0.1)  # type: ignore[union-attr]
        assert ledger.committed_cost() == pytest.approx(0.2)


_SCHEMA_1_COLUMNS = (
    "row_id TEXT PRIMARY KEY, idx INTEGER, state TEXT, attempt INTEGER, request_hash TEXT, "
    "idempotency_key TEXT, task_id TEXT, api_status TEXT, estimated_cost REAL, cost REAL, "
    "error_code TEXT, error_message TEXT, intent_at REAL, submitted_at REAL, terminal_at REAL, "
    "api_created REAL, api_completed REAL, generation_s REAL, polls INTEGER, "
    "url_expires_at REAL, video_path TEXT, video_bytes INTEGER, video_sha256 TEXT, "
    "video_width INTEGER, video_height INTEGER, video_duration_s REAL, download_s REAL, "
    "run_id TEXT, updated_at REAL"
)


def _schema_1_ledger(folder: Path) -> None:
    """A ledger.sqlite exactly as the first schema wrote it, with one doubtful row."""
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / "ledger.sqlite")
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute(f"CREATE TABLE rows ({_SCHEMA_1_COLUMNS})")
        db.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "at REAL, row_id TEXT, kind TEXT, detail TEXT)"
        )
        db.execute("INSERT INTO meta VALUES ('schema', '1'), ('salt', 'abcd1234')")
        db.execute(
            "INSERT INTO rows (row_id, idx, state, attempt, idempotency_key, estimated_cost, "
            "polls) VALUES ('old', 0, 'unknown', 1, 'vb-old-a1-x', 0.1, 0)"
        )
    db.close()


def test_a_ledger_from_schema_1_still_opens_and_gains_the_new_column(tmp_path: Path) -> None:
    """An existing schema-1 ledger opens read-only as is, and for writing gains the column."""
    _schema_1_ledger(tmp_path)
    with Ledger(tmp_path, readonly=True) as ledger:  # `videobatch status` on an old folder
        assert ledger.committed_cost() == pytest.approx(0.1)
        assert ledger.get("old").earlier_posts_cost is None  # type: ignore[union-attr]
    with open_ledger(tmp_path) as ledger:
        assert ledger.meta("schema") == str(SCHEMA_VERSION)
        assert ledger.meta("salt") == "abcd1234"  # the old keys stay the same
        record = ledger.get("old")
        assert record is not None and record.state == State.UNKNOWN
        ledger.update("old", earlier_posts_cost=0.1)
        assert ledger.committed_cost() == pytest.approx(0.2)
    columns = {
        r[1] for r in sqlite3.connect(tmp_path / "ledger.sqlite").execute("PRAGMA table_info(rows)")
    }
    assert "earlier_posts_cost" in columns
