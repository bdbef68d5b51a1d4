"""Operations, end to end: `videobatch deploy` on a real Prefect server, two process workers.

One module-wide stack (server, sandbox, deploy run twice, workers `worker-a` and `worker-b`):
a sharded run spread over both workers, a worker killed in the middle of a sharded run, and
the inbox filing a good and an unreadable manifest. The sandbox counts every task it creates
by prompt, which is how "paid exactly once per row" is checked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from opskit import Stack, prompt_of, submitted_by, wait_for, write_manifest

from tasks.run.shards import folder_holder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SHARDED = "generate-sharded/generate-sharded"
INBOX = "inbox/inbox"
ROWS = 40


def run_options(
    stack: Stack, manifest: Path | str, out: Path | str, **extra: Any
) -> dict[str, Any]:
    """Absolute paths (deployed runs work in the project folder) and fast polling."""
    return {
        "manifest": str(manifest),
        "out": str(out),
        "base_url": stack.sandbox.url,
        "poll_initial_delay": 0.5,
        "poll_interval": 0.5,
        "submit_rate": 50.0,
        "report": False,
        **extra,
    }


def wait_final(stack: Stack, run_id: str, timeout: float) -> str:
    return wait_for(
        lambda: stack.api.final_state(run_id),
        timeout=timeout,
        interval=1.0,
        what=f"flow run {run_id} to end",
        logs=stack.logs(),
    )


def shard_runs(stack: Stack, out: Path) -> list[dict[str, Any]]:
    return [
        r
        for r in stack.api.flow_runs(tag="videobatch-shard")
        if Path(r["parameters"]["options"]["out"]).parent.parent == out.resolve()
    ]


def created_per_row(stack: Stack, name: str, rows: int) -> list[int]:
    created = stack.sandbox.created_by_prompt()
    return [created.get(prompt_of(name, i), 0) for i in range(rows)]


def merged(out: Path) -> dict[str, list[Any]]:
    return pq.read_table(out / "results.parquet").to_pydict()


def test_sharded_run_spreads_over_both_workers(stack: Stack) -> None:
    """A sharded deployment run spreads its shards over both workers; one task per row."""
    manifest = write_manifest(stack.tmp / "big1.csv", "big1", ROWS)
    out = stack.tmp / "out" / "big1"
    started = time.monotonic()
    run_id = stack.api.run_deployment(
        SHARDED, {"options": run_options(stack, manifest, out), "shards": 4}
    )
    assert wait_final(stack, run_id, timeout=150) == "Completed"
    stack.timings["sharded_run"] = time.monotonic() - started

    shards = shard_runs(stack, out)
    assert sorted(r["state"]["name"] for r in shards) == ["Completed"] * 4
    shard_ids = {r["id"] for r in shards}
    by_worker = {name: submitted_by(proc.log) for name, proc in stack.workers.items()}
    assert shard_ids <= by_worker["worker-a"] | by_worker["worker-b"]
    assert shard_ids & by_worker["worker-a"], by_worker
    assert shard_ids & by_worker["worker-b"], by_worker

    # Exactly one task per row, and one merged table in manifest order.
    assert created_per_row(stack, "big1", ROWS) == [1] * ROWS
    table = merged(out)
    assert table["id"] == [f"big1-{i:03d}" for i in range(ROWS)]
    assert table["status"] == ["completed"] * ROWS
    assert table["campaign"] == [f"batch-{i % 3}" for i in range(ROWS)]
    assert all((out / path).is_file() for path in table["video_path"])
    assert {Path(p).parts[:2] for p in table["video_path"]} == {
        ("shards", f"shard-{k}") for k in range(4)
    }


def test_worker_killed_mid_run_then_rerun_pays_nothing_twice(stack: Stack) -> None:
    """A worker killed mid-shard, then a rerun: every row done once or held unknown."""
    manifest = write_manifest(stack.tmp / "big2.csv", "big2", ROWS)
    out = stack.tmp / "out" / "big2"
    # Two jobs in flight per shard: five waves of 2-3 s, so a shard lasts long enough to kill.
    params = {"options": run_options(stack, manifest, out, concurrency=2), "shards": 4}
    started = time.monotonic()
    first = stack.api.run_deployment(SHARDED, params)

    def midway(run: dict[str, Any]) -> bool:
        """A shard run holding its folder with some, not all, of its rows sent."""
        shard = run["parameters"]["options"]
        if not folder_holder(Path(shard["out"])):
            return False
        ids = pq.read_table(shard["manifest"], columns=["id"]).column("id").to_pylist()
        created = created_per_row(stack, "big2", ROWS)
        sent = sum(created[int(i.rsplit("-", 1)[1])] for i in ids)
        return 1 <= sent <= len(ids) - 2

    def victim() -> str | None:
        """The worker running the parent run, once one of its shards is half-way."""
        holders = [n for n, p in stack.workers.items() if first in submitted_by(p.log)]
        if not holders:
            return None
        taken = submitted_by(stack.workers[holders[0]].log)
        mine = [r for r in shard_runs(stack, out) if r["id"] in taken]
        return holders[0] if any(midway(r) for r in mine) else None

    name = wait_for(
        victim, timeout=150, interval=0.3, what="a worker in mid-shard", logs=stack.logs()
    )
    killed = stack.workers[name].kill_tree()  # the worker, the parent run and its shard runs
    assert len(killed) >= 3, killed
    sent_at_kill = sum(created_per_row(stack, "big2", ROWS))
    assert sent_at_kill < ROWS
    stack.start_worker(name)  # the machine comes back

    # The killed runs stay "Running" on the server forever; running the deployment again
    # still works: it waits for shards still alive on the other worker, resumes the others.
    second = stack.api.run_deployment(SHARDED, params)
    assert wait_final(stack, second, timeout=180) == "Completed"
    stack.timings["killed_and_rerun"] = time.monotonic() - started
    assert stack.api.state(first) == "Running"

    table = merged(out)
    assert table["id"] == [f"big2-{i:03d}" for i in range(ROWS)]
    created = created_per_row(stack, "big2", ROWS)
    for status, count in zip(table["status"], created, strict=True):
        # A row killed between "intent" and "task id" is `unknown`: held, never sent again.
        assert (status, count) == ("completed", 1) or (status == "unknown" and count <= 1)
    assert all(
        (out / p).is_file()
        for p, s in zip(table["video_path"], table["status"], strict=True)
        if s == "completed"
    )


def test_inbox_files_good_and_unreadable_manifests(stack: Stack) -> None:
    """Two inbox ticks at once never overlap; good manifests run and are filed, bad rejected."""
    inbox = stack.tmp / "inbox"
    inbox.mkdir()
    good = write_manifest(inbox / "good.csv", "inbox-good", 5)
    bad = inbox / "broken.csv"
    bad.write_text("title,notes\nhello,world\n", encoding="utf-8")
    settled = time.time() - 60  # dropped a minute ago: no longer being written
    for path in (good, bad):
        os.utime(path, (settled, settled))
    out_root = stack.tmp / "inbox-out"
    params = {
        "inbox_dir": str(inbox),
        "out_root": str(out_root),
        "defaults": run_options(stack, "-", "-"),
    }
    started = time.monotonic()
    # Two ticks at once: they never overlap.
    runs = [stack.api.run_deployment(INBOX, params) for _ in range(2)]
    states = sorted(wait_final(stack, r, timeout=120) for r in runs)
    stack.timings["inbox"] = time.monotonic() - started
    assert "Completed" in states and set(states) <= {"Completed", "Cancelled"}, states
    ran_good = [r for r in runs if any("running good.csv" in m for m in stack.api.logs(r))]
    assert len(ran_good) == 1

    assert not good.exists() and (inbox / "done" / "good.csv").is_file()
    assert not bad.exists() and (inbox / "rejected" / "broken.csv").is_file()
    note = (inbox / "rejected" / "broken.csv.error.txt").read_text(encoding="utf-8")
    assert "no 'prompt' column" in note
    results = merged(out_root / "good")
    assert results["status"] == ["completed"] * 5
    assert created_per_row(stack, "inbox-good", 5) == [1] * 5
    print(f"\nops timings (s): { {k: round(v, 1) for k, v in stack.timings.items()} }")
