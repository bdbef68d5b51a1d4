"""A chunk's body run again (as a retry would) after some of its rows finished redoes none."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.sandbox import SandboxConfig, run_in_thread
from tasks.run.lifecycle import open_run
from tasks.run.options import RunOptions
from tasks.steps.chunk import Lanes, run_chunk
from tasks.store.ledger import State

KEY = "sk-chunk-retry-canary-5d1e"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    with retry.no_waits():
        yield


async def test_a_chunk_run_again_after_some_rows_finished_resends_and_refetches_none(
    tmp_path: Path,
) -> None:
    """Cut off after two rows are done, the chunk run again sends and downloads only the rest."""
    rows = ["first clip", "second clip", "third clip", "fourth clip"]
    ids = tuple(f"r{i}" for i in range(len(rows)))
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002)) as sb:
        options = RunOptions(
            manifest=str(write_manifest(tmp_path / "m.csv", prompt_rows(rows))),
            out=str(tmp_path / "out"),
            base_url=sb.url,
            poll_initial_delay=0.05,
            poll_interval=0.05,
            submit_rate=1000,
            concurrency=1,
        )
        async with open_run(options) as rt:
            done: list[str] = []
            two_done = asyncio.Event()

            async def on_row_done(state: str) -> None:
                done.append(state)
                if len(done) == 2:
                    # No task finishes from now on, so the chunk cannot finish its rows.
                    sb.config.faults.hold_tasks = True
                    two_done.set()

            first = asyncio.create_task(run_chunk(rt, Lanes.for_run(rt, on_row_done), ids))
            await asyncio.wait_for(two_done.wait(), timeout=60)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            finished = [r for r in ids if rt.ledger.get(r).state == State.DOWNLOADED]  # type: ignore[union-attr]
            assert len(finished) == 2 and len(finished) < len(ids)
            before = sb.state.stats()

            sb.config.faults.hold_tasks = False

            async def quiet(_state: str) -> None:
                return None

            again = await run_chunk(rt, Lanes.for_run(rt, quiet), ids)
            after = sb.state.stats()
            finished_tasks = [rt.ledger.get(r).task_id for r in finished]  # type: ignore[union-attr]

    assert again == {State.DOWNLOADED: len(ids)}
    assert after["tasks_created"] == len(ids)
    assert set(after["tasks_created_by_prompt"].values()) == {1}
    for task_id in finished_tasks:
        assert after["downloads_by_task"][task_id] == 1  # not fetched again
        assert after["queries_by_task"][task_id] == before["queries_by_task"][task_id]
