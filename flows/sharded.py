"""`generate-sharded`: one large manifest as K `generate-videos` runs any worker can take.

Wiring only: the shards are planned and merged by `tasks.run.shards` and run to the end by
`flows.shard_runs`, each through `run_deployment`, so the work pool hands it to whichever worker,
on whichever machine, is free. Running it again with the same options resumes every shard from
its own ledger; nothing is paid twice.

The output folder is sharded or nothing: a folder holding a plain run (`OUT/ledger.sqlite`) is
refused before anything is planned. With `options.dry_run` nothing is planned on disk and
nothing is sent: the manifest is validated and estimated, and the estimate published.
`resubmit_unknown` and `retry_failed` are a person's decision for this run: they reach the first
run of each shard only, never a shard started again after a crash (see `flows.shard_runs`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from flows.shard_runs import ShardWatch, run_shard
from tasks.errors import ShardsIncomplete
from tasks.present.artifacts import artifact_key, publish_estimate, publish_results
from tasks.present.report import write_report
from tasks.present.summary import flow_outcome
from tasks.run.lifecycle import estimate_run
from tasks.run.options import RunOptions
from tasks.run.runtime import run_logger
from tasks.run.shards import ShardPlanError, merge_shards, plan_shards, saved_plan
from tasks.store.hashing import file_sha256
from tasks.store.layout import require_layout
from tasks.store.manifest import read_manifest

SHARD_DEPLOYMENT = "generate-videos/generate-videos"


@flow(name="generate-sharded", log_prints=False, validate_parameters=True)
async def generate_sharded(
    options: RunOptions,
    shards: Annotated[int, Field(ge=1, le=1000)] = 4,
    deployment: str = SHARD_DEPLOYMENT,
    attempts: Annotated[int, Field(ge=1, le=20)] = 3,
    dead_after: Annotated[float, Field(ge=5)] = 60.0,
) -> dict[str, Any]:
    """Split the manifest into shards, run each as a deployment, merge the results in order.

    Args:
        options: How the manifest is run; `max_cost` is shared out among the shards.
        shards: How many shards; the first run into an output folder fixes it.
        deployment: The deployment that runs one shard.
        attempts: Most flow runs started per shard (a crashed shard is started again).
        dead_after: Seconds a shard run may read Pending or Running with nobody holding its
            folder before it is taken for dead (its worker was killed) and started again;
            keep it well above the 5-15 s a flow run takes to start.
    """
    log = run_logger()
    if options.dry_run:
        return await _estimate_only(options, shards)
    plan = plan_shards(options, shards)
    for line in plan.stale:
        log.warning("%s", line)
    parent = str(flow_run.get_id() or "local")
    parent_name = str(flow_run.get_name() or "sharded")
    log.info("%d shards of %s into %s", len(plan.shards), plan.source, plan.out)
    watch = ShardWatch(deployment=deployment, attempts=attempts, dead_after=dead_after)
    outcomes = await asyncio.gather(
        *(
            run_shard(k, shard, watch=watch, parent=parent, parent_name=parent_name)
            for k, shard in enumerate(plan.shards)
        )
    )
    states = {f"shard-{o.index}": o.state for o in outcomes}
    table = merge_shards(plan, prices=options.prices)
    report = write_report(plan.out, table) if options.report else None
    markdown = await publish_results(
        table, key=artifact_key(options.out), title=f"videobatch {options.out}", report=report
    )
    summary = {
        **flow_outcome(str(plan.out), table, markdown),
        "shards": states,
        "stale": list(plan.stale),
    }
    unfinished = {k: v for k, v in states.items() if v != "Completed"}
    if unfinished:
        raise ShardsIncomplete(
            f"shards that did not complete: {unfinished}; results merged into {plan.out}; "
            "run again with the same options to resume them"
        )
    return summary


async def _estimate_only(options: RunOptions, shards: int) -> dict[str, Any]:
    """Validate and estimate; plan nothing on disk, send nothing."""
    log = run_logger()
    out = Path(options.out)
    require_layout(out, "sharded")
    manifest = read_manifest(options.manifest)
    plan = saved_plan(out)
    if plan is not None and plan.manifest_sha256 != file_sha256(manifest.path):
        raise ShardPlanError(
            f"{out} was sharded from another version of {manifest.path.name}; "
            "use a new output folder for a changed manifest"
        )
    count = len(plan.shards) if plan is not None else min(shards, len(manifest.valid_rows) or 1)
    # Each shard runs with its own `concurrency` jobs in flight.
    spread = options.model_copy(update={"concurrency": options.concurrency * count})
    estimate = estimate_run(manifest, spread)
    invalid = [r.message for r in manifest.invalid_rows]
    markdown = await publish_estimate(
        estimate, invalid, key=artifact_key(options.out), title=f"videobatch {options.out}"
    )
    log.info(
        "dry run: %d valid rows in %d shards, estimated $%.2f; nothing was planned or sent",
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
