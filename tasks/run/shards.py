"""Reading the output folders of an earlier videobatch's sharded runs (read-only).

Earlier versions split a manifest into shards: `OUT/shards.json` (the plan) and
`OUT/shards/shard-k/`, each with its own manifest, ledger and videos. Today `generate-sharded`
runs K members on one shared ledger and never writes that layout; such a folder is refused by
every run (`tasks.store.layout`), but `videobatch status` and `videobatch results` still read
it: `saved_plan` and `merge_shards` are what they need, and write nothing but the results.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from apimart import spec
from tasks.run.options import RunOptions
from tasks.store.ledger import LEDGER_FILE, LOCK_FILE, Ledger, RowRecord
from tasks.store.manifest import Manifest, ManifestRow, read_manifest
from tasks.store.results import build_results, write_results

SHARDS_DIR = "shards"
PLAN_FILE = "shards.json"
SHARD_MANIFEST = "manifest.parquet"
# 2: the plan records each shard's row ids ("shards") and estimated cost ("estimates").
PLAN_VERSION = 2

log = logging.getLogger("videobatch.shards")


@dataclass(frozen=True)
class ShardPlan:
    out: Path
    source: Path
    manifest_sha256: str
    shards: tuple[RunOptions, ...]
    # Each shard's row ids as recorded in shards.json at first planning.
    planned: tuple[tuple[str, ...], ...] = ()
    # Planned rows the manifest no longer makes valid, one line each (they keep their shard).
    stale: tuple[str, ...] = ()

    @property
    def row_ids(self) -> tuple[tuple[str, ...], ...]:
        """The ids of each shard's rows, as the plan records them."""
        if self.planned:
            return self.planned
        return tuple(tuple(_shard_ids(Path(s.manifest))) for s in self.shards)


def shard_folder(out: Path, k: int) -> Path:
    return out / SHARDS_DIR / f"shard-{k}"


def budget_shares(cap: float | None, estimates: list[float]) -> list[float | None]:
    """Each shard's cap, in proportion to its estimated cost; the caps add up to `cap`."""
    if cap is None:
        return [None] * len(estimates)
    total = sum(estimates)
    if total <= 0:
        return [cap / len(estimates)] * len(estimates) if estimates else []
    return [cap * e / total for e in estimates]


def _shard_ids(path: Path) -> list[str]:
    return [str(v) for v in pq.read_table(path, columns=["id"]).column("id").to_pylist()]


def _read_plan(out: Path) -> dict[str, Any] | None:
    path = out / PLAN_FILE
    if not path.exists():
        return None
    saved: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return saved


def _planned_ids(saved: dict[str, Any], out: Path) -> list[list[str]] | None:
    """Each shard's row ids as recorded at first planning.

    Plans of version 1 did not record them: the shard manifests are the record then, and
    None means some of them were never written (nothing to recover the split from).
    """
    if "shards" in saved:
        return [[str(i) for i in ids] for ids in saved["shards"]]
    paths = [shard_folder(out, k) / SHARD_MANIFEST for k in range(int(saved["count"]))]
    if all(p.exists() for p in paths):
        return [_shard_ids(p) for p in paths]
    return None


def _plan(
    out: Path,
    source: Path,
    saved: dict[str, Any],
    options: RunOptions,
    *,
    stale: tuple[str, ...] = (),
) -> ShardPlan:
    """The ShardPlan a saved plan describes, computed without touching the disk."""
    planned = tuple(tuple(str(i) for i in ids) for ids in saved["shards"])
    estimates = saved.get("estimates")
    if options.prices is not None or estimates is None:
        estimates = [_estimate_from_shard(out, k, options.prices) for k in range(len(planned))]
    caps = budget_shares(options.max_cost, [float(e) for e in estimates])
    shard_options = []
    for k in range(len(planned)):
        folder = shard_folder(out, k)
        shard_options.append(
            options.model_copy(
                update={
                    "manifest": str(folder / SHARD_MANIFEST),
                    "out": str(folder),
                    "max_cost": caps[k],
                    "report": False,
                }
            )
        )
    return ShardPlan(
        out=out,
        source=source,
        manifest_sha256=str(saved["manifest_sha256"]),
        shards=tuple(shard_options),
        planned=planned,
        stale=stale,
    )


def _estimate_from_shard(out: Path, k: int, prices: dict[str, float] | None) -> float:
    path = shard_folder(out, k) / SHARD_MANIFEST
    if not path.exists():
        return 0.0
    columns = pq.read_table(path, columns=["resolution", "duration"]).to_pylist()
    return sum(spec.estimate_cost(c["resolution"], c["duration"], prices) for c in columns)


def saved_plan(out: Path, options: RunOptions | None = None) -> ShardPlan | None:
    """The plan of a folder a sharded run wrote, or None when the folder is not sharded.

    Read-only (status, results and report call it): it reads shards.json and the shard
    manifests that exist, and writes nothing, whatever state the folder is in.
    """
    out = Path(out).resolve()
    saved = _read_plan(out)
    if saved is None:
        return None
    source = Path(saved["source"])
    base = options or RunOptions(manifest=str(source), out=str(out))
    if "shards" not in saved:
        saved = {**saved, "shards": _planned_ids(saved, out) or []}
    return _plan(out, source, saved, base.model_copy(update={"manifest": str(source)}))


def merged_records(plan: ShardPlan) -> dict[str, RowRecord]:
    """Every shard's ledger rows, by row id (row ids are unique across the manifest).

    Video paths are made relative to the run's folder (`shards/shard-k/videos/...`).
    """
    merged: dict[str, RowRecord] = {}
    for shard in plan.shards:
        folder = Path(shard.out)
        if not (folder / LEDGER_FILE).exists():
            continue
        prefix = folder.relative_to(plan.out)
        with Ledger(folder, readonly=True) as ledger:
            for row_id, record in ledger.all().items():
                if record.video_path:
                    record.video_path = f"{prefix.as_posix()}/{record.video_path}"
                merged[row_id] = record
    return merged


def merge_shards(plan: ShardPlan, *, prices: dict[str, float] | None = None) -> pa.Table:
    """One results table for the whole manifest, in manifest order, written to OUT."""
    manifest = _as_planned(read_manifest(plan.source), plan)
    table = build_results(manifest, merged_records(plan), prices=prices)
    write_results(table, plan.out)
    return table


def _as_planned(manifest: Manifest, plan: ShardPlan) -> Manifest:
    """The manifest with each planned row as its shard holds it.

    A row that became invalid after planning (its image moved) is still its shard's row, and
    may have been paid for: reporting it `invalid` would hide that money.
    """
    shard_of = {row_id: k for k, ids in enumerate(plan.row_ids) for row_id in ids}
    drifted = {r.id for r in manifest.rows if not r.valid and r.id in shard_of}
    if not drifted:
        return manifest
    copies: dict[str, ManifestRow] = {}
    for k in sorted({shard_of[i] for i in drifted}):
        path = shard_folder(plan.out, k) / SHARD_MANIFEST
        if path.exists():
            copies.update((r.id, r) for r in read_manifest(path).rows if r.id in drifted)
    seen: set[str] = set()
    rows = []
    for row in manifest.rows:
        copy = copies.get(row.id)
        if copy is not None and copy.valid and not row.valid and row.id not in seen:
            log.warning(
                "%s: reported as planned into shard-%d, though now %s",
                row.id,
                shard_of[row.id],
                row.message,
            )
            row = dataclasses.replace(row, request=copy.request, problems={})
        seen.add(row.id)
        rows.append(row)
    return dataclasses.replace(manifest, rows=tuple(rows))


def folder_holder(folder: Path) -> str | None:
    """Who holds a run folder's lock right now ("pid N on HOST"), or None when it is free.

    The lock is the ledger's own `flock`, which dies with its process: a folder whose run was
    killed reads as free at once. Probing takes a shared lock for an instant, never blocking.
    """
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            return holder or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
