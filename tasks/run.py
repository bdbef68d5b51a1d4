"""Opening and closing one run: the plain-Python halves the flow wires its tasks between.

`open_run` reads the manifest (every row validated before anything is spent), locks the output
folder, opens the ledger, builds the client and registers the runtime the tasks share.
`finish_run` rebuilds the results table from the ledger, so it is the same whether the run
ended well, stopped, or is rebuilt later by `videobatch results`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from apimart.client import AsyncAPIMartClient
from tasks.gate import Budget, SubmitGate
from tasks.ledger import NEVER_SENT, WITH_TASK, Ledger, State, open_ledger, request_hash
from tasks.manifest import Manifest, ManifestRow, read_manifest
from tasks.options import RunOptions
from tasks.results import build_results, write_results
from tasks.runtime import (
    Runtime,
    install_redaction,
    new_run_id,
    registered,
    resolve_api_key,
    run_logger,
)
from tasks.submit import send_decision


class RunRefused(Exception):
    """The run cannot start (no key, unreadable manifest): nothing was sent."""


class ManifestConflict(RunRefused):
    """The output folder holds paid tasks for rows the manifest no longer asks for as sent."""


def ledger_conflicts(manifest: Manifest, ledger: Ledger) -> list[str]:
    """Rows with a task (or a doubtful POST) in OUT that the manifest now contradicts.

    Resuming over them would be wrong either way: the old video would be reported for a new
    prompt, or a row that moved would be paid for again under another id, or a paid task
    would silently drop out of the results.
    """
    rows: dict[str, ManifestRow] = {}
    for each in manifest.rows:
        rows.setdefault(each.id, each)  # a duplicate id is the later, invalid copy
    problems = []
    for record in ledger.all().values():
        if record.state in NEVER_SENT:
            continue
        task = f"task {record.task_id}" if record.task_id else "a POST of unknown outcome"
        row = rows.get(record.row_id)
        if row is None:
            problems.append(
                f"{record.row_id}: has {task} in this folder but is not in the manifest"
            )
        elif row.request is None:
            problems.append(f"{record.row_id}: has {task} but the manifest row is now invalid")
        elif record.request_hash and record.request_hash != request_hash(row.request):
            problems.append(f"{record.row_id}: the row changed since it was sent ({task})")
    return problems


def rows_needing_work(runtime: Runtime) -> list[str]:
    """Valid rows that are not finished; a finished row costs no API call and no task run."""
    ledger_rows = runtime.ledger.all()
    pending: list[str] = []
    for row in runtime.manifest.valid_rows:
        assert row.request is not None
        record = ledger_rows.get(row.id)
        if record is None:
            pending.append(row.id)
        elif record.state == State.DOWNLOADED:
            if not _video_intact(runtime, row.id, record.video_path, record.video_bytes):
                pending.append(row.id)
        elif isinstance(send_decision(record, row.request, runtime.options), tuple):
            pending.append(row.id)  # to be sent
        elif record.state in WITH_TASK - {State.FAILED, State.CANCELLED}:
            pending.append(row.id)  # to be polled or downloaded
    return pending


def _video_intact(runtime: Runtime, row_id: str, rel: str | None, size: int | None) -> bool:
    # A size check here keeps a finished rerun cheap; the download step re-hashes on doubt.
    path = runtime.out / (rel or f"videos/{row_id}.mp4")
    return path.is_file() and (size is None or path.stat().st_size == size)


@asynccontextmanager
async def open_run(
    options: RunOptions, *, manifest: Manifest | None = None
) -> AsyncIterator[tuple[str, Runtime]]:
    manifest = manifest or read_manifest(options.manifest)
    api_key = resolve_api_key()
    if not api_key:
        raise RunRefused(
            "no API key: set APIMART_API_KEY or create the Prefect Secret block "
            "'apimart-api-key' (or run against the sandbox with --sandbox)"
        )
    install_redaction(api_key)
    out = Path(options.out)
    with open_ledger(out) as ledger:
        conflicts = ledger_conflicts(manifest, ledger)
        if conflicts:
            shown = "; ".join(conflicts[:10]) + (" ..." if len(conflicts) > 10 else "")
            raise ManifestConflict(
                f"{out} was run with another version of this manifest ({len(conflicts)} rows "
                f"differ: {shown}). Nothing was sent. Use a new --out folder for a changed "
                "manifest, or restore those rows."
            )
        ledger.set_meta("manifest", str(manifest.path))
        for row in manifest.valid_rows:
            ledger.ensure(row.id, row.index)
        client = AsyncAPIMartClient(base_url=options.base_url, api_key=api_key)
        async with client:
            runtime = Runtime(
                options=options,
                manifest=manifest,
                ledger=ledger,
                client=client,
                run_id=new_run_id(),
                gate=SubmitGate(rate=options.submit_rate),
                budget=Budget(cap=options.max_cost, committed=ledger.committed_cost()),
                out=out,
            )
            with registered(runtime) as key:
                yield key, runtime


def finish_run(runtime: Runtime) -> pa.Table:
    """Write results.parquet and results.csv from the ledger; return the table."""
    table = build_results(runtime.manifest, runtime.ledger.all(), prices=runtime.options.prices)
    parquet, csv = write_results(table, runtime.out)
    run_logger().info("results written to %s and %s", parquet, csv)
    return table


@dataclass(frozen=True)
class Estimate:
    """What a manifest would cost and take, before anything is sent."""

    rows: int
    valid: int
    invalid: int
    cost: float
    minutes_low: float
    minutes_high: float
    concurrency: int = 1


# The vendor says a task usually takes 3 to 5 minutes.
TASK_MINUTES = (3.0, 5.0)


def estimate_run(manifest: Manifest, options: RunOptions) -> Estimate:
    from apimart import spec

    valid = manifest.valid_rows
    cost = sum(
        spec.estimate_cost(r.request.resolution, r.request.duration, options.prices)
        for r in valid
        if r.request is not None
    )
    waves = -(-len(valid) // options.concurrency) if valid else 0
    return Estimate(
        rows=len(manifest.rows),
        valid=len(valid),
        invalid=len(manifest.invalid_rows),
        cost=round(cost, 4),
        minutes_low=waves * TASK_MINUTES[0],
        minutes_high=waves * TASK_MINUTES[1],
        concurrency=options.concurrency,
    )
