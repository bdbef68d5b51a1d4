"""The `generate-sharded` flow for real: a real Prefect API, each shard a `generate-videos`
deployment run served by a Prefect runner in its own process, the sandbox over HTTP.

A plan that never changes under paid shards, a folder of the other layout refused, a dry run
that plans and sends nothing, and resends that a restarted shard never repeats."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
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
from flows.sharded import generate_sharded
from tasks.run.shards import PLAN_FILE, SHARD_MANIFEST, folder_holder, plan_shards, shard_folder
from tasks.store.layout import LayoutMismatch
from tasks.store.ledger import LEDGER_FILE
from videobatch import console

MakeSandbox = Any
ROOT = Path(__file__).resolve().parents[2]
PNG = (ROOT / "data" / "manifests" / "images" / "sunrise.png").read_bytes()

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


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


def manifest_with_image(tmp_path: Path) -> tuple[Path, Path]:
    """Seven rows; r0 references a local image next to the manifest."""
    image = tmp_path / "ref.png"
    image.write_bytes(PNG)
    rows = [
        {"id": f"r{i}", "prompt": f"sharded plan clip {i}", "duration": 4, "image_urls": ""}
        for i in range(7)
    ]
    rows[0]["image_urls"] = "ref.png"
    return write_manifest(tmp_path / "big.csv", rows), image


def stamps(out: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.parent.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted((out / "shards").glob(f"shard-*/{SHARD_MANIFEST}"))
    }


async def test_a_moved_image_never_changes_a_shard_or_pays_twice(
    make_sandbox: MakeSandbox,
    tmp_path: Path,
    shard_deployment: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The issue's scenario: image moved after shard-1 paid; no manifest rewritten, no repeat."""
    sb = make_sandbox()
    manifest, image = manifest_with_image(tmp_path)
    out = tmp_path / "out"
    options = fast_options(manifest, out, sb.url)
    plan = plan_shards(options, 2)
    assert plan.row_ids == (("r0", "r1", "r2"), ("r3", "r4", "r5", "r6"))
    await generate_videos(options=plan.shards[1])
    assert sb.state.counters.snapshot()["tasks_created"] == 4
    before = stamps(out)
    plan_bytes = (out / PLAN_FILE).read_bytes()

    image.rename(tmp_path / "moved.png")  # the manifest's own bytes do not change

    # Read-only commands write no plan and no shard manifest.
    assert console.status(out) in (0, 1)
    assert console.rebuild_results(out, None) in (0, 1)
    assert stamps(out) == before and (out / PLAN_FILE).read_bytes() == plan_bytes
    assert not (shard_folder(out, 0) / LEDGER_FILE).exists()
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["id"] for r in table] == [f"r{i}" for i in range(7)]
    assert next(r for r in table if r["id"] == "r0")["status"] == "not_submitted"
    capsys.readouterr()

    # A sharded rerun keeps the plan: shard-0 runs r0 (image inlined at planning), r1, r2.
    summary = await generate_sharded(
        options=options, shards=2, deployment=shard_deployment, dead_after=300
    )
    assert stamps(out) == before
    assert len(summary["stale"]) == 1
    assert "r0" in summary["stale"][0] and "shard-0" in summary["stale"][0]
    assert "image_urls" in summary["stale"][0]
    created = sb.state.counters.snapshot()["tasks_created_by_prompt"]
    assert created == {f"sharded plan clip {i}": 1 for i in range(7)}
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["status"] for r in table] == ["completed"] * 7
    assert table[0]["image_count"] == 1


def test_planning_is_all_or_nothing_and_never_moves_rows(tmp_path: Path) -> None:
    """A shard manifest that must be written but whose row is now invalid writes nothing."""
    manifest, image = manifest_with_image(tmp_path)
    out = tmp_path / "out"
    options = fast_options(manifest, out, "http://127.0.0.1:9")
    plan_shards(options, 2)
    (shard_folder(out, 0) / SHARD_MANIFEST).unlink()  # lost before any shard ran
    before = stamps(out)
    image.unlink()
    with pytest.raises(Exception, match=r"r0.*image_urls") as err:
        plan_shards(options, 2)
    assert "Nothing was written" in str(err.value)
    assert stamps(out) == before  # shard-1 untouched, shard-0 not re-split without r0


async def test_a_plain_folder_is_refused_before_planning(
    make_sandbox: MakeSandbox, tmp_path: Path, shard_deployment: str
) -> None:
    """A sharded run into a folder with a plain ledger plans nothing and sends nothing."""
    sb = make_sandbox()
    manifest, _ = manifest_with_image(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / LEDGER_FILE).write_bytes(b"")
    with pytest.raises(LayoutMismatch, match="plain run"):
        await generate_sharded(
            options=fast_options(manifest, out, sb.url), shards=2, deployment=shard_deployment
        )
    assert not (out / PLAN_FILE).exists() and not (out / "shards").exists()
    assert sb.state.counters.snapshot()["submit_requests"] == 0


async def test_dry_run_plans_nothing_and_sends_nothing(
    make_sandbox: MakeSandbox, tmp_path: Path, shard_deployment: str
) -> None:
    """options.dry_run validates and estimates: no plan, no shard, no request, an artifact."""
    from prefect.artifacts import Artifact

    from tasks.present.artifacts import artifact_key

    sb = make_sandbox()
    manifest, _ = manifest_with_image(tmp_path)
    out = tmp_path / "out"
    options = fast_options(manifest, out, sb.url, dry_run=True)
    summary = await generate_sharded(options=options, shards=2, deployment=shard_deployment)
    assert summary["dry_run"] is True and summary["valid"] == 7 and summary["shards"] == 2
    assert summary["estimated_cost"] > 0
    assert not out.exists()
    assert sb.state.counters.snapshot()["submit_requests"] == 0
    artifact = await Artifact.aget(f"{artifact_key(str(out))}-estimate")
    assert artifact is not None and "nothing was sent" in str(artifact.data)


async def test_a_restarted_shard_never_repeats_a_resend(
    make_sandbox: MakeSandbox, tmp_path: Path, shard_deployment: str
) -> None:
    """resubmit_unknown reaches a shard's first run only; the run started after a crash skips it."""
    from prefect.client.orchestration import get_client

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
    plan = plan_shards(first, 1)
    await generate_videos(options=plan.shards[0])  # `doubt` unknown, `slow` timed out
    assert sb.state.counters.snapshot()["tasks_created_by_prompt"] == {
        "doubtful resend clip": 1,
        "slow resend clip": 1,
    }

    # The person's decision: resend `doubt` once. Its resend drops again (still unknown),
    # and `slow` is held at processing so the shard's first run stays alive.
    sb.config.faults.hold_tasks = True
    options = fast_options(manifest, out, sb.url, resubmit_unknown=True)
    run = asyncio.create_task(
        generate_sharded(options=options, shards=1, deployment=shard_deployment, dead_after=45)
    )
    folder = shard_folder(out, 0)
    deadline = time.monotonic() + 180
    while (
        sb.state.counters.snapshot()["tasks_created_by_prompt"]["doubtful resend clip"] < 2
        or folder_holder(folder) is None
    ):
        assert not run.done(), run
        assert time.monotonic() < deadline, "the shard's first run never resent the row"
        await asyncio.sleep(0.1)
    holder = folder_holder(folder)
    assert holder is not None and holder.startswith("pid ")
    os.kill(int(holder.split()[1]), signal.SIGKILL)  # its worker dies mid-run
    sb.config.faults.hold_tasks = False

    summary = await asyncio.wait_for(run, timeout=300)
    assert summary["shards"] == {"shard-0": "Completed"}
    created = sb.state.counters.snapshot()["tasks_created_by_prompt"]
    assert created == {"doubtful resend clip": 2, "slow resend clip": 1}
    async with get_client() as client:
        runs = await client.read_flow_runs()
    shard_runs = sorted(
        (
            r
            for r in runs
            if r.deployment_id is not None
            and r.parameters.get("options", {}).get("out") == str(folder.resolve())
        ),
        key=lambda r: r.created or 0,
    )
    assert [r.parameters["options"]["resubmit_unknown"] for r in shard_runs] == [True, False]
    shutil.rmtree(out)
