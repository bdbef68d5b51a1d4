"""A sharded output folder: each shard a real generate-videos run; then status and results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from flowkit import fast_options, write_manifest

from flows.generate import generate_videos
from tasks.run.shards import plan_shards
from videobatch import console

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


async def test_status_and_results_read_every_shard(
    make_sandbox: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` and a results rebuild of a sharded folder read every shard, in manifest order."""
    sb = make_sandbox()
    rows = [{"id": f"s{i}", "prompt": f"shard row {i}", "duration": 4} for i in range(6)]
    rows.insert(2, {"id": "bad", "prompt": "five seconds", "duration": 5})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    plan = plan_shards(fast_options(manifest, out, sb.url), 3)
    for shard in plan.shards:
        await generate_videos(options=shard)

    assert console.status(out) == 0
    printed = capsys.readouterr().out
    assert "downloaded" in printed and "6" in printed

    assert console.rebuild_results(out, None) == 0
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["id"] for r in table] == ["s0", "s1", "bad", "s2", "s3", "s4", "s5"]
    assert [r["status"] for r in table].count("completed") == 6
    assert next(r for r in table if r["id"] == "bad")["status"] == "invalid"
    for row in table:
        if row["video_path"]:
            assert (out / row["video_path"]).is_file()
    assert sb.state.counters.snapshot()["tasks_created"] == 6
