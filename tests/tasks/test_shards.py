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


def test_a_folder_of_the_old_per_shard_layout_is_still_read_and_merged(tmp_path: Path) -> None:
    """A folder an earlier videobatch sharded (shards.json, a ledger per shard) is still read
    by status and merged by a results rebuild, in manifest order, writing no plan."""
    import json

    import pyarrow.parquet as pq
    from support.manifests import write_manifest

    from tasks.store.ledger import Ledger, State
    from videobatch import console

    rows = [{"id": f"r{i}", "prompt": f"old shard clip {i}", "duration": 4} for i in range(4)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    from tasks.store.hashing import file_sha256

    plan = {
        "version": 2,
        "manifest_sha256": file_sha256(manifest),
        "count": 2,
        "source": str(manifest.resolve()),
        "rows": [2, 2],
        "shards": [["r0", "r1"], ["r2", "r3"]],
        "estimates": [0.2, 0.2],
    }
    out.mkdir()
    (out / "shards.json").write_text(json.dumps(plan))
    for k, ids in enumerate(plan["shards"]):
        with Ledger(out / "shards" / f"shard-{k}") as ledger:
            for n, row_id in enumerate(ids):
                ledger.ensure(row_id, n)
            ledger.update(ids[0], state=State.DOWNLOADED, task_id=f"t-{k}", cost=0.1)
    before = (out / "shards.json").read_bytes()
    assert console.status(out) == 0
    assert console.rebuild_results(out, None) == 0
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["id"] for r in table] == ["r0", "r1", "r2", "r3"]
    assert [r["status"] for r in table] == ["completed", "not_submitted"] * 2
    assert (out / "shards.json").read_bytes() == before
