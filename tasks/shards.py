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

import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from apimart import spec
from tasks.download import file_sha256
from tasks.ledger import LEDGER_FILE, LOCK_FILE, Ledger, RowRecord
from tasks.manifest import Manifest, ManifestRow, read_manifest
from tasks.options import RunOptions
from tasks.results import build_results, write_results

SHARDS_DIR = "shards"
PLAN_FILE = "shards.json"
SHARD_MANIFEST = "manifest.parquet"
PLAN_VERSION = 1


class ShardPlanError(ValueError):
    """The output folder holds shards that do not belong to this manifest."""


@dataclass(frozen=True)
class ShardPlan:
    out: Path
    source: Path
    manifest_sha256: str
    shards: tuple[RunOptions, ...]

    @property
    def row_ids(self) -> tuple[tuple[str, ...], ...]:
        """The ids of each shard's rows, read back from the shard manifests."""
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


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


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
    _write_atomically(path, lambda tmp: pq.write_table(table, tmp))
    return path


def plan_shards(options: RunOptions, count: int) -> ShardPlan:
    """Write (once) the shard manifests of `options.manifest` and the options of each shard.

    A rerun against an unchanged manifest reuses the same shards, so every shard resumes from
    its own ledger; a changed manifest is refused rather than re-split under running shards.
    """
    if count < 1:
        raise ValueError("shards must be at least 1")
    out = Path(options.out).resolve()
    source = Path(options.manifest).expanduser().resolve()
    digest = file_sha256(source)
    plan_path = out / PLAN_FILE
    saved = json.loads(plan_path.read_text(encoding="utf-8")) if plan_path.exists() else None
    if saved is not None:
        if saved["manifest_sha256"] != digest:
            raise ShardPlanError(
                f"{out} was sharded from another version of {source.name}; "
                "use a new output folder for a changed manifest"
            )
        count = int(saved["count"])
    manifest = read_manifest(source)
    valid = [r for r in manifest.valid_rows if r.request is not None]
    count = max(1, min(count, len(valid) or 1))
    groups = [valid[a:b] for a, b in split_evenly(count, len(valid))]
    if saved is None:
        # The plan goes first: shards are never written for a split that is not on record.
        out.mkdir(parents=True, exist_ok=True)
        plan = {
            "version": PLAN_VERSION,
            "manifest_sha256": digest,
            "count": count,
            "source": str(source),
            "rows": [len(g) for g in groups],
        }
        _write_atomically(plan_path, lambda tmp: tmp.write_text(json.dumps(plan, indent=1)))
    estimates = [
        sum(
            spec.estimate_cost(r.request.resolution, r.request.duration, options.prices)
            for r in group
            if r.request is not None
        )
        for group in groups
    ]
    caps = budget_shares(options.max_cost, estimates)
    shard_options = []
    for k, group in enumerate(groups):
        folder = shard_folder(out, k)
        shard_manifest = _write_shard_manifest(folder, group, manifest)
        shard_options.append(
            options.model_copy(
                update={
                    "manifest": str(shard_manifest),
                    "out": str(folder),
                    "max_cost": caps[k],
                    "report": False,
                }
            )
        )
    return ShardPlan(out=out, source=source, manifest_sha256=digest, shards=tuple(shard_options))


def saved_plan(out: Path, options: RunOptions | None = None) -> ShardPlan | None:
    """The plan of a folder a sharded run wrote, or None when the folder is not sharded."""
    plan_path = Path(out) / PLAN_FILE
    if not plan_path.exists():
        return None
    saved = json.loads(plan_path.read_text(encoding="utf-8"))
    base = options or RunOptions(manifest=saved["source"], out=str(out))
    return plan_shards(base.model_copy(update={"manifest": saved["source"]}), int(saved["count"]))


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
    manifest = read_manifest(plan.source)
    table = build_results(manifest, merged_records(plan), prices=prices)
    write_results(table, plan.out)
    return table


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
