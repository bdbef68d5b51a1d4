"""The inbox flow's guards, through real flow runs against a real Prefect API and the sandbox:
no resends from scheduled defaults, a dry run that runs and files nothing, sharded output
folders left alone, and a manifest that changed while it ran kept for the next tick."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from flowkit import drop, fast_options, inbox_rows, settle, write_manifest

from flows.inbox import InboxErrors, inbox
from tasks.run.inbox import InboxRefused

MakeSandbox = Any

pytestmark = [pytest.mark.usefixtures("prefect_api", "inbox_limit"), pytest.mark.slow]


@pytest.mark.parametrize("flag", ["resubmit_unknown", "retry_failed"])
async def test_resends_in_defaults_are_refused(
    make_sandbox: MakeSandbox, tmp_path: Path, flag: str
) -> None:
    """Defaults asking for a resend fail the tick with the person's command; nothing is sent."""
    sb = make_sandbox()
    box, out = tmp_path / "inbox", tmp_path / "out"
    drop(box, "again.csv", inbox_rows("again", 2))
    defaults = fast_options(Path("-"), Path("-"), sb.url, **{flag: True})
    with pytest.raises(InboxRefused) as err:
        await inbox(inbox_dir=str(box), out_root=str(out), defaults=defaults)
    text = str(err.value)
    assert flag in text and "person's decision" in text
    assert "videobatch run MANIFEST --out OUT --resubmit-unknown" in text
    assert (box / "again.csv").is_file() and not out.exists()
    assert sb.state.counters.snapshot()["submit_requests"] == 0


async def test_dry_run_runs_nothing_and_files_nothing(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """With defaults.dry_run every manifest stays where it is and no request is made."""
    sb = make_sandbox()
    box, out = tmp_path / "inbox", tmp_path / "out"
    drop(box, "plan.csv", inbox_rows("plan", 3))
    (box / "broken.csv").write_text("", encoding="utf-8")
    settle(box / "broken.csv")
    defaults = fast_options(Path("-"), Path("-"), sb.url, dry_run=True)
    outcome = await inbox(inbox_dir=str(box), out_root=str(out), defaults=defaults)
    assert outcome == {
        "skipped": False,
        "dry_run": True,
        "manifests": {"plan.csv": "dry_run", "broken.csv": "unreadable"},
    }
    assert (box / "plan.csv").is_file() and (box / "broken.csv").is_file()
    assert not (box / "done").exists() and not (box / "rejected").exists()
    assert not out.exists()
    counters = sb.state.counters.snapshot()
    assert counters["submit_requests"] == 0 and counters["queries_by_task"] == {}


async def test_a_sharded_output_folder_is_an_error_and_left(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """A manifest whose output folder holds a sharded run is not run and stays in the inbox."""
    sb = make_sandbox()
    box, out = tmp_path / "inbox", tmp_path / "out"
    drop(box, "big.csv", inbox_rows("big", 2))
    (out / "big" / "shards").mkdir(parents=True)
    (out / "big" / "shards.json").write_text("{}", encoding="utf-8")
    defaults = fast_options(Path("-"), Path("-"), sb.url)
    with pytest.raises(InboxErrors, match=r"big\.csv"):
        await inbox(inbox_dir=str(box), out_root=str(out), defaults=defaults)
    assert (box / "big.csv").is_file()
    assert not (box / "done").exists() and not (box / "rejected").exists()
    assert not (out / "big" / "ledger.sqlite").exists()
    assert sb.state.counters.snapshot()["submit_requests"] == 0


async def test_a_manifest_changed_mid_run_stays_for_the_next_tick(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """A row appended while the run works keeps the file in the inbox; the next tick runs it."""
    sb = make_sandbox()
    box, out = tmp_path / "inbox", tmp_path / "out"
    first = inbox_rows("grow", 2)
    manifest = drop(box, "grow.csv", first)
    defaults = fast_options(Path("-"), Path("-"), sb.url)
    sb.config.faults.hold_tasks = True
    tick = asyncio.create_task(inbox(inbox_dir=str(box), out_root=str(out), defaults=defaults))
    try:
        deadline = time.monotonic() + 120
        while sb.state.counters.snapshot()["tasks_created"] < 2:
            assert not tick.done(), tick
            assert time.monotonic() < deadline, "the run never submitted its rows"
            await asyncio.sleep(0.05)
        # The run is held at `processing`: append a third row, as a person might.
        write_manifest(manifest, [*first, *inbox_rows("late", 1)])
    finally:
        sb.config.faults.hold_tasks = False
    outcome = await asyncio.wait_for(tick, timeout=120)
    assert outcome["manifests"] == {"grow.csv": "changed"}
    assert manifest.is_file() and not (box / "done").exists()
    created = sb.state.counters.snapshot()["tasks_created_by_prompt"]
    assert "late inbox clip 0" not in created

    settle(manifest)
    second = await inbox(inbox_dir=str(box), out_root=str(out), defaults=defaults)
    assert second["manifests"] == {"grow.csv": "done"}
    assert (box / "done" / "grow.csv").is_file() and not manifest.exists()
    created = sb.state.counters.snapshot()["tasks_created_by_prompt"]
    assert created == {"grow inbox clip 0": 1, "grow inbox clip 1": 1, "late inbox clip 0": 1}
