"""Benchmark: N rows through the real `generate-videos` flow against the sandbox.

Reports numbers, asserts nothing. Run against a tuned local server for realistic Prefect costs:

    uv run videobatch server &                       # or any PREFECT_API_URL
    PREFECT_API_URL=http://127.0.0.1:4200/api uv run python bench/pipeline.py --rows 500

Without PREFECT_API_URL a temporary server is started (slower to start, same flow).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_manifest  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--time-scale", type=float, default=0.002)
    args = parser.parse_args()

    from apimart import retry
    from apimart.sandbox import SandboxConfig, run_in_thread
    from flows.generate import generate_videos
    from tasks.run.options import RunOptions

    retry.set_waits(False)
    work = Path(tempfile.mkdtemp(prefix="vb-bench-"))
    manifest = work / "bench.csv"
    write_manifest(manifest, args.rows)
    config = SandboxConfig(api_key="sk-bench", time_scale=args.time_scale)
    with run_in_thread(config) as sandbox:
        os.environ["APIMART_API_KEY"] = config.api_key
        options = RunOptions(
            manifest=str(manifest),
            out=str(work / "out"),
            base_url=sandbox.url,
            concurrency=args.concurrency,
            submit_rate=1000,
            poll_initial_delay=0.2,
            poll_interval=0.2,
            max_queries_per_s=1000,
            report=False,
        )
        started = time.perf_counter()
        outcome = await generate_videos(options=options)
        first = time.perf_counter() - started
        counters = sandbox.state.counters.snapshot()
        started = time.perf_counter()
        await generate_videos(options=options)
        rerun = time.perf_counter() - started
        after = sandbox.state.counters.snapshot()
    print(
        json.dumps(
            {
                "rows": args.rows,
                "concurrency": args.concurrency,
                "completed": outcome["completed"],
                "wall_s": round(first, 2),
                "rows_per_s": round(args.rows / first, 2),
                "tasks_created": counters["tasks_created"],
                "queries": sum(counters["queries_by_task"].values()),
                "rerun_wall_s": round(rerun, 2),
                "rerun_api_calls": after["submit_requests"]
                - counters["submit_requests"]
                + sum(after["queries_by_task"].values())
                - sum(counters["queries_by_task"].values()),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
