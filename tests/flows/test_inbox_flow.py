"""The `inbox` flow in-process: real Prefect API (its global concurrency limit included) and the
sandbox. Filing by outcome, a partly finished manifest left for the next tick, a busy folder
left alone, and a tick that finds the limit taken."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from flowkit import fast_options, write_manifest

from flows.inbox import inbox
from tasks.inbox import INBOX_LIMIT
from tasks.ledger import FolderLock

MakeSandbox = Any

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


@pytest.fixture(autouse=True)
async def inbox_limit() -> None:
    """What `videobatch deploy` creates: the global limit of one inbox run at a time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=INBOX_LIMIT, limit=1)
            )


def drop(box: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    box.mkdir(parents=True, exist_ok=True)
    path = write_manifest(box / name, rows)
    settled = time.time() - 60
    os.utime(path, (settled, settled))
    return path


def rows(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i}", "prompt": f"{prefix} inbox clip {i}", "duration": 4}
        for i in range(n)
    ]


async def test_good_bad_and_unfinished_manifests(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sb = make_sandbox()
    box, out = tmp_path / "inbox", tmp_path / "out"
    drop(box, "good.csv", rows("good", 3))
    (box / "empty.csv").write_text("", encoding="utf-8")
    os.utime(box / "empty.csv", (time.time() - 60, time.time() - 60))
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
    drop(box, "slow.csv", rows("slow", 2))
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
    sb = make_sandbox()
    box, out = tmp_path / "inbox", tmp_path / "out"
    drop(box, "busy.csv", rows("busy", 1))
    with FolderLock(out / "busy"):  # a `videobatch run` of the same manifest, say
        outcome = await inbox(
            inbox_dir=str(box),
            out_root=str(out),
            defaults=fast_options(Path("-"), Path("-"), sb.url),
        )
    assert outcome["manifests"] == {"busy.csv": "busy"}
    assert (box / "busy.csv").is_file()


async def test_a_tick_that_finds_the_limit_taken_leaves_the_inbox_alone(tmp_path: Path) -> None:
    from prefect.concurrency.asyncio import concurrency

    box = tmp_path / "inbox"
    drop(box, "waiting.csv", rows("waiting", 1))
    async with concurrency(INBOX_LIMIT, occupy=1, strict=True):  # another inbox run
        outcome = await inbox(inbox_dir=str(box), out_root=str(tmp_path / "out"))
    assert outcome == {"skipped": True, "manifests": {}}
    assert (box / "waiting.csv").is_file()
