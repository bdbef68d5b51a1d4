"""Member runs of a shared batch against a real Prefect API (the session's test harness).

`run_members` creates real flow runs from a real deployment and watches them through the real
client. The test plays the worker: it moves each run's state through the API, as a worker's
flow process would, and beats (or does not beat) the member's heartbeat into the batch's real
SQLite ledger, as a live (or killed) member process does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Cancelled, Completed, Failed, Pending, Running, State

from flows.shard_runs import SHARD_TAG, CachedBeats, ShardOutcome, ShardWatch, run_members
from tasks.run.lifecycle import member_ages
from tasks.run.options import RunOptions
from tasks.store.ledger import open_ledger

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

# Long enough that the watcher reads a live run several times before it could call it dead,
# short enough for a test; the real default (60 s) covers a flow process's start-up.
DEAD_AFTER = 1.0
# Every wait here is for something the API will show; this only bounds a broken run.
TIMEOUT = 90.0


@pytest.fixture
async def deployment() -> tuple[str, uuid.UUID]:
    """A deployment of its own for this test (no work pool: only the test acts on its runs)."""
    flow_name = f"shard-runs-{uuid.uuid4().hex[:8]}"
    async with get_client() as client:
        flow_id = await client.create_flow_from_name(flow_name)
        deployment_id = await client.create_deployment(flow_id=flow_id, name="shards")
    return f"{flow_name}/shards", deployment_id


@pytest.fixture
def shard(tmp_path: Path) -> RunOptions:
    return RunOptions(
        manifest=str(tmp_path / "m.parquet"), out=str(tmp_path / "out"), resubmit_unknown=True
    )


async def runs_of(client: PrefectClient, deployment_id: uuid.UUID) -> list[FlowRun]:
    """The deployment's flow runs, oldest first, as the server has them."""
    return await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
    )


async def nth_run(
    client: PrefectClient, deployment_id: uuid.UUID, n: int, task: asyncio.Task[Any]
) -> FlowRun:
    """Wait until the deployment has its `n`-th flow run (1-based); fail if `run_shard` ends
    first or the API never shows it."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        runs = await runs_of(client, deployment_id)
        if len(runs) >= n:
            return runs[n - 1]
        if task.done():
            raise AssertionError(f"run_members ended ({task.result()}) before run {n} existed")
        await asyncio.sleep(0.1)
    raise AssertionError(f"no flow run {n} of the deployment within {TIMEOUT}s")


async def outcome_of(
    client: PrefectClient,
    deployment_id: uuid.UUID,
    runs: int,
    task: asyncio.Task[list[ShardOutcome]],
) -> ShardOutcome:
    """Wait for `run_shard` to end; fail at once if it starts more than `runs` flow runs."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if task.done():
            return task.result()[0]
        made = await runs_of(client, deployment_id)
        if len(made) > runs:
            states = [str(r.state_name) for r in made]
            raise AssertionError(f"run_members started run {len(made)} (runs: {states})")
        await asyncio.sleep(0.1)
    raise AssertionError(f"run_members did not end within {TIMEOUT}s")


async def state_of(client: PrefectClient, run: FlowRun) -> State:
    state = (await client.read_flow_run(run.id)).state
    assert state is not None
    return state


async def set_state(client: PrefectClient, run: FlowRun, state: State) -> None:
    """What a worker's flow process (or a person in the UI) tells the server."""
    await client.set_flow_run_state(run.id, state, force=True)


@contextmanager
def beating(shard: RunOptions, run: FlowRun) -> Iterator[None]:
    """The member's heartbeat kept fresh in the batch's ledger, as its live process keeps it."""
    stop = False

    async def beat() -> None:
        while not stop:
            ledger.beat(str(run.id))
            await asyncio.sleep(0.1)

    with open_ledger(Path(shard.out), shared=True) as ledger:
        ledger.beat(str(run.id))
        task = asyncio.get_running_loop().create_task(beat())
        try:
            yield
        finally:
            stop = True
            task.cancel()


def start_members(
    deployment: str, shard: RunOptions, left: list[int]
) -> asyncio.Task[list[ShardOutcome]]:
    """One member slot; `left` is what "rows left to do" answers after each round."""
    watch = ShardWatch(deployment=deployment, dead_after=DEAD_AFTER, poll=0.1)
    beats = CachedBeats(lambda: member_ages(shard.out, "folder"), every=0.05)

    async def rows_left() -> int:
        return left.pop(0) if left else 0

    return asyncio.create_task(
        run_members(
            1,
            shard,
            share="folder",
            watch=watch,
            parent="p1",
            parent_name="big",
            beats=beats,
            rows_left=rows_left,
        )
    )


@pytest.mark.parametrize("taken", [Pending, Running], ids=["pending", "running"])
async def test_a_member_with_no_heartbeat_is_marked_crashed_and_replaced_while_rows_are_left(
    deployment: tuple[str, uuid.UUID], shard: RunOptions, taken: type[State]
) -> None:
    """A taken member that never beats is set Crashed; with rows left a replacement starts,
    without resends; a beating one is left alone; a waiting (Scheduled) one is not dead."""
    name, deployment_id = deployment
    task = start_members(name, shard, left=[5, 0])
    try:
        async with get_client() as client:
            first = await nth_run(client, deployment_id, 1, task)
            assert first.name == "big-shard-0" and SHARD_TAG in first.tags
            assert first.parameters["options"]["resubmit_unknown"] is True
            assert first.parameters["options"]["out"] == shard.out
            assert first.parameters["share_batch"] == "folder"
            # Waiting for a worker (Scheduled) is not dead, however long it lasts. Only a
            # window can show that nothing happens: three times `dead_after`. A slow machine
            # can only make such a check pass falsely, never fail falsely.
            await asyncio.sleep(3 * DEAD_AFTER)
            assert (await state_of(client, first)).type == StateType.SCHEDULED
            assert len(await runs_of(client, deployment_id)) == 1
            # A worker took the run, then its process died before it opened the ledger.
            await set_state(client, first, taken())

            second = await nth_run(client, deployment_id, 2, task)
            crashed = await state_of(client, first)
            assert crashed.type == StateType.CRASHED, crashed
            assert "no heartbeat" in (crashed.message or "")
            assert second.name == "big-shard-0-2"
            assert second.parameters["options"]["resubmit_unknown"] is False

            with beating(shard, second):
                await set_state(client, second, Running())
                await asyncio.sleep(3 * DEAD_AFTER)  # a live heartbeat: nothing may happen
                assert (await state_of(client, second)).type == StateType.RUNNING
                assert not task.done()
                await set_state(client, second, Completed())
            outcome = await outcome_of(client, deployment_id, 2, task)

            assert outcome.completed
            assert outcome.runs == [str(first.id), str(second.id)]
            assert len(await runs_of(client, deployment_id)) == 2
    finally:
        task.cancel()


async def test_a_member_whose_heartbeat_stops_is_crashed_and_not_replaced_when_nothing_is_left(
    deployment: tuple[str, uuid.UUID], shard: RunOptions
) -> None:
    """A Running member that beat and then fell silent (its worker killed) is set Crashed; the
    other members finished its rows, so no replacement is started."""
    name, deployment_id = deployment
    task = start_members(name, shard, left=[0])
    try:
        async with get_client() as client:
            first = await nth_run(client, deployment_id, 1, task)
            with beating(shard, first):
                await set_state(client, first, Running())
                await asyncio.sleep(3 * DEAD_AFTER)
                assert (await state_of(client, first)).type == StateType.RUNNING
            outcome = await outcome_of(client, deployment_id, 1, task)
            assert outcome.state == "Crashed"
            assert (await state_of(client, first)).type == StateType.CRASHED
            assert len(await runs_of(client, deployment_id)) == 1
    finally:
        task.cancel()


async def test_a_failed_member_is_replaced_and_a_cancelled_one_is_left_cancelled(
    deployment: tuple[str, uuid.UUID], shard: RunOptions
) -> None:
    """A member that failed is replaced while rows are left; one a person cancelled is left,
    with no third run, though rows are still left."""
    name, deployment_id = deployment
    task = start_members(name, shard, left=[3, 3])
    try:
        async with get_client() as client:
            first = await nth_run(client, deployment_id, 1, task)
            await set_state(client, first, Running())
            await set_state(client, first, Failed(message="a row's download broke"))

            second = await nth_run(client, deployment_id, 2, task)
            await set_state(client, second, Cancelled(message="stopped by a person"))
            outcome = await outcome_of(client, deployment_id, 2, task)

            assert outcome.state == "Cancelled"
            assert outcome.runs == [str(first.id), str(second.id)]
            assert (await state_of(client, first)).type == StateType.FAILED
            left = await state_of(client, second)
            assert left.type == StateType.CANCELLED and left.message == "stopped by a person"
            assert len(await runs_of(client, deployment_id)) == 2
    finally:
        task.cancel()
