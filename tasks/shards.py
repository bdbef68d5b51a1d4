"""Splitting one large manifest into shards that any worker can run, and merging them back.

Shard k of a run lives in `OUT/shards/shard-k/` with its own manifest, ledger and videos, so a
shard is an ordinary `generate-videos` run: resumable on its own, locked on its own. The shard
manifests are written once, as Parquet with images already inlined as data URIs, so a worker on
another machine needs nothing but the shared output folder. Only valid rows go to shards;
invalid rows are reported from the original manifest when the results are merged.

The budget is divided in proportion to each shard's estimated cost, so the shards' caps add up
to the run's cap: however the shards race, the total can never pass it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from apimart import spec
from tasks.ledger import LEDGER_FILE, Ledger, RowRecord
from tasks.manifest import Manifest, ManifestRow, read_manifest
from tasks.options import RunOptions
from tasks.results import build_results, write_results

SHARDS_DIR = "shards"
PLAN_FILE = "shards.json"


@dataclass(frozen=True)
class ShardPlan:
    out: Path
    manifest_sha256: str
    shards: tuple[RunOptions, ...]


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
            record[f"{column}"] = None if value is None else str(value)
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


def plan_shards(options: RunOptions, count: int) -> ShardPlan:
    """Write (once) the shard manifests of `options.manifest` and the options of each shard.

    A rerun against an unchanged manifest reuses the same shards, so every shard resumes from
    its own ledger; a changed manifest is refused rather than re-split under running shards.
    """
    if count < 1:
        raise ValueError("shards must be at least 1")
    out = Path(options.out)
    source = Path(options.manifest)
    digest = _fingerprint(source)
    plan_path = out / PLAN_FILE
    if plan_path.exists():
        saved = json.loads(plan_path.read_text(encoding="utf-8"))
        if saved["manifest_sha256"] != digest:
            raise ValueError(
                f"{out} was sharded from another version of {source.name}; "
                "use a new output folder for a changed manifest"
            )
        count = int(saved["count"])
    manifest = read_manifest(source)
    valid = list(manifest.valid_rows)
    count = max(1, min(count, len(valid) or 1))
    groups = [valid[i * len(valid) // count : (i + 1) * len(valid) // count] for i in range(count)]
    estimates = [
        sum(
            spec.estimate_cost(r.request.resolution, r.request.duration, options.prices)
            for r in group
            if r.request is not None
        )
        for group in groups
    ]
    total = sum(estimates) or 1.0
    shard_options = []
    for k, group in enumerate(groups):
        folder = out / SHARDS_DIR / f"shard-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        shard_manifest = folder / "manifest.parquet"
        if not shard_manifest.exists():
            tmp = shard_manifest.with_suffix(".tmp")
            pq.write_table(_shard_table(group, manifest.extra_columns), tmp)
            tmp.replace(shard_manifest)
        cap = None if options.max_cost is None else options.max_cost * estimates[k] / total
        shard_options.append(
            options.model_copy(
                update={
                    "manifest": str(shard_manifest.resolve()),
                    "out": str(folder.resolve()),
                    "max_cost": cap,
                    "report": False,
                }
            )
        )
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(
        json.dumps({"manifest_sha256": digest, "count": count, "source": str(source)}),
        encoding="utf-8",
    )
    return ShardPlan(out=out, manifest_sha256=digest, shards=tuple(shard_options))


def merged_records(plan: ShardPlan) -> dict[str, RowRecord]:
    """Every shard's ledger rows, by row id (row ids are unique across the manifest)."""
    merged: dict[str, RowRecord] = {}
    for shard in plan.shards:
        folder = Path(shard.out)
        if not (folder / LEDGER_FILE).exists():
            continue
        with Ledger(folder, readonly=True) as ledger:
            for row_id, record in ledger.all().items():
                prefix = Path(shard.out).relative_to(plan.out.resolve())
                if record.video_path:
                    record.video_path = f"{prefix.as_posix()}/{record.video_path}"
                merged[row_id] = record
    return merged


def merge_shards(plan: ShardPlan, manifest: Manifest | None = None) -> pa.Table:
    """One results table for the whole manifest, in manifest order, written to OUT."""
    source = json.loads((plan.out / PLAN_FILE).read_text(encoding="utf-8"))["source"]
    manifest = manifest or read_manifest(source)
    table = build_results(manifest, merged_records(plan))
    write_results(table, plan.out)
    return table
