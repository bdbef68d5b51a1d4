"""The inbox folder: which files wait, how they are filed, where each one runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.run import inbox
from tasks.run.inbox import (
    DONE_DIR,
    REJECTED_DIR,
    SETTLE_SECONDS,
    file_done,
    file_rejected,
    is_finished,
    output_folder,
    unsettled,
    waiting_manifests,
)
from tasks.store.ledger import Ledger

MANIFEST = "id,prompt\na,a lighthouse in fog\n"


def drop(folder: Path, name: str, *, age: float = 60.0, text: str = MANIFEST) -> Path:
    """A file that arrived `age` seconds ago."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def test_waiting_manifests_oldest_first_and_only_manifests(tmp_path: Path) -> None:
    """The inbox lists only manifest files, oldest first, not hidden, notes or filed ones."""
    box = tmp_path / "inbox"
    drop(box, "b.csv", age=30)
    drop(box, "a.parquet", age=90)
    drop(box, "c.jsonl", age=60)
    drop(box, "notes.txt")
    drop(box, ".hidden.csv")
    drop(box, "x.csv.error.txt")
    drop(box / DONE_DIR, "old.csv")
    drop(box / REJECTED_DIR, "bad.csv")
    assert [p.name for p in waiting_manifests(box)] == ["a.parquet", "c.jsonl", "b.csv"]


def test_a_file_still_being_written_waits_for_the_settle_time(tmp_path: Path) -> None:
    """A file changed less than the settle time ago is left until it has settled."""
    box = tmp_path / "inbox"
    fresh = drop(box, "fresh.csv", age=0)
    mtime = fresh.stat().st_mtime
    assert waiting_manifests(box, now=mtime + SETTLE_SECONDS / 2) == []
    assert waiting_manifests(box, now=mtime + SETTLE_SECONDS) == [fresh]


def test_missing_inbox_is_created_empty(tmp_path: Path) -> None:
    """A missing inbox folder is created and lists nothing."""
    assert waiting_manifests(tmp_path / "new") == []
    assert (tmp_path / "new").is_dir()


def test_done_and_rejected_filing(tmp_path: Path) -> None:
    """Done manifests move to done/; rejected ones to rejected/ with a note of why."""
    box = tmp_path / "inbox"
    good = drop(box, "good.csv")
    bad = drop(box, "bad.csv", text="not,a,manifest\n")
    done = file_done(good)
    assert done == box / DONE_DIR / "good.csv" and done.read_text() == MANIFEST
    rejected = file_rejected(bad, "no 'prompt' column")
    assert rejected == box / REJECTED_DIR / "bad.csv"
    note = box / REJECTED_DIR / "bad.csv.error.txt"
    assert note.read_text() == "no 'prompt' column\n"
    assert not good.exists() and not bad.exists()


def test_name_collisions_never_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filed manifest never overwrites an earlier one of the same name, nor its note."""
    box = tmp_path / "inbox"
    monkeypatch.setattr(inbox.time, "strftime", lambda fmt: "20260101T000000")
    filed = [file_done(drop(box, "same.csv", text=f"id,prompt\nv{n},p\n")) for n in range(4)]
    assert [p.name for p in filed] == [
        "same.csv",
        "same-20260101T000000.csv",
        "same-20260101T000000-2.csv",
        "same-20260101T000000-3.csv",
    ]
    assert [p.read_text().splitlines()[1] for p in filed] == ["v0,p", "v1,p", "v2,p", "v3,p"]
    twice = [file_rejected(drop(box, "x.csv"), f"why {n}") for n in range(2)]
    assert (box / REJECTED_DIR / f"{twice[1].name}.error.txt").read_text() == "why 1\n"
    assert (box / REJECTED_DIR / "x.csv.error.txt").read_text() == "why 0\n"


def test_output_folder_is_the_stem_unless_another_manifest_owns_it(tmp_path: Path) -> None:
    """A manifest's output folder is its stem unless another manifest's ledger owns it."""
    box, out = tmp_path / "inbox", tmp_path / "out"
    csv_manifest = drop(box, "a.csv")
    assert output_folder(out, csv_manifest) == out / "a"
    with Ledger(out / "a") as ledger:  # a.csv ran there
        ledger.set_meta("manifest", str(csv_manifest.resolve()))
    assert output_folder(out, csv_manifest) == out / "a"  # dropped again: resumes
    parquet = drop(box, "a.parquet")
    assert output_folder(out, parquet) == out / "a-parquet"  # never shares a ledger
    with Ledger(out / "a-parquet") as ledger:
        ledger.set_meta("manifest", str(parquet.resolve()))
    assert output_folder(out, parquet) == out / "a-parquet"
    other = drop(tmp_path / "elsewhere", "a.parquet")
    assert output_folder(out, other) == out / "a-parquet"  # same name: same manifest


def test_finished_means_every_row_final() -> None:
    """A manifest is finished only when every row is final; the others are counted."""

    def table(*statuses: str) -> pa.Table:
        return pa.table({"status": list(statuses)})

    assert is_finished(table("completed", "failed", "invalid", "rejected", "cancelled"))
    for waiting in ("not_submitted", "timeout", "unknown", "download_failed", "skipped_budget"):
        assert not is_finished(table("completed", waiting))
    assert unsettled(table("completed", "unknown", "timeout", "timeout")) == {
        "timeout": 2,
        "unknown": 1,
    }
