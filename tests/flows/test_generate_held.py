"""Held rows in a real `generate-videos` flow run: a paid task whose row left the manifest
before its video was fetched is held and named, never dropped, and fetched once restored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from flowkit import fast_options, write_manifest

from flows.generate import generate_videos
from tasks.store.ledger import Ledger

MakeSandbox = Any

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def _statuses(out: Path) -> dict[str, str]:
    return {r["id"]: r["status"] for r in pq.read_table(out / "results.parquet").to_pylist()}


async def test_a_row_dropped_while_its_paid_task_runs_is_held_then_fetched_when_restored(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """A row whose paid task is still running when it leaves the manifest is held (not
    polled, named with the fix); restored, its task is polled and downloaded, never resent."""
    sb = make_sandbox()
    sb.config.faults.hold_tasks = True  # both tasks stay `processing`: polling gives up
    rows = [
        {"id": "stay", "prompt": "stay: a lantern on a jetty", "duration": 4},
        {"id": "leave", "prompt": "leave: a heron in reeds", "duration": 4},
    ]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    await generate_videos(options=fast_options(manifest, out, sb.url, poll_timeout=0.5))
    assert _statuses(out) == {"stay": "timeout", "leave": "timeout"}
    with Ledger(out, readonly=True) as ledger:
        leave_task = ledger.get("leave").task_id  # type: ignore[union-attr]
    sb.config.faults.hold_tasks = False

    write_manifest(manifest, rows[:1])
    queried = sb.state.counters.snapshot()["queries_by_task"].get(leave_task, 0)
    outcome = await generate_videos(options=fast_options(manifest, out, sb.url))

    (held,) = outcome["held"]
    assert held.startswith(f"leave: has task {leave_task}, timeout in this folder")
    assert "restore the row" in held
    assert _statuses(out) == {"stay": "completed"}
    snap = sb.state.counters.snapshot()
    assert snap["queries_by_task"].get(leave_task, 0) == queried, "a held row is not polled"

    write_manifest(manifest, rows)
    outcome = await generate_videos(options=fast_options(manifest, out, sb.url))
    assert outcome["held"] == []
    assert _statuses(out) == {"stay": "completed", "leave": "completed"}
    snap = sb.state.counters.snapshot()
    assert snap["tasks_created"] == 2 and snap["submit_requests"] == 2
