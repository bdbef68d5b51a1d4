"""`generate-sharded`: K `generate-videos` runs on one batch, any worker's, and wait for them.

Wiring only. Every member run gets the same options (the same manifest, the same output
location) and shares one ledger: the database batch named by VIDEOBATCH_LEDGER_URL (members
on any machines), or without one the output folder's SQLite ledger (members on this machine,
holding the folder lock shared). Each member claims chunks of rows with leases, the budget is
the ledger's one reservation, and a 401/402 stops the whole batch (`tasks.steps.chunk`,
`tasks.run.gate`). No plan, no per-shard manifests: nothing that can be rewritten under a
member that spent money. Members are started and watched by `flows.shard_runs` (a dead one is
found by its silent heartbeat, its rows taken over by the others; rows left after a round get
replacement members). Running it again with the same options resumes the batch.

A folder made by an earlier videobatch's sharded runs (`OUT/shards.json`, `OUT/shards/`, a
ledger per shard) is refused before anything starts; the read-only commands still read it.
With `options.dry_run` nothing starts and nothing is written: the manifest is validated and
estimated, and the estimate published. `resubmit_unknown` and `retry_failed` reach the first
members only, never a replacement.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from flows.shard_runs import CachedBeats, ShardWatch, run_members
from tasks.errors import LedgerLocked, ManifestConflict, ShardsIncomplete
from tasks.present.artifacts import artifact_key, publish_estimate, publish_results
from tasks.present.summary import flow_outcome
from tasks.run.environment import adopt_ledger_secret
from tasks.run.lifecycle import (
    batch_conflict,
    batch_results,
    batch_share,
    batch_stop,
    estimate_run,
    lift_batch_stop,
    member_ages,
    rows_left,
)
from tasks.run.options import RunOptions
from tasks.run.runtime import run_logger
from tasks.run.shards import folder_holder
from tasks.store.layout import require_layout
from tasks.store.manifest import read_manifest
from tasks.store.storage import is_url

SHARD_DEPLOYMENT = "generate-videos/generate-videos"


@flow(name="generate-sharded", log_prints=False, validate_parameters=True)
async def generate_sharded(
    options: RunOptions,
    shards: Annotated[int, Field(ge=1, le=1000)] = 4,
    deployment: str = SHARD_DEPLOYMENT,
    attempts: Annotated[int, Field(ge=1, le=20)] = 3,
    dead_after: Annotated[float, Field(ge=5)] = 60.0,
) -> dict[str, Any]:
    """Run the manifest as `shards` member runs of one batch, then write the batch's results.

    Args:
        options: How the manifest is run, the same for every member; `max_cost` is the
            batch's, which all members together never pass.
        shards: How many member runs work on the batch at once.
        deployment: The `generate-videos` deployment a member runs as.
        attempts: Most member runs started per slot (replacements of dead or failed ones).
        dead_after: Seconds a member may read Pending or Running with no heartbeat in the
            batch's ledger before it is taken for dead (its worker was killed) and marked
            Crashed; keep it well above the 5-15 s a flow run takes to start.
    """
    log = run_logger()
    if options.dry_run:
        return await _estimate_only(options, shards)
    # Members adopt it too, each in its own process: a worker's environment need not hold it.
    await asyncio.to_thread(adopt_ledger_secret)
    share = batch_share(options.out)
    manifest = read_manifest(options.manifest, assets=options.assets)
    refusal = batch_conflict(options, manifest, share)
    if refusal:
        raise ManifestConflict(refusal)
    if share == "folder":
        holder = folder_holder(Path(options.out))  # only a plain run holds the lock exclusive
        if holder is not None:
            raise LedgerLocked(
                f"{options.out} is in use by {holder} (a plain run, which must be the folder's "
                "only writer); wait for it to finish or stop it. Nothing was sent."
            )
    # A person's new attempt: a 401/402 stop an earlier attempt left is lifted here, once
    # (unless a run that saw it is alive); members never lift it.
    await asyncio.to_thread(lift_batch_stop, options.out, share)
    count = max(1, min(shards, len(manifest.valid_rows)))
    log.info(
        "%d member runs of %s into %s, sharing %s",
        count,
        options.manifest,
        options.out,
        "the ledger of VIDEOBATCH_LEDGER_URL" if share == "database" else "the folder's ledger",
    )
    watch = ShardWatch(deployment=deployment, attempts=attempts, dead_after=dead_after, poll=1.0)
    beats = CachedBeats(lambda: member_ages(options.out, share), every=watch.poll)

    async def left() -> int:
        return len(await asyncio.to_thread(rows_left, options, manifest, share))

    slots = await run_members(
        count,
        # The parent writes the one report of the batch; K members would write it K times.
        options.model_copy(update={"report": False}),
        share=share,
        watch=watch,
        parent=str(flow_run.get_id() or "local"),
        parent_name=str(flow_run.get_name() or "sharded"),
        beats=beats,
        rows_left=left,
        stopped=lambda: asyncio.to_thread(batch_stop, options.out, share),
    )
    states = {s.name: s.state for s in slots}
    stop = await asyncio.to_thread(batch_stop, options.out, share)
    table, report = batch_results(options, manifest, share)
    markdown = await publish_results(
        table, key=artifact_key(options.out), title=f"videobatch {options.out}", report=report
    )
    summary = {
        **flow_outcome(options.out, table, markdown),
        "shards": states,
        "runs": {s.name: list(s.runs) for s in slots},
        "stopped": stop,
    }
    undone = await left()
    if undone:
        why = (
            f"; the batch is stopped ({stop}): fix the key or the balance, then run again"
            if stop
            else ""
        )
        raise ShardsIncomplete(
            f"{undone} rows are still to do after every member run ended ({states}){why}; "
            f"results written to {options.out}; run again with the same options to resume them"
        )
    return summary


async def _estimate_only(options: RunOptions, shards: int) -> dict[str, Any]:
    """Validate and estimate; start nothing, write nothing, send nothing."""
    log = run_logger()
    if not is_url(options.out):
        require_layout(Path(options.out), "plain")
    manifest = read_manifest(options.manifest, assets=options.assets)
    count = max(1, min(shards, len(manifest.valid_rows)))
    # Each member runs with its own `concurrency` jobs in flight.
    spread = options.model_copy(update={"concurrency": options.concurrency * count})
    estimate = estimate_run(manifest, spread)
    invalid = [r.message for r in manifest.invalid_rows]
    markdown = await publish_estimate(
        estimate, invalid, key=artifact_key(options.out), title=f"videobatch {options.out}"
    )
    log.info(
        "dry run: %d valid rows for %d member runs, estimated $%.2f; nothing was started or sent",
        estimate.valid,
        count,
        estimate.cost,
    )
    return {
        "out": str(options.out),
        "dry_run": True,
        "shards": count,
        "rows": estimate.rows,
        "valid": estimate.valid,
        "invalid": estimate.invalid,
        "estimated_cost": estimate.cost,
        "summary": markdown,
    }
