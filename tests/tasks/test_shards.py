"""The folder probe of `tasks.run.shards` (earlier per-shard folders are read-only now)."""

from __future__ import annotations

from pathlib import Path

from tasks.run.shards import folder_holder
from tasks.store.ledger import FolderLock


def test_folder_holder_sees_a_live_lock_and_nothing_else(tmp_path: Path) -> None:
    """The folder probe names a live lock's holder, sees none after release, leaves none."""
    folder = tmp_path / "shard"
    assert folder_holder(folder) is None  # never run
    lock = FolderLock(folder)
    lock.acquire()
    try:
        holder = folder_holder(folder)
        assert holder is not None and holder.startswith("pid ")
    finally:
        lock.release()
    assert folder_holder(folder) is None  # released, as by a process that died
    with FolderLock(folder):  # the probe never leaves a lock behind
        pass
