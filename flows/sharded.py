"""`generate-sharded`: one large manifest as K `generate-videos` runs any worker can take.

Wiring only: the shards are planned and merged by `tasks.shards`; each shard runs through
`run_deployment`, so the work pool hands it to whichever worker, on whichever machine, is free.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow
from prefect.deployments.flow_runs import arun_deployment
from prefect.runtime import flow_run

from tasks.artifacts import artifact_key, publish_results
from tasks.options import RunOptions
from tasks.runtime import run_logger
from tasks.shards import merge_shards, plan_shards

SHARD_DEPLOYMENT = "generate-videos/generate-videos"


@flow(name="generate-sharded", log_prints=False)
async def generate_sharded(
    options: RunOptions, shards: int = 4, deployment: str = SHARD_DEPLOYMENT
) -> dict[str, Any]:
    """Split the manifest into shards, run each as a deployment, merge the results in order."""
    log = run_logger()
    plan = plan_shards(options, shards)
    parent = flow_run.get_id() or "local"
    log.info("%d shards of %s into %s", len(plan.shards), options.manifest, options.out)
    runs = await asyncio.gather(
        *(
            arun_deployment(
                name=deployment,
                parameters={"options": shard.model_dump(mode="json")},
                flow_run_name=f"shard-{k}",
                idempotency_key=f"{parent}-shard-{k}",
                timeout=None,
                poll_interval=2,
                tags=["videobatch-shard"],
            )
            for k, shard in enumerate(plan.shards)
        )
    )
    states = {run.name: run.state.name if run.state else "unknown" for run in runs}
    log.info("shard runs ended: %s", states)
    table = merge_shards(plan)
    await publish_results(
        table, key=artifact_key(options.out), title=f"videobatch {options.out}", report=None
    )
    statuses = table.column("status").to_pylist()
    return {
        "out": options.out,
        "rows": len(statuses),
        "completed": statuses.count("completed"),
        "shards": states,
    }
