"""The floor: the same calls as a videobatch run, in plain asyncio + httpx, honestly minimal.

Per row: one POST, status GETs on a fixed interval until the task ends, one streamed download
to disk. No ledger, no retries, no verification, no Prefect: what any run must at least cost.
Prints wall time, client CPU and the calls made; asserts nothing.

    uv run python bench/floor.py --rows 2000 --concurrency 200 --interval 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import API_KEY, cpu_seconds, sandbox_process

from apimart import spec


async def one_row(
    http: httpx.AsyncClient, i: int, interval: float, out: Path, counts: dict[str, int]
) -> str:
    body = {"model": spec.MODEL, "prompt": f"benchmark clip {i}", "duration": 4}
    answer = await http.post(spec.SUBMIT_PATH, json=body)
    counts["posts"] += 1
    data = answer.json()["data"]
    task_id = data[0]["task_id"] if isinstance(data, list) else data["id"]
    while True:
        await asyncio.sleep(interval)
        task = (await http.get(spec.TASK_PATH.format(task_id=task_id))).json()["data"]
        counts["gets"] += 1
        if task["status"] in spec.TERMINAL_STATUSES:
            break
    if task["status"] != spec.STATUS_COMPLETED:
        return str(task["status"])
    url = task["result"]["videos"][0]["url"]
    url = url[0] if isinstance(url, list) else url
    async with http.stream("GET", url) as response:
        with (out / f"{i}.mp4").open("wb") as handle:
            async for chunk in response.aiter_bytes(1 << 16):
                handle.write(chunk)
    counts["downloads"] += 1
    return "completed"


def parse_pool(text: str) -> tuple[int, int]:
    """ "100/20" as (most connections, most kept alive)."""
    most, _, alive = text.partition("/")
    return int(most), int(alive or most)


async def floor(
    url: str,
    rows: int,
    concurrency: int,
    interval: float,
    *,
    httpx_default_limits: bool = False,
    pool: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The floor's numbers. `httpx_default_limits` uses httpx's own pool (100 connections, 20
    kept alive), as a client built without `limits=` gets, instead of one per slot; `pool`
    (most, kept alive) any other."""
    out = Path(tempfile.mkdtemp(prefix="vb-floor-"))
    counts = {"posts": 0, "gets": 0, "downloads": 0}
    slots = asyncio.Semaphore(concurrency)
    if pool is None:
        pool = (100, 20) if httpx_default_limits else (concurrency, concurrency)
    limits = httpx.Limits(max_connections=pool[0], max_keepalive_connections=pool[1])
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:

        async def bounded(i: int) -> str:
            async with slots:
                return await one_row(http, i, interval, out, counts)

        cpu, started = cpu_seconds(), time.perf_counter()
        outcomes = await asyncio.gather(*(bounded(i) for i in range(rows)))
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return {
        "rows": rows,
        "completed": outcomes.count("completed"),
        "wall_s": round(wall, 2),
        "client_cpu_s": round(cpu, 2),
        **counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.5, help="fixed poll interval, s")
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument(
        "--compare-limits",
        action="store_true",
        help="run twice in turn with httpx's default pool and with one connection per slot",
    )
    parser.add_argument(
        "--pools",
        nargs="+",
        metavar="MOST/ALIVE",
        help="run each pool (e.g. 100/20 100/100 200/200) in turn, twice: CPU per pool size",
    )
    args = parser.parse_args()
    with sandbox_process(time_scale=args.time_scale) as sandbox:
        if args.pools:
            pools = [parse_pool(p) for p in args.pools] * 2
        elif args.compare_limits:
            pools = [(args.concurrency, args.concurrency), (100, 20)] * 2
        else:
            pools = [(args.concurrency, args.concurrency)]
        for pool in pools:
            result = asyncio.run(
                floor(sandbox.url, args.rows, args.concurrency, args.interval, pool=pool)
            )
            result["pool"] = f"{pool[0]}/{pool[1]}"
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
