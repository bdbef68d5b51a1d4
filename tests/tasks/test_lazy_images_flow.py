"""A whole run (the `generate-videos` flow on a real Prefect API) whose local image changes
between the manifest check and its row's turn to be sent: that row is refused, the rest runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from support.manifests import write_manifest
from support.runs import fast_options

from apimart import retry
from apimart.sandbox import Faults, RunningSandbox, SandboxConfig, run_in_thread
from flows.generate import generate_videos

pytestmark = pytest.mark.usefixtures("prefect_api")

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "data" / "manifests" / "images"
KEY = "sk-lazy-images-flow-canary-93ad"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    with retry.no_waits():
        yield


async def _first_task_created(sb: RunningSandbox, timeout: float = 60) -> str:
    """The prompt of the first task the sandbox created (waited for, never guessed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        created = sb.state.stats()["tasks_created_by_prompt"]
        if created:
            (prompt,) = created
            return str(prompt)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no task created within {timeout} s")


async def test_a_run_refuses_a_row_whose_image_changed_and_completes_the_others(
    tmp_path: Path,
) -> None:
    """Image changed mid-run: that row not_submitted (row, file, rule named), others complete."""
    for name in ("sunrise.png", "logo.png"):
        (tmp_path / name).write_bytes((IMAGES / name).read_bytes())
    rows: list[dict[str, Any]] = [
        {"id": "sun", "prompt": "clip of the sun", "duration": 4, "image_urls": "sunrise.png"},
        {"id": "logo", "prompt": "clip of the logo", "duration": 4, "image_urls": "logo.png"},
    ]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    # One job at a time, and the first held at `processing`: the second row is sent only once
    # the first has ended, so its file can change after the run checked it and before its turn.
    config = SandboxConfig(api_key=KEY, time_scale=0.004, faults=Faults(hold_tasks=True))
    with run_in_thread(config) as sb:
        run = asyncio.create_task(
            generate_videos(options=fast_options(manifest, out, sb.url, concurrency=1))
        )
        first = await _first_task_created(sb)
        sent, held_back = (rows[0], rows[1]) if first == rows[0]["prompt"] else (rows[1], rows[0])
        changed = tmp_path / held_back["image_urls"]
        changed.write_bytes((IMAGES / "palette.png").read_bytes())
        sb.config.faults.hold_tasks = False
        outcome = await asyncio.wait_for(run, timeout=120)
        stats = sb.state.stats()

    table = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert table[sent["id"]]["status"] == "completed", table[sent["id"]]
    refused = table[held_back["id"]]
    assert refused["status"] == "not_submitted", refused
    assert refused["error_code"] == "image_changed"
    assert f"(id {held_back['id']!r})" in refused["error_message"]
    assert str(changed) in refused["error_message"]
    assert "the image changed after the manifest was checked" in refused["error_message"]
    assert refused["task_id"] is None and not refused["cost"]
    assert stats["tasks_created_by_prompt"] == {sent["prompt"]: 1}
    assert stats["submit_requests"] == 1
    assert outcome["completed"] == 1
