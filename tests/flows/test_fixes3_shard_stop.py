"""generate-sharded's rounds and the batch's 401/402 stop, against a real Prefect API: the
test plays the worker (it moves the member's state through the API), the stop is in the
batch's real SQLite ledger."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Failed, Running
from test_shard_runs_server import deployment as deployment
from test_shard_runs_server import nth_run, outcome_of, runs_of, set_state

from flows.shard_runs import CachedBeats, ShardWatch, run_members
from tasks.run.lifecycle import batch_stop, member_ages
from tasks.store.ledger import open_ledger

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


async def test_no_replacement_member_starts_while_the_batch_is_stopped(
    deployment: tuple[str, uuid.UUID], tmp_path: Path
) -> None:
    """A member that met a 401 (the batch's stop set) and failed is not replaced though rows
    are left: a replacement would send with the refused key."""
    from tasks.run.options import RunOptions

    out = tmp_path / "out"
    with open_ledger(out, shared=True) as ledger:
        ledger.ensure("r0", 0)
        ledger.stop_batch("auth", "401 from the API: the key was refused")
    options = RunOptions(manifest=str(tmp_path / "m.csv"), out=str(out))
    name, deployment_id = deployment
    watch = ShardWatch(deployment=name, dead_after=1.0, poll=0.1)

    async def rows_left() -> int:
        return 3

    task = asyncio.create_task(
        run_members(
            1,
            options,
            share="folder",
            watch=watch,
            parent="p-stop",
            parent_name="stopped",
            beats=CachedBeats(lambda: member_ages(str(out), "folder"), every=0.05),
            rows_left=rows_left,
            stopped=lambda: asyncio.to_thread(batch_stop, str(out), "folder"),
        )
    )
    try:
        async with get_client() as client:
            first = await nth_run(client, deployment_id, 1, task)
            await set_state(client, first, Running())
            await set_state(client, first, Failed(message="401: the key was refused"))
            outcome = await outcome_of(client, deployment_id, 1, task)
            assert outcome.state == "Failed" and outcome.runs == [str(first.id)]
            assert len(await runs_of(client, deployment_id)) == 1
    finally:
        task.cancel()
