"""The client's connection pool alone: client CPU per request for pools of different sizes.

`--workers` loops each query the sandbox (in its own process) for one task, then wait a random
0 to `--gap` seconds (as rows between polls do, so some connections sit idle), until
`--requests` queries are made. Each pool runs in turn, `--repeat` times; the CPU is this
process's only. Requests that fail (a kept-alive connection the server closed just as it
was reused) are counted, not retried. `AsyncAPIMartClient` is measured as built
(`--client`, its own pool: the `max_connections` it is given, all kept alive).

    uv run python bench/pool.py --requests 6000 --client old 200 --pools 100/20 200/200/4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import API_KEY, cpu_seconds, sandbox_process

from apimart import spec
from apimart.client import AsyncAPIMartClient
from apimart.models import VideoRequest

POOL_WORK: dict[str, float] = {"assign_cpu_s": 0.0, "assigns": 0, "expiry_checks": 0, "connects": 0}


def count_pool_work() -> None:
    """Count, in this process, what httpcore's pool does: its assignment passes (and their
    thread CPU), the per-connection expiry checks they make (each polls an idle socket), and
    the connections it opens. Counts do not depend on the machine's load; CPU does."""
    from httpcore._async import connection, connection_pool

    pool = connection_pool.AsyncConnectionPool
    assign = pool._assign_requests_to_connections

    def counted_assign(self: Any) -> Any:
        started = time.thread_time()
        try:
            return assign(self)
        finally:
            POOL_WORK["assign_cpu_s"] += time.thread_time() - started
            POOL_WORK["assigns"] += 1

    expired = connection.AsyncHTTPConnection.has_expired

    def counted_expired(self: Any) -> bool:
        POOL_WORK["expiry_checks"] += 1
        return expired(self)

    connect = connection.AsyncHTTPConnection._connect

    async def counted_connect(self: Any, request: Any) -> Any:
        POOL_WORK["connects"] += 1
        return await connect(self, request)

    pool._assign_requests_to_connections = counted_assign  # type: ignore[method-assign]
    connection.AsyncHTTPConnection.has_expired = counted_expired  # type: ignore[method-assign]
    connection.AsyncHTTPConnection._connect = counted_connect  # type: ignore[method-assign]


def pool_work(requests: int) -> dict[str, float]:
    """What the pool did per request since the last call, and reset."""
    out = {f"{k}_per_request": round(v / requests, 4 if k == "assign_cpu_s" else 2)
           for k, v in POOL_WORK.items()}  # fmt: skip
    out["assign_cpu_ms_per_request"] = round(1000 * POOL_WORK["assign_cpu_s"] / requests, 3)
    del out["assign_cpu_s_per_request"]
    for k in POOL_WORK:
        POOL_WORK[k] = 0
    return out


async def _load(
    query: Any, workers: int, requests: int, gap: float, seed: int
) -> tuple[float, float, int]:
    """(CPU s, wall s, failures) of `requests` calls of `query()` from `workers` loops."""
    rng = random.Random(seed)
    left = [requests]
    failures = [0]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            try:
                await query()
            except httpx.HTTPError:
                failures[0] += 1
            except Exception:  # the client's own error tree (a retried failure)
                failures[0] += 1
            await asyncio.sleep(rng.uniform(0, gap))

    cpu, started = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return cpu_seconds() - cpu, time.perf_counter() - started, failures[0]


async def with_httpx(url: str, task_id: str, text: str, args: Any) -> dict[str, Any]:
    most, alive, *expiry = (int(part) for part in text.split("/"))
    limits = httpx.Limits(max_connections=most, max_keepalive_connections=alive,
                          keepalive_expiry=expiry[0] if expiry else 5.0)  # fmt: skip
    headers = {"Authorization": f"Bearer {API_KEY}"}
    path = spec.TASK_PATH.format(task_id=task_id)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http:

        async def query() -> None:
            (await http.get(path)).raise_for_status()

        cpu, wall, failed = await _load(query, args.workers, args.requests, args.gap, args.seed)
    return {"pool": f"httpx {text}", "cpu_s": round(cpu, 2), "wall_s": round(wall, 1),
            "cpu_ms_per_request": round(1000 * cpu / args.requests, 3), "failed": failed,
            **pool_work(args.requests)}  # fmt: skip


async def with_client(url: str, task_id: str, text: str, args: Any) -> dict[str, Any]:
    options = {} if text in ("default", "old") else {"max_connections": int(text)}
    async with AsyncAPIMartClient(base_url=url, api_key=API_KEY, **options) as client:
        if text == "old":
            # The client as it was built before it chose its pool: httpx's default.
            await client._http.aclose()
            client._http = httpx.AsyncClient(follow_redirects=False)

        async def query() -> None:
            await client.get_task(task_id)

        cpu, wall, failed = await _load(query, args.workers, args.requests, args.gap, args.seed)
    name = f"client {text}" if text in ("default", "old") else f"client max_connections={text}"
    return {"pool": name, "cpu_s": round(cpu, 2), "wall_s": round(wall, 1),
            "cpu_ms_per_request": round(1000 * cpu / args.requests, 3), "failed": failed,
            **pool_work(args.requests)}  # fmt: skip


async def _task_id(url: str) -> str:
    async with AsyncAPIMartClient(base_url=url, api_key=API_KEY) as client:
        request = VideoRequest.build(prompt="pool benchmark")
        return (await client.submit(request, idempotency_key="pool-bench")).task_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--gap", type=float, default=0.5, help="most seconds between queries")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pools", nargs="*", default=[], metavar="MOST/ALIVE[/EXPIRY_S]")
    parser.add_argument(
        "--client",
        nargs="*",
        default=[],
        help="AsyncAPIMartClient with these max_connections ('default': its own; 'old': "
        "httpx's default pool, as the client was built before)",
    )
    args = parser.parse_args()
    count_pool_work()
    with sandbox_process(time_scale=0.01) as sandbox:
        task_id = asyncio.run(_task_id(sandbox.url))
        pool_work(1)
        for _ in range(args.repeat):
            for text in args.pools:
                result = asyncio.run(with_httpx(sandbox.url, task_id, text, args))
                print(json.dumps(result), flush=True)
            for text in args.client:
                result = asyncio.run(with_client(sandbox.url, task_id, text, args))
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
