"""Splitting one large manifest into shards that any worker can run, and merging them back.

Shard k of a run lives in `OUT/shards/shard-k/` with its own manifest, ledger and videos, so a
shard is an ordinary `generate-videos` run: resumable on its own, locked on its own. The shard
manifests are written once, as Parquet with images already inlined as data URIs, so a worker on
another machine needs nothing but the shared output folder. Only valid rows go to shards;
invalid rows are reported from the original manifest when the results are merged.

The split is recorded in `OUT/shards.json` before any shard manifest is written, so a rerun
(even one asking for another shard count) reuses exactly the same shards and every shard
resumes from its own ledger; a changed manifest is refused rather than re-split under shards
that already spent money.

The budget is divided in proportion to each shard's estimated cost, so the shards' caps add up
to the run's cap: however the shards race, the total can never pass it. (The price of that
guarantee: budget one shard leaves unused is not lent to another.)
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
from tasks.errors import ShardPlanError
from tasks.run.options import RunOptions
from tasks.store.atomic import write_atomically, write_text_atomically
from tasks.store.hashing import file_sha256
from tasks.store.layout import require_layout
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


def split_evenly(count: int, total: int) -> list[tuple[int, int]]:
    """`count` contiguous [start, stop) ranges covering `total` items, sizes differing by <= 1."""
    return [(k * total // count, (k + 1) * total // count) for k in range(count)]


def budget_shares(cap: float | None, estimates: list[float]) -> list[float | None]:
    """Each shard's cap, in proportion to its estimated cost; the caps add up to `cap`."""
    if cap is None:
        return [None] * len(estimates)
    total = sum(estimates)
    if total <= 0:
        return [cap / len(estimates)] * len(estimates) if estimates else []
    return [cap * e / total for e in estimates]


def _shard_table(rows: list[ManifestRow], extra_columns: tuple[str, ...]) -> pa.Table:
    records = []
    for row in rows:
        request = row.request
        assert request is not None
        record = {
            "id": row.id,
            "prompt": request.prompt,
            "duration": request.duration,
            "resolution": request.resolution,
            "aspect_ratio": request.aspect_ratio,
            "image_urls": list(request.image_urls),
            "video_urls": list(request.video_urls),
            "model": request.model,
        }
        for column in extra_columns:
            value = row.extra.get(column)
            record[column] = None if value is None else str(value)
        records.append(record)
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("duration", pa.int32()),
            ("resolution", pa.string()),
            ("aspect_ratio", pa.string()),
            ("image_urls", pa.list_(pa.string())),
            ("video_urls", pa.list_(pa.string())),
            ("model", pa.string()),
            *[(c, pa.string()) for c in extra_columns],
        ]
    )
    return pa.Table.from_pylist(records, schema=schema)


def _shard_ids(path: Path) -> list[str]:
    return [str(v) for v in pq.read_table(path, columns=["id"]).column("id").to_pylist()]


def _write_shard_manifest(folder: Path, rows: list[ManifestRow], manifest: Manifest) -> Path:
    """Write shard k's manifest once; an existing one must hold exactly these rows."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SHARD_MANIFEST
    ids = [r.id for r in rows]
    if path.exists():
        if _shard_ids(path) == ids:
            return path
        if (folder / LEDGER_FILE).exists():
            raise ShardPlanError(
                f"{path} holds other rows than the plan says, and the shard has a ledger: "
                "use a new output folder"
            )
    table = _shard_table(rows, manifest.extra_columns)
    write_atomically(path, lambda handle: pq.write_table(table, handle))
    return path


def _read_plan(out: Path) -> dict[str, Any] | None:
    path = out / PLAN_FILE
    if not path.exists():
        return None
    saved: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return saved


def _write_plan(out: Path, plan: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / PLAN_FILE, json.dumps(plan, indent=1))


def _shard_ledgers(out: Path) -> list[Path]:
    """Shard folders holding a ledger: from the first one on, money may have been spent."""
    return sorted(p.parent for p in (out / SHARDS_DIR).glob(f"shard-*/{LEDGER_FILE}"))


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


def _estimate(rows: list[ManifestRow], prices: dict[str, float] | None) -> float:
    return sum(
        spec.estimate_cost(r.request.resolution, r.request.duration, prices)
        for r in rows
        if r.request is not None
    )


def _first_by_id(manifest: Manifest) -> dict[str, ManifestRow]:
    rows: dict[str, ManifestRow] = {}
    for row in manifest.rows:
        rows.setdefault(row.id, row)  # a duplicate id is the later, invalid copy
    return rows


def _stale_rows(planned: list[list[str]], manifest: Manifest) -> list[str]:
    """Planned rows the manifest, read today, no longer makes valid (say, a local image moved).

    They keep their shard: its manifest holds the copy validated (images inlined) at planning.
    """
    rows = _first_by_id(manifest)
    stale = []
    for k, ids in enumerate(planned):
        for row_id in ids:
            row = rows.get(row_id)
            if row is None or not row.valid:
                why = row.message if row is not None else f"id {row_id!r} is not in the manifest"
                stale.append(
                    f"shard-{k} keeps {row_id} as planned, though the manifest row is now "
                    f"invalid ({why})"
                )
    return stale


def plan_shards(options: RunOptions, count: int) -> ShardPlan:
    """Write (once) the shard manifests of `options.manifest` and the options of each shard.

    The split is recorded, row ids and all, in `shards.json` at first planning, and that record
    is the truth from then on: a rerun never re-splits whatever happens to be valid today. Every
    shard is checked against the plan before any shard manifest is written, and once any shard
    has a ledger no shard manifest is ever rewritten. A changed manifest is refused; a row that
    became invalid since planning (its local image moved) keeps its shard and is reported.
    """
    if count < 1:
        raise ValueError("shards must be at least 1")
    out = Path(options.out).resolve()
    require_layout(out, "sharded")
    source = Path(options.manifest).expanduser().resolve()
    digest = file_sha256(source)
    saved = _read_plan(out)
    if saved is not None and saved["manifest_sha256"] != digest:
        raise ShardPlanError(
            f"{out} was sharded from another version of {source.name}; "
            "use a new output folder for a changed manifest"
        )
    manifest = read_manifest(source)
    spent = _shard_ledgers(out)
    planned = _planned_ids(saved, out) if saved is not None else None
    if planned is None:
        if spent:
            raise ShardPlanError(
                f"{out} has shards with ledgers ({', '.join(p.name for p in spent)}) but no "
                "record of which rows each shard holds; nothing was written or sent. Use a new "
                "output folder."
            )
        valid = [r for r in manifest.valid_rows if r.request is not None]
        if saved is not None:
            count = int(saved["count"])
        count = max(1, min(count, len(valid) or 1))
        planned = [[r.id for r in valid[a:b]] for a, b in split_evenly(count, len(valid))]
    rows = _first_by_id(manifest)
    # Check every shard against the plan first: a plan that cannot be kept writes nothing.
    to_write: list[tuple[int, list[ManifestRow]]] = []
    problems: list[str] = []
    for k, ids in enumerate(planned):
        path = shard_folder(out, k) / SHARD_MANIFEST
        if path.exists():
            if _shard_ids(path) == ids:
                continue
            if spent:
                problems.append(
                    f"{path} holds other rows than the plan says, and shards have ledgers "
                    f"({', '.join(p.name for p in spent)}): a shard's rows never change once "
                    "money may have been spent"
                )
                continue
        wanted = [rows.get(i) for i in ids]
        bad = [
            i if r is None else r.message
            for i, r in zip(ids, wanted, strict=True)
            if not r or not r.valid
        ]
        if bad:
            problems.append(
                f"shard-{k}'s manifest must be written but planned rows are no longer valid: "
                + "; ".join(bad)
            )
            continue
        to_write.append((k, [r for r in wanted if r is not None]))
    if problems:
        raise ShardPlanError(
            f"{out}: the shard plan cannot be kept ({'; '.join(problems)}). Nothing was written "
            "or sent: restore the manifest's rows and images, or use a new output folder."
        )
    by_id = {r.id: r for r in manifest.valid_rows}
    if saved is None or "shards" not in saved:
        estimates = [_estimate([by_id[i] for i in ids if i in by_id], None) for ids in planned]
        record = {
            "version": PLAN_VERSION,
            "manifest_sha256": digest,
            "count": len(planned),
            "source": str(source),
            "rows": [len(ids) for ids in planned],
            "shards": planned,
            "estimates": estimates,
        }
        # The plan goes first: shards are never written for a split that is not on record.
        _write_plan(out, record)
        saved = record
    for k, group in to_write:
        _write_shard_manifest(shard_folder(out, k), group, manifest)
    stale = _stale_rows(planned, manifest)
    for line in stale:
        log.warning("%s", line)
    return _plan(out, source, saved, options, stale=tuple(stale))


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
