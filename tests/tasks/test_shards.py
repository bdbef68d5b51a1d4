"""Shards: the split, the budget shares, reuse on a rerun, refusal of a changed manifest, the
merge in manifest order, and the folder-lock probe that tells a live shard from a dead one."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from support.manifests import write_manifest

from apimart import spec
from tasks.run.options import RunOptions
from tasks.run.shards import (
    PLAN_FILE,
    SHARD_MANIFEST,
    ShardPlanError,
    budget_shares,
    folder_holder,
    merge_shards,
    plan_shards,
    shard_folder,
    split_evenly,
)
from tasks.store.ledger import FolderLock, Ledger, State
from tasks.store.manifest import read_manifest

RESOLUTIONS = ("720p", "1080p", "4k")


def manifest_rows(n: int, *, bad: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    return [
        {
            "id": f"r{i:03d}",
            "prompt": f"clip {i}: a lighthouse in fog",
            "duration": "7" if i in bad else str((4, 6, 8, 10)[i % 4]),
            "resolution": RESOLUTIONS[i % 3],
            "campaign": f"c{i % 2}",
        }
        for i in range(n)
    ]


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "big.csv", manifest_rows(23, bad=frozenset({5, 17})))


def options(manifest: Path, out: Path, **extra: Any) -> RunOptions:
    return RunOptions(manifest=str(manifest), out=str(out), **extra)


@pytest.mark.parametrize(("count", "total"), [(1, 0), (1, 7), (3, 10), (4, 40), (7, 9), (5, 5)])
def test_split_evenly_covers_everything_with_sizes_one_apart(count: int, total: int) -> None:
    """An even split covers every index once, in order, with sizes at most one apart."""
    ranges = split_evenly(count, total)
    assert len(ranges) == count
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_shards_hold_the_valid_rows_in_order(manifest: Path, tmp_path: Path) -> None:
    """Shards hold every valid row once, in manifest order, each in an ordinary manifest."""
    plan = plan_shards(options(manifest, tmp_path / "out"), 4)
    assert len(plan.shards) == 4
    ids = [i for shard in plan.row_ids for i in shard]
    valid = [r.id for r in read_manifest(manifest).valid_rows]
    assert ids == valid and len(valid) == 21  # r005 and r017 are invalid: never sent
    assert sorted(len(s) for s in plan.row_ids) == [5, 5, 5, 6]
    for k, shard in enumerate(plan.shards):
        assert Path(shard.out) == shard_folder(tmp_path / "out", k).resolve()
        assert Path(shard.manifest) == Path(shard.out) / SHARD_MANIFEST
        assert shard.report is False
        # Each shard manifest is an ordinary manifest, extra columns carried through.
        rows = read_manifest(shard.manifest).rows
        assert all(r.valid for r in rows)
        assert [r.extra["campaign"] for r in rows] == [f"c{int(r.id[1:]) % 2}" for r in rows]


def test_more_shards_than_rows_gives_one_row_each(tmp_path: Path) -> None:
    """Asking for more shards than rows gives one shard per row, no empty ones."""
    small = write_manifest(tmp_path / "small.csv", manifest_rows(3))
    plan = plan_shards(options(small, tmp_path / "out"), 8)
    assert plan.row_ids == (("r000",), ("r001",), ("r002",))


def test_budget_shares_follow_estimates_and_add_up_to_the_cap(
    manifest: Path, tmp_path: Path
) -> None:
    """A cost cap is shared between shards by their estimates and adds up to the cap."""
    plan = plan_shards(options(manifest, tmp_path / "out", max_cost=3.0), 3)
    caps = [s.max_cost for s in plan.shards]
    assert all(c is not None for c in caps)
    assert sum(c for c in caps if c is not None) == pytest.approx(3.0)
    rows = {r.id: r for r in read_manifest(manifest).valid_rows}
    estimates = [
        sum(
            spec.estimate_cost(r.resolution, r.duration)
            for i in ids
            if (r := rows[i].request) is not None
        )
        for ids in plan.row_ids
    ]
    for cap, estimate in zip(caps, estimates, strict=True):
        assert cap == pytest.approx(3.0 * estimate / sum(estimates))


def test_budget_shares_edge_cases() -> None:
    """No cap stays no cap; zero estimates share evenly; a zero cap gives zero to each."""
    assert budget_shares(None, [1.0, 2.0]) == [None, None]
    assert budget_shares(2.0, [0.0, 0.0]) == [1.0, 1.0]
    assert budget_shares(0.0, [1.0, 3.0]) == [0.0, 0.0]


def test_rerun_reuses_the_same_shards_whatever_count_it_asks(
    manifest: Path, tmp_path: Path
) -> None:
    """A rerun keeps the first plan's shards and files, whatever count it asks for."""
    out = tmp_path / "out"
    first = plan_shards(options(manifest, out), 3)
    stamps = [Path(s.manifest).stat().st_mtime_ns for s in first.shards]
    again = plan_shards(options(manifest, out), 5)
    assert again.row_ids == first.row_ids
    assert [s.out for s in again.shards] == [s.out for s in first.shards]
    assert [Path(s.manifest).stat().st_mtime_ns for s in again.shards] == stamps
    assert json.loads((out / PLAN_FILE).read_text())["count"] == 3


def test_changed_manifest_is_refused(manifest: Path, tmp_path: Path) -> None:
    """Planning again over a changed manifest is refused."""
    out = tmp_path / "out"
    plan_shards(options(manifest, out), 2)
    rows = manifest_rows(24)
    write_manifest(manifest, rows)
    with pytest.raises(ShardPlanError, match="another version"):
        plan_shards(options(manifest, out), 2)


def test_a_shard_manifest_that_disagrees_with_the_plan(manifest: Path, tmp_path: Path) -> None:
    """A shard manifest unlike its plan is rewritten before it ran, refused after."""
    out = tmp_path / "out"
    plan = plan_shards(options(manifest, out), 2)
    first, second = (Path(s.manifest) for s in plan.shards)
    stray = second.read_bytes()
    first.write_bytes(stray)
    # No ledger yet: nothing was spent on the stray file, so it is rewritten from the plan.
    assert plan_shards(options(manifest, out), 2).row_ids == plan.row_ids
    first.write_bytes(stray)
    Ledger(first.parent).close()
    with pytest.raises(ShardPlanError, match="other rows"):
        plan_shards(options(manifest, out), 2)


def test_merge_is_in_manifest_order_with_paths_from_the_run_folder(
    manifest: Path, tmp_path: Path
) -> None:
    """Merged results are in manifest order, unstarted shards not_submitted, paths from the top."""
    out = tmp_path / "out"
    plan = plan_shards(options(manifest, out), 3)
    # Shards finish in any order and only partly: shard 2 first, shard 1 never started.
    for k in (2, 0):
        with Ledger(plan.shards[k].out) as ledger:
            for n, row_id in enumerate(plan.row_ids[k]):
                ledger.ensure(row_id, n)
                if n % 2 == 0:
                    ledger.update(
                        row_id,
                        state=State.DOWNLOADED,
                        task_id=f"task-{row_id}",
                        cost=0.1,
                        video_path=f"videos/{row_id}.mp4",
                    )
    table = merge_shards(plan).to_pydict()
    assert table["id"] == [f"r{i:03d}" for i in range(23)]
    status = dict(zip(table["id"], table["status"], strict=True))
    assert status["r005"] == status["r017"] == "invalid"
    for k, ids in enumerate(plan.row_ids):
        for n, row_id in enumerate(ids):
            if k == 1:
                assert status[row_id] == "not_submitted"
            else:
                assert status[row_id] == ("completed" if n % 2 == 0 else "not_submitted")
    paths = dict(zip(table["id"], table["video_path"], strict=True))
    first = plan.row_ids[0][0]
    assert paths[first] == f"shards/shard-0/videos/{first}.mp4"
    assert table["campaign"][:3] == ["c0", "c1", "c0"]
    on_disk = pq.read_table(out / "results.parquet").to_pydict()
    assert on_disk["id"] == table["id"] and on_disk["status"] == table["status"]


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
