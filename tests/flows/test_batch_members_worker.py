"""`generate-sharded` for real: member runs of a `generate-videos` deployment served by a real
process worker, against a real Prefect API and the sandbox over HTTP, on one SQLite folder.

K members on one batch send each row once and the parent writes the batch's results; a member
killed with SIGKILL is found by its silent heartbeat, marked Crashed and replaced, and the
replacement never repeats the person's resend."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from flowkit import API_KEY, fast_options, write_manifest

from flows.generate import generate_videos
from flows.shard_runs import SHARD_TAG
from flows.sharded import generate_sharded
from tasks.store.ledger import LOCK_FILE, Ledger

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

# A loaded machine's worker can spend well over 30 s "Submitting" a run (a Pending state) before
# its process starts and beats; the kill below is reported by the worker itself.
DEAD_AFTER = 120.0


@pytest.fixture(scope="module")
def shard_deployment(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`generate-videos` as a deployment of a process pool, with a real worker taking its runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    name = f"shards-{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        source = await generate_videos.from_source(  # type: ignore[attr-defined]
            source=str(ROOT), entrypoint="flows/generate.py:generate_videos"
        )
        await source.deploy(name=name, work_pool_name=name, build=False, push=False)

    asyncio.run(setup())
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "APIMART_API_KEY": API_KEY,
        "VIDEOBATCH_LEDGER_URL": "",
    }
    with log.open("wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", name, "--limit", "4"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield f"generate-videos/{name}"
    finally:
        # A worker needs two SIGINTs to stop; then it is ended by its own id if still alive.
        for _ in range(2):
            if worker.poll() is None:
                worker.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(10)
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


async def member_runs(out: Path) -> list[Any]:
    """The member runs into `out` the server has, oldest first."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = await client.read_flow_runs()
    return sorted(
        (
            r
            for r in runs
            if SHARD_TAG in r.tags and r.parameters.get("options", {}).get("out") == str(out)
        ),
        key=lambda r: r.created or 0,
    )


async def test_members_share_one_folder_and_the_parent_writes_the_results(
    make_sandbox: Any, tmp_path: Path, shard_deployment: str
) -> None:
    """Two members on one folder: every row completed with exactly one task, results in order
    written by the parent, members tagged and told to share the folder's ledger."""
    sb = make_sandbox()
    rows = [{"id": f"r{i}", "prompt": f"member clip {i}", "duration": 4} for i in range(8)]
    manifest = write_manifest(tmp_path / "big.csv", rows)
    out = tmp_path / "out"
    options = fast_options(manifest, out, sb.url, concurrency=2, lease_seconds=10)
    summary = await generate_sharded(
        options=options, shards=2, deployment=shard_deployment, dead_after=DEAD_AFTER
    )
    ended = [(m.state_name, m.state.message) for m in await member_runs(out)]
    assert summary["shards"] == {"shard-0": "Completed", "shard-1": "Completed"}, ended
    created = sb.state.counters.snapshot()["tasks_created_by_prompt"]
    assert created == {f"member clip {i}": 1 for i in range(8)}
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["id"] for r in table] == [f"r{i}" for i in range(8)]
    assert [r["status"] for r in table] == ["completed"] * 8
    members = await member_runs(out)
    assert len(members) == 2
    assert {m.parameters["share_batch"] for m in members} == {"folder"}
    assert all(m.parameters["options"]["report"] is False for m in members)
    assert not (out / "shards.json").exists() and not (out / "shards").exists()


async def test_a_killed_member_is_crashed_and_replaced_and_the_replacement_never_resends(
    make_sandbox: Any, tmp_path: Path, shard_deployment: str
) -> None:
    """resubmit_unknown reaches the first member only; the member killed mid-run ends Crashed
    (by its worker, or by its silent heartbeat), and its replacement finishes the batch
    without resending."""
    from apimart.sandbox import FaultRule, Faults

    sb = make_sandbox(
        Faults(submit_drop_after_create=FaultRule(rate=1.0, prompt_contains="doubtful"))
    )
    rows = [
        {"id": "doubt", "prompt": "doubtful resend clip", "duration": 4},
        {"id": "slow", "prompt": "slow resend clip", "duration": 4},
    ]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    first = fast_options(manifest, out, sb.url, poll_timeout=0.01, poll_initial_delay=0.0)
    await generate_videos(options=first)  # a plain run: `doubt` unknown, `slow` timed out
    assert sb.state.counters.snapshot()["tasks_created_by_prompt"] == {
        "doubtful resend clip": 1,
        "slow resend clip": 1,
    }

    # The person's decision: resend `doubt` once. Its resend drops again (still unknown),
    # and `slow` is held at processing so the first member stays alive.
    sb.config.faults.hold_tasks = True
    options = fast_options(manifest, out, sb.url, resubmit_unknown=True, lease_seconds=10)
    run = asyncio.create_task(
        generate_sharded(
            options=options, shards=1, deployment=shard_deployment, dead_after=DEAD_AFTER
        )
    )
    deadline = time.monotonic() + 180
    while sb.state.counters.snapshot()["tasks_created_by_prompt"]["doubtful resend clip"] < 2:
        assert not run.done(), run
        assert time.monotonic() < deadline, "the first member never resent the row"
        await asyncio.sleep(0.1)
    with Ledger(out, readonly=True) as ledger:
        assert len(ledger.members()) == 1  # the member beats
    holder = (out / LOCK_FILE).read_text()
    assert holder.startswith("member of a shared batch: pid "), holder
    os.kill(int(holder.split("pid ")[1].split()[0]), signal.SIGKILL)  # its worker's run dies
    sb.config.faults.hold_tasks = False

    summary = await asyncio.wait_for(run, timeout=300)
    assert summary["shards"] == {"shard-0": "Completed"}
    assert len(summary["runs"]["shard-0"]) == 2
    created = sb.state.counters.snapshot()["tasks_created_by_prompt"]
    assert created == {"doubtful resend clip": 2, "slow resend clip": 1}
    members = await member_runs(out)
    assert [m.parameters["options"]["resubmit_unknown"] for m in members] == [True, False]
    assert [m.state_name for m in members] == ["Crashed", "Completed"]
