"""A large manifest makes few task runs: rows are grouped into chunk task runs."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from flowkit import API_KEY, fast_options, in_process_flow, in_process_sandbox, write_manifest
from test_engine_parameters import task_run_records

from apimart.sandbox import FaultRule, Faults
from tasks.steps.chunk import MAX_TASK_RUNS, rows_per_chunk

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

# Past MAX_TASK_RUNS, so rows are grouped (two a chunk), yet as few as that takes.
ROWS = 1_200
# These few go the whole way (render, download, decode); the rest end at the vendor as
# `failed`, which exercises the same submit and poll path without rendering 2,500 videos.
FULL = 10


async def test_a_1200_row_run_stays_within_the_task_run_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,200 rows take at most MAX_TASK_RUNS task runs, and every row gets exactly one task."""
    monkeypatch.setenv("APIMART_API_KEY", API_KEY)
    rows = [
        {
            "id": f"s{i:05d}",
            "prompt": f"{'whole' if i < FULL else 'quick'} clip {i}",
            "duration": 4,
        }
        for i in range(ROWS)
    ]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    sandbox = in_process_sandbox(Faults(task_fail=FaultRule(rate=1.0, prompt_contains="quick")))
    out = tmp_path / "out"
    options = fast_options(manifest, out, sandbox.url, concurrency=200, submit_rate=10_000)

    state = await in_process_flow(sandbox)(options=options, return_state=True)
    outcome = await state.result()  # type: ignore[misc]
    assert state.state_details.flow_run_id is not None

    chunks = -(-ROWS // rows_per_chunk(ROWS))
    assert chunks <= MAX_TASK_RUNS
    records = await task_run_records(state.state_details.flow_run_id, count=chunks, timeout=120)
    assert len(records) == chunks
    assert '"name":"rows 00001-00002"' in "".join(records)
    assert outcome["statuses"] == {"completed": FULL, "failed": ROWS - FULL}
    counters = sandbox.state.counters.snapshot()
    assert counters["tasks_created"] == ROWS
    assert set(counters["tasks_created_by_prompt"].values()) == {1}
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["id"] for r in table] == [r["id"] for r in rows]
    assert all(r["task_id"] for r in table)
