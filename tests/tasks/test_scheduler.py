"""The poll scheduler: one heap and one rate cap for every task in flight.

Most tests run on `VirtualTimeLoop` (simulated time: deterministic, no test races the clock);
the rate cap is also checked on the real clock, compressed to milliseconds, with lower
bounds only (asyncio never fires a timer early).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from apimart.errors import NotFoundError, RateLimitError, ServerError
from apimart.models import Task
from tasks.run.duration import DurationModel
from tasks.run.scheduler import (
    FixedSchedule,
    PollScheduler,
    PollTimeout,
    VirtualTimeLoop,
)

EPOCH = 1_760_000_000.0


def run_virtual(main: Callable[[asyncio.AbstractEventLoop], Awaitable[Any]]) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


class FakeAPI:
    """Tasks that complete a fixed time after creation; records when each query started."""

    def __init__(self, loop: asyncio.AbstractEventLoop, latency: float = 0.0) -> None:
        self.loop, self.latency = loop, latency
        self.created: dict[str, float] = {}
        self.durations: dict[str, float] = {}
        self.starts: list[float] = []
        self.by_task: dict[str, list[float]] = {}
        self.faults: dict[int, BaseException] = {}  # query number -> what it raises
        self.broken: dict[str, BaseException] = {}  # task id -> raised on every query

    def wall(self) -> float:
        return EPOCH + self.loop.time()

    def add(self, task_id: str, seconds: float, status: str = "completed") -> float:
        self.created[task_id] = self.wall()
        self.durations[task_id] = seconds
        self.by_task[task_id] = []
        self.statuses = getattr(self, "statuses", {})
        self.statuses[task_id] = status
        return self.created[task_id]

    async def query(self, task_id: str) -> Task:
        self.starts.append(self.loop.time())
        self.by_task[task_id].append(self.loop.time())
        fault = self.faults.pop(len(self.starts), None)
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault is not None:
            raise fault
        if task_id in self.broken:
            raise self.broken[task_id]
        begun, seconds = self.created[task_id], self.durations[task_id]
        if self.wall() - begun >= seconds:
            return Task(
                id=task_id, status=self.statuses[task_id], created=begun, completed=begun + seconds
            )
        return Task(id=task_id, status="processing", created=begun)


def test_the_virtual_loop_jumps_over_sleeps() -> None:
    """An hour of sleeping on the virtual loop takes no real time and advances its clock."""

    async def main(loop: asyncio.AbstractEventLoop) -> float:
        start = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - start

    began = time.perf_counter()
    assert run_virtual(main) == pytest.approx(3600)
    assert time.perf_counter() - began < 5


def test_the_rate_cap_holds_across_many_watched_tasks() -> None:
    """500 tasks due at once are queried no faster than max_queries_per_s, all of them."""

    async def main(loop: asyncio.AbstractEventLoop) -> FakeAPI:
        api = FakeAPI(loop, latency=0.2)
        async with PollScheduler(
            api.query, fixed=FixedSchedule(0.0, 1.0), max_queries_per_s=4.0, wall=api.wall
        ) as s:
            watches = []
            for i in range(500):
                api.add(str(i), 30.0)
                watches.append(s.track(str(i), submitted_at=api.wall(), deadline=1e9))
            await asyncio.gather(*watches)
        return api

    api = run_virtual(main)
    starts = sorted(api.starts)
    assert len(starts) >= 500
    for k in (1, 4, 40):
        assert min(b - a for a, b in zip(starts, starts[k:], strict=False)) >= k / 4.0 - 1e-9


async def test_the_rate_cap_holds_on_the_real_clock() -> None:
    """On real time too, n queries never start closer together than (n - 1) / rate."""
    loop = asyncio.get_running_loop()
    api = FakeAPI(loop)
    rate = 200.0
    async with PollScheduler(
        api.query, fixed=FixedSchedule(0.0, 0.001), max_queries_per_s=rate, wall=api.wall
    ) as s:
        watches = []
        for i in range(60):
            api.add(str(i), 0.05)
            watches.append(s.track(str(i), submitted_at=api.wall(), deadline=loop.time() + 60))
        await asyncio.gather(*watches)
    starts = sorted(api.starts)
    assert len(starts) >= 60
    for k in (1, 10):
        gaps = [b - a for a, b in zip(starts, starts[k:], strict=False)]
        assert min(gaps) >= k / rate - 1e-6


@pytest.mark.parametrize(
    "fault, pause",
    [
        (RateLimitError("HTTP 429", retry_after=7.0), 7.0),
        (ServerError("HTTP 503", status_code=503), 5.0),
    ],
)
def test_a_429_or_503_slows_every_query_then_the_rate_recovers(
    fault: BaseException, pause: float
) -> None:
    """After a 429/503 nobody queries for Retry-After (5 s without), the rate halves, then
    climbs back to the cap as queries succeed."""
    rates: list[float] = []

    async def main(loop: asyncio.AbstractEventLoop) -> FakeAPI:
        api = FakeAPI(loop)
        api.faults[20] = fault
        async with PollScheduler(
            api.query, fixed=FixedSchedule(0.0, 0.5), max_queries_per_s=10.0, wall=api.wall
        ) as s:
            original = api.query

            async def query(task_id: str) -> Task:
                rates.append(s.rate)
                return await original(task_id)

            s._query_fn = query  # observe the rate each query sees
            watches = []
            for i in range(50):
                api.add(str(i), 20.0)
                watches.append(s.track(str(i), submitted_at=api.wall(), deadline=1e9))
            await asyncio.gather(*watches)
            assert s.stats.throttled == 1
        return api

    api = run_virtual(main)
    hit = api.starts[19]
    after = [t for t in api.starts if t > hit]
    assert after[0] - hit >= pause - 1e-9
    assert rates[20] == pytest.approx(5.0)
    assert after[1] - after[0] >= 1 / 5.0 - 1e-9
    assert rates[-1] == pytest.approx(10.0)


def test_a_fixed_schedule_is_honoured_exactly_also_below_5_s() -> None:
    """FixedSchedule(1.5, 2.0): queries at 1.5, 3.5, 5.5 ... s after submission, no others."""

    async def main(loop: asyncio.AbstractEventLoop) -> tuple[list[float], float, int]:
        api = FakeAPI(loop)
        async with PollScheduler(
            api.query, fixed=FixedSchedule(1.5, 2.0), max_queries_per_s=100.0, wall=api.wall
        ) as s:
            start = api.add("a", 9.0)
            watch = s.track("a", submitted_at=start, deadline=loop.time() + 100)
            await watch
        return [t - (start - EPOCH) for t in api.by_task["a"]], start, watch.queries

    times, _, queries = run_virtual(main)
    assert times == pytest.approx([1.5, 3.5, 5.5, 7.5, 9.5])
    assert queries == 5


def test_the_adaptive_schedule_follows_the_models_plan() -> None:
    """Without a fixed schedule the first query waits for the plan (~3 min), not 5-10 s."""

    async def main(loop: asyncio.AbstractEventLoop) -> list[float]:
        api = FakeAPI(loop)
        async with PollScheduler(api.query, wall=api.wall) as s:
            start = api.add("a", 250.0)
            await s.watch("a", submitted_at=start, deadline=loop.time() + 1800)
        return api.by_task["a"]

    times = run_virtual(main)
    plan = DurationModel().schedule(10.0)
    assert times[0] == pytest.approx(plan.times[0])
    assert len(times) <= 6
    assert times[-1] - 250.0 <= 60


def test_a_deadline_ends_a_watch_after_a_last_query_at_it() -> None:
    """A task that never ends: PollTimeout at the deadline, last query there, none after."""

    async def main(loop: asyncio.AbstractEventLoop) -> tuple[list[float], float, PollTimeout]:
        api = FakeAPI(loop)
        async with PollScheduler(api.query, wall=api.wall) as s:
            start = api.add("a", 1e9)
            deadline = loop.time() + 1000
            with pytest.raises(PollTimeout) as caught:
                await s.watch("a", submitted_at=start, deadline=deadline)
            ended = loop.time()
            await asyncio.sleep(600)
        assert deadline <= ended <= deadline + 1
        return api.by_task["a"], deadline, caught.value

    times, deadline, error = run_virtual(main)
    assert times[-1] == pytest.approx(deadline)
    assert max(b - a for a, b in itertools.pairwise(times)) <= 120 + 1e-9
    assert error.last_task is not None and error.last_task.status == "processing"
    assert error.queries == len(times)
    assert "still processing" in str(error)


def test_a_non_transient_error_fails_only_its_watch_and_transient_ones_are_retried() -> None:
    """A 404 fails that watch with the 404; a 500 on another task is retried to the end."""

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        api = FakeAPI(loop)
        api.broken["gone"] = NotFoundError("HTTP 404", status_code=404)
        api.faults[1] = ServerError("HTTP 500", status_code=500)
        async with PollScheduler(
            api.query, fixed=FixedSchedule(1.0, 1.0), max_queries_per_s=100.0, wall=api.wall
        ) as s:
            ok_start = api.add("ok", 5.0)
            ok = s.track("ok", submitted_at=ok_start, deadline=loop.time() + 100)
            gone = s.track("gone", submitted_at=api.add("gone", 5.0), deadline=loop.time() + 100)
            with pytest.raises(NotFoundError):
                await gone
            task = await ok
            assert task.status == "completed"
            assert s.stats.failures == 1 and s.stats.errors == 1
            assert len(api.by_task["gone"]) == 1

    run_virtual(main)


def test_one_scheduler_serves_thousands_of_watches_with_a_fixed_set_of_coroutines() -> None:
    """2,000 tasks in flight: the loop holds the dispatcher and workers, not one per row."""

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        api = FakeAPI(loop, latency=0.05)
        async with PollScheduler(api.query, max_queries_per_s=50.0, workers=8, wall=api.wall) as s:
            watches = []
            for i in range(2000):
                api.add(str(i), 180.0 + (i % 120))
                watches.append(s.track(str(i), submitted_at=api.wall(), deadline=1e9))
            await asyncio.sleep(100)
            assert s.in_flight == 2000
            assert len(asyncio.all_tasks()) <= 8 + 2
            done = await asyncio.gather(*watches)
            assert all(t.status == "completed" for t in done)

    run_virtual(main)


def test_the_model_learns_completed_tasks_and_not_failed_ones() -> None:
    """Each completed task teaches the model its API duration; a failed one does not."""

    async def main(loop: asyncio.AbstractEventLoop) -> DurationModel:
        api = FakeAPI(loop)
        model = DurationModel()
        async with PollScheduler(
            api.query, model, fixed=FixedSchedule(1.0, 1.0), max_queries_per_s=100, wall=api.wall
        ) as s:
            runs = [
                s.watch(str(i), submitted_at=api.add(str(i), 42.0), deadline=1e9) for i in range(5)
            ]
            runs.append(s.watch("bad", submitted_at=api.add("bad", 7.0, "failed"), deadline=1e9))
            await asyncio.gather(*runs)
            assert s.stats.completed == 5 and s.stats.finished == 6
        return model

    model = run_virtual(main)
    assert model.observations == 5
    assert 40 <= model.quantile(0.5) <= 44 or model.counts == {21: 5.0}


@pytest.mark.timeout(60)
def test_waits_below_the_clocks_rounding_do_not_spin() -> None:
    """Workers whose rate slot is less than the loop's clock resolution away do not wake
    each other forever (a fast cap, many rows, hours of simulated polling)."""

    async def main(loop: asyncio.AbstractEventLoop) -> int:
        api = FakeAPI(loop, latency=0.3)
        slots = asyncio.Semaphore(100)
        async with PollScheduler(
            api.query, fixed=FixedSchedule(5.0, 5.0), max_queries_per_s=1e4, wall=api.wall
        ) as s:

            async def row(i: int) -> None:
                async with slots:
                    await asyncio.sleep(0.5)
                    start = api.add(str(i), 180.0 + (i * 37) % 120)
                    await s.watch(str(i), submitted_at=start, deadline=1e9)

            await asyncio.gather(*(row(i) for i in range(1000)))
        return len(api.starts)

    assert run_virtual(main) >= 1000 * 36


def test_a_pause_after_a_503_does_not_hold_a_watch_past_its_deadline() -> None:
    """A task already asked about whose deadline falls inside a 503's 5 s pause ends
    PollTimeout at its deadline, not when the pause is over, and is not queried again."""

    async def main(loop: asyncio.AbstractEventLoop) -> tuple[float, float, FakeAPI]:
        api = FakeAPI(loop)
        api.faults[1] = ServerError("busy", status_code=503)
        async with PollScheduler(
            api.query, fixed=FixedSchedule(0.0, 0.1), max_queries_per_s=100.0, wall=api.wall
        ) as s:
            start = api.add("a", 1e9)
            deadline = loop.time() + 1.0
            with pytest.raises(PollTimeout, match="busy"):
                await s.watch("a", submitted_at=start, deadline=deadline)
            return loop.time(), deadline, api

    ended, deadline, api = run_virtual(main)
    assert deadline <= ended <= deadline + 0.01
    assert len(api.by_task["a"]) == 1
