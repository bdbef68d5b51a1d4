"""What the per-row cuts of 2 December 2026 save, measured apart from a run (CPU, not wall).

* the ledger reads of the progress artifact (`Ledger.spent`) and of the command line's bar
  (`Ledger.counts`) on a ledger of `--rows` rows (filled with one transaction), as CPU per
  minute of a run at the old and new intervals;
* the event loop's time blocked in `replace_durably` (rename + directory fsync) per video,
  on the loop (before) and through `asyncio.to_thread` (after);
* the INFO records the poll step writes for `--rows` completions, before and after.

    uv run python bench/perf_cuts.py --rows 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.store.atomic import replace_durably
from tasks.store.ledger import Ledger


def filled_ledger(folder: Path, rows: int) -> None:
    with Ledger(folder) as ledger:
        ledger.ensure("seed", 0)
    db = sqlite3.connect(folder / "ledger.sqlite")
    with db:
        db.executemany(
            "INSERT INTO rows (row_id, idx, state, attempt, polls, updated_at, cost) "
            "VALUES (?, ?, 'downloaded', 1, 3, 0, 0.5)",
            ((f"b{i:06d}", i + 1) for i in range(rows)),
        )
    db.close()


def cpu_per_call(call: object, times: int = 20) -> float:
    started = time.thread_time()
    for _ in range(times):
        call()  # type: ignore[operator]
    return (time.thread_time() - started) / times


async def blocked_on_loop(folder: Path, videos: int, threaded: bool) -> float:
    """The loop thread's CPU per video while renaming `videos` files durably."""
    sources = []
    for i in range(videos):
        path = folder / f".v{i}.mp4.verifying"
        path.write_bytes(b"x" * 1024)
        sources.append(path)
    started = time.thread_time()
    wall = time.perf_counter()
    for i, source in enumerate(sources):
        if threaded:
            await asyncio.to_thread(replace_durably, source, folder / f"v{i}.mp4")
        else:
            replace_durably(source, folder / f"v{i}.mp4")
    cpu = (time.thread_time() - started) / videos
    wall_each = (time.perf_counter() - wall) / videos
    for i in range(videos):
        (folder / f"v{i}.mp4").unlink()
    return cpu if threaded else max(cpu, wall_each)  # on the loop, the fsync's wait blocks too


def info_records(rows: int, one_line_each: int = 100, batch: int = 50) -> int:
    """INFO lines for `rows` completions with many in flight (before: one each)."""
    later = max(0, rows - one_line_each)
    return min(rows, one_line_each) + math.ceil(later / batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--videos", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vb-cuts-") as tmp:
        folder = Path(tmp)
        filled_ledger(folder, args.rows)
        with Ledger(folder, readonly=True) as ledger:
            spent = cpu_per_call(ledger.spent)
            counts = cpu_per_call(ledger.counts)
        videos = folder / "videos"
        videos.mkdir()
        on_loop = asyncio.run(blocked_on_loop(videos, args.videos, threaded=False))
        threaded = asyncio.run(blocked_on_loop(videos, args.videos, threaded=True))
    print(json.dumps({
        "rows": args.rows,
        "spent_ms_per_call": round(1000 * spent, 2),
        "spent_cpu_s_per_min_before (every 2 s)": round(30 * spent, 3),
        "spent_cpu_s_per_min_after (every 30 s)": round(2 * spent, 3),
        "counts_ms_per_call": round(1000 * counts, 2),
        "bar_counts_cpu_s_per_min_before (every 0.5 s)": round(120 * counts, 3),
        "bar_counts_cpu_s_per_min_after (every 2 s)": round(30 * counts, 3),
        "loop_ms_per_video_rename_before (on the loop)": round(1000 * on_loop, 3),
        "loop_ms_per_video_rename_after (to_thread)": round(1000 * threaded, 3),
        "info_records_before": args.rows,
        "info_records_after": info_records(args.rows),
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
