"""Opening and closing one run: the plain-Python halves the flow wires its tasks between.

`open_run` reads the manifest (every row validated before anything is spent), locks the output
folder, opens the ledger, builds the client and hands back the runtime the steps share.
`finish_run` rebuilds the results table from the ledger, so it is the same whether the run
ended well, stopped, or is rebuilt later by `videobatch results`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pyarrow as pa

from apimart.client import AsyncAPIMartClient, check_api_key
from apimart.errors import AuthenticationError
from tasks.errors import ManifestConflict, RunRefused
from tasks.run.environment import resolve_api_key
from tasks.run.estimate import TASK_MINUTES as TASK_MINUTES
from tasks.run.estimate import Estimate as Estimate
from tasks.run.estimate import estimate_run as estimate_run
from tasks.run.gate import Budget, SubmitGate
from tasks.run.options import RunOptions
from tasks.run.runtime import (
    Runtime,
    install_redaction,
    new_run_id,
    run_logger,
)
from tasks.steps.submit import send_decision

# The ledger check and the estimate live in Prefect-free modules (the read-only commands use
# them); they are re-exported here, where the flows have always imported them from.
from tasks.store.conflicts import Conflict as Conflict
from tasks.store.conflicts import LedgerCheck, ledger_conflicts, records_for_results, renewed_record
from tasks.store.conflicts import holds_money as holds_money
from tasks.store.layout import LayoutMismatch, require_layout
from tasks.store.ledger import WITH_TASK, Ledger, RowRecord, State, open_ledger
from tasks.store.manifest import Manifest, read_manifest
from tasks.store.results import build_results, write_results

__all__ = [
    "TASK_MINUTES",
    "Conflict",
    "Estimate",
    "LedgerCheck",
    "ManifestConflict",
    "RunRefused",
    "estimate_run",
    "finish_run",
    "holds_money",
    "ledger_conflicts",
    "open_run",
    "records_for_results",
    "renewed_record",
    "rows_needing_work",
]


# The client's transport, named here so flows can pass one without importing httpx.
Transport = httpx.AsyncBaseTransport

_RENEWED_FIELDS = (
    "state",
    "attempt",
    "request_hash",
    "idempotency_key",
    "task_id",
    "api_status",
    "estimated_cost",
    "cost",
    "error_code",
    "error_message",
    "intent_at",
    "submitted_at",
    "terminal_at",
    "api_created",
    "api_completed",
    "generation_s",
    "polls",
    "url_expires_at",
)


def _renew(ledger: Ledger, record: RowRecord) -> None:
    fresh = renewed_record(record)
    ledger.update(
        record.row_id, "request-changed", **{f: getattr(fresh, f) for f in _RENEWED_FIELDS}
    )


def rows_needing_work(runtime: Runtime, check: LedgerCheck | None = None) -> list[str]:
    """Valid rows that are not finished; a finished row costs no API call and no task run.

    Rows the ledger check holds are left out: their paid task belongs to another request.
    """
    ledger_rows = runtime.ledger.all()
    check = check or ledger_conflicts(runtime.manifest, ledger_rows)
    held = {c.row_id for c in check.held}
    pending: list[str] = []
    for row in runtime.manifest.valid_rows:
        assert row.request is not None
        record = ledger_rows.get(row.id)
        if row.id in held:
            continue
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
    options: RunOptions,
    *,
    manifest: Manifest | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Runtime]:
    """Everything a run needs, in the order that keeps a refusal free: nothing is opened,
    locked or sent before the manifest, the folder's layout and the key have been checked.

    `transport` carries the client's requests (API and downloads) instead of the network:
    `httpx.ASGITransport` over the sandbox app runs a whole flow in one process.
    """
    manifest = manifest or read_manifest(options.manifest, assets=options.assets)
    out = Path(options.out)
    try:
        require_layout(out, "plain")
    except LayoutMismatch as exc:
        raise RunRefused(str(exc)) from None
    api_key = resolve_api_key()
    if not api_key:
        raise RunRefused(
            "no API key: set APIMART_API_KEY or create the Prefect Secret block "
            "'apimart-api-key' (or run against the sandbox with --sandbox)"
        )
    install_redaction(api_key)
    try:
        api_key = check_api_key(api_key)
    except AuthenticationError as exc:
        # Raised before any folder is locked or ledger opened; the message names the rule,
        # never the key.
        raise RunRefused(f"{exc}. Nothing was sent.") from None
    with open_ledger(out) as ledger:
        check = ledger_conflicts(manifest, ledger.all())
        refusal = check.refusal(out)
        if refusal:
            raise ManifestConflict(refusal)
        if check.held:
            run_logger().error("%s", check.held_report())
        records = ledger.all()
        for row_id in check.renewed:
            _renew(ledger, records[row_id])
        ledger.set_meta("manifest", str(manifest.path))
        # `videobatch results` re-reads the manifest: with other assets its rows would differ.
        ledger.set_meta("assets", str(Path(options.assets).resolve()) if options.assets else "")
        for row in manifest.valid_rows:
            ledger.ensure(row.id, row.index)
        client = AsyncAPIMartClient(base_url=options.base_url, api_key=api_key, transport=transport)
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
            yield runtime


def finish_run(runtime: Runtime, check: LedgerCheck | None = None) -> pa.Table:
    """Write results.parquet and results.csv from the ledger; return the table.

    `check` is the run's ledger check; what it holds cannot change while the run goes on
    (held rows are never touched), so a run passes the one it began with.
    """
    records = runtime.ledger.all()
    check = check or ledger_conflicts(runtime.manifest, records)
    table = build_results(
        runtime.manifest,
        records_for_results(check, records),
        prices=runtime.options.prices,
        held=check.held_messages,
    )
    parquet, csv = write_results(table, runtime.out)
    run_logger().info("results written to %s and %s", parquet, csv)
    return table
