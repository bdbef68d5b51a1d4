"""The `inbox` flow in-process: real Prefect API (its global concurrency limit included) and the
sandbox. Filing by outcome, a partly finished manifest left for the next tick, a busy folder
left alone, and a tick that finds the limit taken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from flowkit import drop, fast_options, inbox_rows, settle

from flows.inbox import inbox
from tasks.run.inbox import INBOX_LIMIT
from tasks.store.ledger import FolderLock

MakeSandbox = Any

pytestmark = [pytest.mark.usefixtures("prefect_api", "inbox_limit"), pytest.mark.slow]


async def test_good_bad_and_unfinished_manifests(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    """Good manifests run and are filed done, broken ones rejected, unfinished ones resumed."""
    sb = make_sandbox()
    box, out = tmp_path / "inbox", tmp_path / "out"
    drop(box, "good.csv", inbox_rows("good", 3))
    (box / "empty.csv").write_text("", encoding="utf-8")
    settle(box / "empty.csv")
    defaults = fast_options(Path("-"), Path("-"), sb.url)

    outcome = await inbox(inbox_dir=str(box), out_root=str(out), defaults=defaults)
    assert outcome == {"skipped": False, "manifests": {"good.csv": "done", "empty.csv": "rejected"}}
    assert (box / "done" / "good.csv").is_file()
    assert "empty" in (box / "rejected" / "empty.csv.error.txt").read_text()
    assert (
        pq.read_table(out / "good" / "results.parquet").column("status").to_pylist()
        == ["completed"] * 3
    )

    # Polling gives up at once: the rows are `timeout`, so the manifest waits for the next tick,
    # which resumes it (polls the same tasks) and files it. Nothing is paid twice.
    drop(box, "slow.csv", inbox_rows("slow", 2))
    impatient = defaults.model_copy(update={"poll_timeout": 0.01, "poll_initial_delay": 0.0})
    first = await inbox(inbox_dir=str(box), out_root=str(out), defaults=impatient)
    assert first["manifests"] == {"slow.csv": "in_progress"}
    assert (box / "slow.csv").is_file()
    second = await inbox(inbox_dir=str(box), out_root=str(out), defaults=defaults)
    assert second["manifests"] == {"slow.csv": "done"}
    created = sb.state.counters.snapshot()["tasks_created_by_prompt"]
    assert [created[f"slow inbox clip {i}"] for i in range(2)] == [1, 1]


async def test_a_folder_in_use_is_left_for_the_next_tick(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """A manifest whose output folder another run holds is left in the inbox as busy."""
    sb = make_sandbox()
    box, out = tmp_path / "inbox", tmp_path / "out"
    drop(box, "busy.csv", inbox_rows("busy", 1))
    with FolderLock(out / "busy"):  # a `videobatch run` of the same manifest, say
        outcome = await inbox(
            inbox_dir=str(box),
            out_root=str(out),
            defaults=fast_options(Path("-"), Path("-"), sb.url),
        )
    assert outcome["manifests"] == {"busy.csv": "busy"}
    assert (box / "busy.csv").is_file()


async def test_a_tick_that_finds_the_limit_taken_leaves_the_inbox_alone(tmp_path: Path) -> None:
    """A tick that finds the inbox's concurrency limit taken touches nothing."""
    from prefect.concurrency.asyncio import concurrency

    box = tmp_path / "inbox"
    drop(box, "waiting.csv", inbox_rows("waiting", 1))
    async with concurrency(INBOX_LIMIT, occupy=1, strict=True):  # another inbox run
        outcome = await inbox(inbox_dir=str(box), out_root=str(tmp_path / "out"))
    assert outcome == {"skipped": True, "manifests": {}}
    assert (box / "waiting.csv").is_file()
