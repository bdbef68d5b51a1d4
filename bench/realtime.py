"""Real time: ~40 tasks on the sandbox at time scale 1, polled by the default adaptive schedule.

`bench/polling.py` simulates the scheduler on a virtual clock; this runs the real thing for
minutes: `videobatch run` (a fresh process, the default `--max-queries-per-s`, lag target and
3-5 minute prior, no fixed poll interval) against the sandbox in its own process at time scale
1, where a task takes about four minutes. It prints queries per completed video (the sandbox's
counters) and the detection lag per row: when the ledger noticed the task ended
(`terminal_at`) minus when the sandbox says it completed (`api_completed`), both on this
machine's clock. Asserts nothing; takes about six minutes.

    uv run python bench/realtime.py --rows 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import API_KEY, ROOT, sandbox_process, write_manifest

from tasks.store.ledger import Ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vb-realtime-"))
    manifest = write_manifest(work / "m.csv", args.rows)
    out = work / "out"
    with sandbox_process(time_scale=1.0) as sandbox:
        env = {**os.environ, "APIMART_API_KEY": API_KEY}
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "videobatch.cli",
                "run",
                str(manifest),
                "--out",
                str(out),
                "--base-url",
                sandbox.url,
                "--concurrency",
                str(args.rows),
                "--submit-rate",
                "20",
                "--no-report",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        stats = sandbox.stats()
    with Ledger(out, readonly=True) as ledger:
        records = list(ledger.all().values())
    lags = sorted(
        r.terminal_at - r.api_completed
        for r in records
        if r.terminal_at is not None and r.api_completed is not None
    )
    queries = sum(stats["queries_by_task"].values())
    generation = [
        r.api_completed - r.api_created
        for r in records
        if r.api_completed is not None and r.api_created is not None
    ]
    print(f"exit {done.returncode}, wall {wall:.0f} s, {len(lags)} of {args.rows} ended")
    if generation:
        print(f"task durations {min(generation):.0f}-{max(generation):.0f} s")
    if lags:
        p95 = lags[min(len(lags) - 1, round(0.95 * (len(lags) - 1)))]
        print(
            f"queries per video {queries / len(lags):.2f}; lag mean {statistics.mean(lags):.1f} s, "
            f"p95 {p95:.1f} s, max {lags[-1]:.1f} s"
        )
    if done.returncode not in (0, 1):
        print(done.stderr[-2000:])


if __name__ == "__main__":
    main()
