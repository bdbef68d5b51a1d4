"""Running one shard as a deployment flow run that any worker of the pool may take, to the end.

The shard's folder lock (the ledger's `flock`, held by the process running the shard) is the
one fact about liveness that cannot lie: a flow run killed with SIGKILL stays "Running" on the
Prefect server forever, but its lock is gone the instant its process is. So:

* before a shard run is created, an earlier run still holding the folder (from a run of the
  sharded flow that died) is waited for, instead of being raced;
* a shard run that reads "Pending" or "Running" (a worker took it) while nobody has held its
  folder for `dead_after` seconds is dead: it is marked Crashed on the server and the shard is
  started again, resuming from its ledger (rows whose POST may have gone out stay `unknown`,
  never sent twice). `dead_after` must be longer than a flow run takes to start (5-15 s);
* a run that failed or crashed is started again, up to `attempts` runs in all; one that a
  person cancelled is left cancelled;
* a resend (`resubmit_unknown`, `retry_failed`) is a person's decision for one run: only the
  first run of a shard carries it. A shard started again never repeats it, so rows the first
  run resent and left doubtful again are not resent a third time by a restart nobody decided.

This relies on the lock being seen by every machine that runs shards, which holds on a local
disk and on NFSv4 (the same assumption as the ledger's "one run per folder").
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from tasks.run.options import RunOptions
from tasks.run.runtime import run_logger
from tasks.run.shards import folder_holder

SHARD_TAG = "videobatch-shard"


@dataclass(frozen=True)
class ShardWatch:
    """How a shard's runs are started and watched."""

    deployment: str
    attempts: int = 3
    dead_after: float = 60.0
    poll: float = 2.0


@dataclass
class ShardOutcome:
    index: int
    state: str
    runs: list[str]

    @property
    def completed(self) -> bool:
        return self.state == "Completed"


async def wait_until_free(folder: Path, *, poll: float, name: str) -> None:
    """Block while another live process holds `folder` (an earlier run of the same shard)."""
    told = False
    while (holder := folder_holder(folder)) is not None:
        if not told:
            run_logger().warning("%s: still held by %s; waiting for it to finish", name, holder)
            told = True
        await asyncio.sleep(poll)


async def _watch(client: Any, run_id: UUID, folder: Path, watch: ShardWatch, name: str) -> str:
    """Poll one flow run until it ends; return its state name ("Crashed" for a dead one)."""
    from prefect.states import Crashed

    free_since: float | None = None
    while True:
        flow_run = await client.read_flow_run(run_id)
        state = flow_run.state
        if state is not None and state.is_final():
            return str(state.name)
        # Pending: a worker took the run and is starting its process (5-15 s); Running: the
        # flow is on. Either way a live process takes the folder's lock within seconds.
        started = state is not None and (state.is_running() or state.is_pending())
        if started and folder_holder(folder) is None:
            now = time.monotonic()
            free_since = free_since or now
            if now - free_since >= watch.dead_after:
                message = (
                    f"{name}: {state.name} but its folder has had no live holder for "
                    f"{watch.dead_after:.0f}s: its process died (killed worker or machine)"
                )
                run_logger().error("%s", message)
                await client.set_flow_run_state(run_id, Crashed(message=message), force=True)
                return "Crashed"
        else:
            free_since = None
        await asyncio.sleep(watch.poll)


async def run_shard(
    index: int, options: RunOptions, *, watch: ShardWatch, parent: str, parent_name: str
) -> ShardOutcome:
    """Run shard `index` through the deployment until it completes (or runs out of attempts)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.flow_runs import arun_deployment

    log = run_logger()
    folder = Path(options.out)
    name = f"shard-{index}"
    outcome = ShardOutcome(index=index, state="NotStarted", runs=[])
    restart = options.model_copy(update={"resubmit_unknown": False, "retry_failed": False})
    for attempt in range(1, watch.attempts + 1):
        await wait_until_free(folder, poll=watch.poll, name=name)
        given = options if attempt == 1 else restart
        if attempt > 1 and given != options:
            log.warning("%s: started again without resubmit_unknown/retry_failed", name)
        async with get_client() as client:
            flow_run = await arun_deployment(
                name=watch.deployment,
                client=client,
                parameters={"options": given.model_dump(mode="json")},
                flow_run_name=f"{parent_name}-{name}" + (f"-{attempt}" if attempt > 1 else ""),
                idempotency_key=f"{parent}-{name}-{attempt}",
                timeout=0,
                tags=[SHARD_TAG],
            )
            outcome.runs.append(str(flow_run.id))
            outcome.state = await _watch(client, flow_run.id, folder, watch, name)
        if outcome.state in ("Completed", "Cancelled"):
            break
        if attempt < watch.attempts:
            log.warning("%s ended %s (run %s); starting it again", name, outcome.state, attempt)
    log.info("%s: %s after %d run(s)", name, outcome.state, len(outcome.runs))
    return outcome
