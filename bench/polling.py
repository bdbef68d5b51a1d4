"""Queries per video and detection lag of the poll scheduler: prints a table, asserts nothing.

uv run python bench/polling.py [--rows 1000] [--concurrency 100] [--seed 7]

Runs the real `PollScheduler` and `DurationModel` on `VirtualTimeLoop` (simulated time: hours
of polling in seconds, deterministic for a seed) against a simulated API: rows are submitted
at 2 per second (the default `--submit-rate`) with at most `--concurrency` in flight, a query
takes 0.3 s, and a task reports `completed` with its true `created`/`completed` once its
duration has passed. Detection lag = when the answer saying `completed` arrived minus when
the task completed.

Durations (seconds; all "3 to 5 minutes" as the vendor says, none of them uniform but one):
* skewed: 96 % 180 + 120 * Beta(2, 3.5) (mode ~208 s, mean ~224 s: most tasks end early in
  the window, a long thin right side), 4 % late 290 + Exp(mean 45 s) (a slow upstream);
* uniform: 180-300 s, where the theoretical optimum at 10 s mean lag is about 3.2 queries;
* bimodal: half N(200, 8), half N(280, 10) (two kinds of request);
* drift: the first half of the rows uniform 180-250 s, the second half 240-330 s.

Schedules: fixed 5, 8 (today's default) and 10 s intervals (rate cap lifted so they are what
they say); the adaptive one at the defaults (lag target 10 s, 4 queries/s) with learning off
("prior only"), and with learning, split into wave 1 (the first `concurrency` rows, planned
from the prior and learning as the wave finishes) and waves 2+ (learned); "restored" is a
second run that starts from the first run's model, stored and read back as JSON. Learning
counts the tasks still running as right-censored durations (see `tasks.run.duration`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from apimart.models import Task
from tasks.run.duration import DurationModel
from tasks.run.scheduler import FixedSchedule, PollScheduler, VirtualTimeLoop

EPOCH = 1_760_000_000.0
QUERY_LATENCY_S = 0.3
SUBMIT_RATE = 2.0
DEADLINE_S = 1800.0

Draw = Callable[[random.Random, int, int], float]


def skewed(rng: random.Random, index: int, rows: int) -> float:
    if rng.random() < 0.96:
        return 180.0 + 120.0 * rng.betavariate(2.0, 3.5)
    return 290.0 + rng.expovariate(1 / 45.0)


def uniform(rng: random.Random, index: int, rows: int) -> float:
    return rng.uniform(180.0, 300.0)


def bimodal(rng: random.Random, index: int, rows: int) -> float:
    if rng.random() < 0.5:
        return max(1.0, rng.gauss(200.0, 8.0))
    return max(1.0, rng.gauss(280.0, 10.0))


def drift(rng: random.Random, index: int, rows: int) -> float:
    return rng.uniform(180.0, 250.0) if index < rows // 2 else rng.uniform(240.0, 330.0)


DISTRIBUTIONS: dict[str, Draw] = {
    "skewed": skewed,
    "uniform": uniform,
    "bimodal": bimodal,
    "drift": drift,
}


@dataclass
class RowResult:
    index: int
    queries: int
    lag: float


@dataclass
class Outcome:
    rows: list[RowResult]
    model: DurationModel
    peak_rate: float


async def simulate(
    draw: Draw,
    *,
    rows: int,
    concurrency: int,
    seed: int,
    model: DurationModel | None,
    fixed: FixedSchedule | None,
    learn: bool,
    max_queries_per_s: float,
) -> Outcome:
    loop = asyncio.get_running_loop()
    start = loop.time()

    def wall() -> float:
        return EPOCH + loop.time()

    rng = random.Random(seed)
    durations = [draw(rng, i, rows) for i in range(rows)]
    created: dict[str, float] = {}
    query_times: list[float] = []

    async def query(task_id: str) -> Task:
        query_times.append(loop.time())
        await asyncio.sleep(QUERY_LATENCY_S)
        begun = created[task_id]
        seconds = durations[int(task_id)]
        if wall() - begun >= seconds:
            return Task(id=task_id, status="completed", created=begun, completed=begun + seconds)
        return Task(id=task_id, status="processing", created=begun)

    slots = asyncio.Semaphore(concurrency)
    next_submit = [start]
    results: list[RowResult] = []

    async with PollScheduler(
        query,
        model,
        fixed=fixed,
        learn=learn,
        max_queries_per_s=max_queries_per_s,
        wall=wall,
    ) as scheduler:

        async def row(index: int) -> None:
            async with slots:
                when = max(loop.time(), next_submit[0])
                next_submit[0] = when + 1 / SUBMIT_RATE
                await asyncio.sleep(when - loop.time())
                task_id = str(index)
                created[task_id] = wall()
                watch = scheduler.track(
                    task_id, submitted_at=wall(), deadline=loop.time() + DEADLINE_S
                )
                await watch
                assert watch.lag is not None
                results.append(RowResult(index, watch.sent, watch.lag))

        await asyncio.gather(*(row(i) for i in range(rows)))
        used = scheduler.model
    peak = _peak_rate(query_times)
    return Outcome(sorted(results, key=lambda r: r.index), used, peak)


def _peak_rate(times: list[float], window: float = 10.0) -> float:
    """Most queries in any `window` seconds, per second."""
    best, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] > window:
            first += 1
        best = max(best, last - first + 1)
    return best / window


def line(name: str, rows: list[RowResult], peak: float | None = None) -> str:
    queries = sum(r.queries for r in rows) / len(rows)
    lags = sorted(r.lag for r in rows)
    mean = sum(lags) / len(lags)
    p95 = lags[min(len(lags) - 1, math.ceil(0.95 * len(lags)) - 1)]
    rate = f"{peak:.1f}" if peak is not None else ""
    return f"| {name} | {len(rows)} | {queries:.2f} | {mean:.1f} | {p95:.1f} | {rate} |"


def run(loop: asyncio.AbstractEventLoop, **kwargs: object) -> Outcome:
    return loop.run_until_complete(simulate(**kwargs))  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", choices=sorted(DISTRIBUTIONS), help="one distribution")
    args = parser.parse_args()
    rows, concurrency, seed = args.rows, args.concurrency, args.seed
    print(
        f"{rows} rows, concurrency {concurrency}, submit {SUBMIT_RATE:g}/s, query latency "
        f"{QUERY_LATENCY_S:g} s, seed {seed}; adaptive at lag target 10 s, 4 queries/s\n"
    )
    loop = VirtualTimeLoop()
    try:
        for name, draw in DISTRIBUTIONS.items():
            if args.only and name != args.only:
                continue
            common = {"draw": draw, "rows": rows, "concurrency": concurrency, "seed": seed}
            print(f"### {name}\n")
            print("| schedule | rows | queries/video | mean lag s | p95 lag s | peak q/s |")
            print("|---|---:|---:|---:|---:|---:|")
            for interval in (5.0, 8.0, 10.0):
                fixed = FixedSchedule(interval, interval)
                out = run(
                    loop, **common, model=None, fixed=fixed, learn=False, max_queries_per_s=1e4
                )
                print(line(f"fixed {interval:g} s", out.rows, out.peak_rate))
            out = run(loop, **common, model=None, fixed=None, learn=False, max_queries_per_s=4.0)
            print(line("prior only (no learning)", out.rows, out.peak_rate))
            out = run(loop, **common, model=None, fixed=None, learn=True, max_queries_per_s=4.0)
            print(line("adaptive, wave 1 (prior)", out.rows[:concurrency]))
            print(line("adaptive, waves 2+ (learned)", out.rows[concurrency:], out.peak_rate))
            stored = DurationModel.load(out.model.to_json())
            again = run(
                loop,
                **{**common, "seed": seed + 1},
                model=stored,
                fixed=None,
                learn=True,
                max_queries_per_s=4.0,
            )
            print(line("restored model, next run", again.rows, again.peak_rate))
            print()
    finally:
        loop.close()


if __name__ == "__main__":
    main()
