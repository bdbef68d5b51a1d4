"""Running a shard to the end: a dead run (its folder unlocked while it reads Running) is
marked Crashed and started again; a live one is left alone; an earlier holder is waited for.

The Prefect API is faked: these are the decisions, the real server is in tests/ops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Completed, Failed, Pending, Running

from flows import shard_runs
from flows.shard_runs import ShardWatch, run_shard
from tasks.run.options import RunOptions
from tasks.store.ledger import FolderLock


@dataclass
class FakeRun:
    id: UUID
    states: list[State]  # what successive reads return; the last one sticks

    @property
    def state(self) -> State:
        return self.states[0]


@dataclass
class FakeApi:
    """Flow runs whose state follows a script per run; records what the parent did."""

    scripts: list[Callable[[Path], list[State]]]
    folder: Path
    runs: list[FakeRun] = field(default_factory=list)
    forced: list[tuple[UUID, str]] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)

    async def arun_deployment(self, **kwargs: Any) -> FakeRun:
        self.created.append(kwargs)
        run = FakeRun(uuid4(), self.scripts[len(self.runs)](self.folder))
        self.runs.append(run)
        return run

    async def read_flow_run(self, run_id: UUID) -> FakeRun:
        run = next(r for r in self.runs if r.id == run_id)
        if len(run.states) > 1:
            run.states.pop(0)
        return run

    async def set_flow_run_state(self, run_id: UUID, state: State, force: bool) -> None:
        assert force
        self.forced.append((run_id, str(state.name)))
        run = next(r for r in self.runs if r.id == run_id)
        run.states = [state]


@pytest.fixture
def shard(tmp_path: Path) -> RunOptions:
    return RunOptions(manifest=str(tmp_path / "m.parquet"), out=str(tmp_path / "shard-0"))


def install(monkeypatch: pytest.MonkeyPatch, api: FakeApi) -> None:
    import prefect.client.orchestration as orchestration
    import prefect.deployments.flow_runs as flow_runs

    @asynccontextmanager
    async def get_client() -> AsyncIterator[FakeApi]:
        yield api

    monkeypatch.setattr(orchestration, "get_client", get_client)
    monkeypatch.setattr(flow_runs, "arun_deployment", api.arun_deployment)


WATCH = ShardWatch(deployment="generate-videos/generate-videos", dead_after=0.2, poll=0.02)


def scripted(*states: State) -> Callable[[Path], list[State]]:
    return lambda _folder: list(states)


async def test_a_run_that_completes_is_started_once(
    monkeypatch: pytest.MonkeyPatch, shard: RunOptions
) -> None:
    """A shard whose run completes is started once, with its options, key, name and tag."""
    api = FakeApi([scripted(Pending(), Running(), Completed())], Path(shard.out))
    install(monkeypatch, api)
    outcome = await run_shard(0, shard, watch=WATCH, parent="p1", parent_name="big")
    assert outcome.completed and len(outcome.runs) == 1
    assert api.forced == []
    made = api.created[0]
    assert made["parameters"] == {"options": shard.model_dump(mode="json")}
    assert made["idempotency_key"] == "p1-shard-0-1" and made["flow_run_name"] == "big-shard-0"
    assert made["timeout"] == 0 and shard_runs.SHARD_TAG in made["tags"]


async def test_a_dead_run_is_marked_crashed_and_started_again(
    monkeypatch: pytest.MonkeyPatch, shard: RunOptions
) -> None:
    # Run 1 reads Running forever and nobody holds its folder: its process is gone.
    """A run that reads Running with its folder unheld is marked Crashed and started again."""
    api = FakeApi([scripted(Running()), scripted(Running(), Completed())], Path(shard.out))
    install(monkeypatch, api)
    outcome = await run_shard(0, shard, watch=WATCH, parent="p1", parent_name="big")
    assert outcome.completed and len(outcome.runs) == 2
    assert api.forced == [(api.runs[0].id, "Crashed")]
    assert api.created[1]["idempotency_key"] == "p1-shard-0-2"
    assert api.created[1]["flow_run_name"] == "big-shard-0-2"


async def test_a_live_run_holding_its_folder_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, shard: RunOptions
) -> None:
    """A run that holds its folder is never marked Crashed, however long it runs."""
    lock = FolderLock(Path(shard.out))

    def started(_folder: Path) -> list[State]:
        lock.acquire()  # the run's process takes its folder
        return [Running()] * 25 + [Completed()]  # 0.5 s of Running, well past dead_after

    api = FakeApi([started], Path(shard.out))
    install(monkeypatch, api)
    try:
        outcome = await run_shard(0, shard, watch=WATCH, parent="p1", parent_name="big")
    finally:
        lock.release()
    assert outcome.completed and api.forced == []


async def test_failed_runs_are_retried_up_to_attempts_but_cancelled_is_final(
    monkeypatch: pytest.MonkeyPatch, shard: RunOptions
) -> None:
    """Failed runs are retried up to `attempts` runs in all; a cancelled run is final."""
    api = FakeApi([scripted(Failed())] * 3, Path(shard.out))
    install(monkeypatch, api)
    outcome = await run_shard(0, shard, watch=WATCH, parent="p", parent_name="n")
    assert outcome.state == "Failed" and len(outcome.runs) == 3

    api = FakeApi([scripted(Cancelled()), scripted(Completed())], Path(shard.out))
    install(monkeypatch, api)
    outcome = await run_shard(0, shard, watch=WATCH, parent="p", parent_name="n")
    assert outcome.state == "Cancelled" and len(outcome.runs) == 1


async def test_an_earlier_holder_of_the_folder_is_waited_for(
    monkeypatch: pytest.MonkeyPatch, shard: RunOptions
) -> None:
    """A rerun while the old run of this shard still works: no new run until it lets go."""
    api = FakeApi([scripted(Completed())], Path(shard.out))
    install(monkeypatch, api)
    lock = FolderLock(Path(shard.out))
    lock.acquire()
    threading.Timer(0.3, lock.release).start()
    task = asyncio.create_task(run_shard(0, shard, watch=WATCH, parent="p", parent_name="n"))
    await asyncio.sleep(0.15)
    assert api.created == []
    outcome = await asyncio.wait_for(task, timeout=5)
    assert outcome.completed and len(api.created) == 1
