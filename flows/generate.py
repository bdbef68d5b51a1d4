"""`generate-videos`: one manifest in, verified videos and a per-row results table out.

Wiring only. Rows run submit -> poll -> download in chunk task runs (`tasks.steps.chunk`): one
per row up to 1,000 rows, consecutive rows grouped beyond, so a run never makes more than
about 1,000 task runs. A semaphore shared by every chunk caps the jobs in flight, so a new
submission starts the moment a slot frees (no waves). A slot is held from submission until the
task ends; downloads run outside it (under a bound of their own), so slow downloads never hold
back generation. Every row's task is polled by the run's one poll scheduler (`open_poller`),
which learns task durations and keeps what it learned in the ledger.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow

from tasks.present.artifacts import Progress, artifact_key, publish_estimate, publish_results
from tasks.present.report import REPORT_FILE, write_report
from tasks.present.summary import flow_outcome
from tasks.run.environment import adopt_ledger_secret
from tasks.run.gate import RunStopped
from tasks.run.lifecycle import (
    ShareBatch,
    Transport,
    estimate_run,
    finish_run,
    ledger_conflicts,
    open_run,
    rows_needing_work,
)
from tasks.run.options import RunOptions
from tasks.run.polling import eta_of, open_poller
from tasks.run.runtime import run_logger
from tasks.steps.chunk import run_in_chunks
from tasks.steps.download import remote_output
from tasks.store.manifest import read_manifest
from tasks.store.storage import is_url


@flow(name="generate-videos", log_prints=False, validate_parameters=True)
async def generate_videos(
    options: RunOptions, share_batch: ShareBatch | None = None
) -> dict[str, Any]:
    """Generate one video per manifest row; resumable, and never pays twice for a row.

    Args:
        options: How the manifest is run.
        share_batch: Run as one member of a batch other runs share (`generate-sharded` sets
            it): "folder" for the output folder's ledger (members on one machine),
            "database" for the batch of VIDEOBATCH_LEDGER_URL. Unset: a plain run.
    """
    return await generate(options, share_batch=share_batch)


async def generate(
    options: RunOptions,
    *,
    transport: Transport | None = None,
    share_batch: ShareBatch | None = None,
) -> dict[str, Any]:
    """The body of `generate-videos`. `transport` carries the client's requests instead of
    the network (the sandbox app over `httpx.ASGITransport`, for flows run in one process);
    it is not a flow parameter, since flow parameters are stored on the server."""
    if options.dry_run:
        return await _estimate_only(options)
    await asyncio.to_thread(adopt_ledger_secret)
    async with open_run(options, transport=transport, share_batch=share_batch) as runtime:
        log = run_logger()
        # Computed once: rows it holds are never touched, so it holds all run long.
        check = ledger_conflicts(runtime.manifest, runtime.ledger.all())
        rows = rows_needing_work(runtime, check)
        log.info(
            "%d rows, %d valid, %d need work",
            len(runtime.manifest.rows),
            len(runtime.manifest.valid_rows),
            len(rows),
        )
        for bad in runtime.manifest.invalid_rows:
            log.warning("invalid, not sent: %s", bad.message)
        progress = Progress(
            len(rows),
            key=artifact_key(options.out),
            spent=runtime.ledger.spent,
            eta=eta_of(runtime),
        )
        async with open_poller(runtime):
            await progress.start()
            outcomes = await run_in_chunks(runtime, rows, progress.row_done)
        table = finish_run(runtime, check)
        report = None
        if options.report and is_url(options.out):
            # `finish_run` wrote it into the store: link to that one, not a staging copy.
            remote = remote_output(runtime)
            assert remote is not None
            report = remote.url(REPORT_FILE)
        elif options.report:
            report = write_report(runtime.out, table)
        markdown = await publish_results(
            table, key=artifact_key(options.out), title=f"videobatch {options.out}", report=report
        )
        stopped = runtime.gate.stop_reason
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if stopped:
            raise RunStopped(stopped)
        for error in errors:
            log.error("a chunk of rows failed unexpectedly: %r", error)
        return {
            **flow_outcome(options.out, table, markdown),
            "held": [c.message for c in check.held],
        }


async def _estimate_only(options: RunOptions) -> dict[str, Any]:
    """`dry_run`: validate and estimate, publish the estimate; no ledger, lock or client."""
    log = run_logger()
    manifest = read_manifest(options.manifest, assets=options.assets)
    invalid = [row.message for row in manifest.invalid_rows]
    for message in invalid:
        log.warning("invalid, would not be sent: %s", message)
    estimate = estimate_run(manifest, options)
    markdown = await publish_estimate(
        estimate, invalid, key=artifact_key(options.out), title=f"videobatch {options.out}"
    )
    log.info(
        "dry run: %d rows, %d valid, %d invalid, estimated cost %.2f; nothing was sent",
        estimate.rows,
        estimate.valid,
        estimate.invalid,
        estimate.cost,
    )
    return {
        "out": options.out,
        "dry_run": True,
        "rows": estimate.rows,
        "valid": estimate.valid,
        "invalid": estimate.invalid,
        "estimated_cost": estimate.cost,
        "minutes": [estimate.minutes_low, estimate.minutes_high],
        "completed": 0,
        "statuses": {},
        "summary": markdown,
        "held": [],
    }
