"""Learning from tasks still running: the duration model counts them as right-censored
(Kaplan-Meier), so early in a wave, when only the short tasks have finished, it does not
believe that tasks are short. Real model and real scheduler on the virtual clock."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from apimart.models import Task
from tasks.run.duration import DurationModel
from tasks.run.scheduler import PollScheduler, VirtualTimeLoop

EPOCH = 1_760_000_000.0


def run_virtual(main: Callable[[asyncio.AbstractEventLoop], Awaitable[Any]]) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


class UniformAPI:
    """Tasks lasting uniform 180-300 s (seeded); `completed` once their time has passed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seed: int) -> None:
        self.loop, self.rng = loop, random.Random(seed)
        self.created: dict[str, float] = {}
        self.durations: dict[str, float] = {}

    def wall(self) -> float:
        return EPOCH + self.loop.time()

    def add(self, task_id: str) -> float:
        self.created[task_id] = self.wall()
        self.durations[task_id] = self.rng.uniform(180.0, 300.0)
        return self.created[task_id]

    async def query(self, task_id: str) -> Task:
        await asyncio.sleep(0.3)
        begun, seconds = self.created[task_id], self.durations[task_id]
        if self.wall() - begun >= seconds:
            return Task(id=task_id, status="completed", created=begun, completed=begun + seconds)
        return Task(id=task_id, status="processing", created=begun)


def test_mid_wave_the_model_does_not_believe_tasks_are_short() -> None:
    """One wave of 100 uniform 180-300 s tasks on the real scheduler: 215 s in, when only the
    short ones have finished, the model's median stays near the true 240 s and its mean near
    the true 240 s (learning from finished tasks alone puts both near 200 s)."""

    async def main(loop: asyncio.AbstractEventLoop) -> tuple[float, float, float, float]:
        api = UniformAPI(loop, seed=4)
        model = DurationModel()
        async with PollScheduler(api.query, model, wall=api.wall) as s:
            watches = [
                s.track(str(i), submitted_at=api.add(str(i)), deadline=loop.time() + 1800)
                for i in range(100)
            ]
            await asyncio.sleep(215.0)
            finished = sum(w.done() for w in watches)
            seen = (model.quantile(0.5), model.mean, float(finished), model.observations)
            await asyncio.gather(*watches)
        return seen

    median, mean, finished, learned = run_virtual(main)
    assert 5 <= finished <= 40 and learned == finished  # only the short ones so far
    assert 225.0 <= median <= 260.0, median
    assert 225.0 <= mean <= 260.0, mean


def test_a_running_task_says_longer_than_its_age() -> None:
    """Ten short tasks finished and ninety still running at 200 s: the censored estimate
    keeps ~90 % of the mass past 200 s; the tasks leaving again gives the old estimate back."""
    model = DurationModel()
    model.learn_many([185.0 + i for i in range(10)])
    short_only = model.survival(200.0)
    for _ in range(90):
        model.running(None, 200.0)
    assert model.running_count == 90
    assert model.survival(200.0) == pytest.approx(0.9 * 0.9, abs=0.12)  # prior inside too
    assert model.survival(200.0) > short_only + 0.3
    assert model.quantile(0.5) > 230.0
    for _ in range(90):
        model.running(200.0, None)
    assert model.running_count == 0
    assert model.survival(200.0) == pytest.approx(short_only, abs=0.02)


def test_every_ended_watch_leaves_the_running_tasks() -> None:
    """Completed and timed-out watches both leave the model's running tasks: once the
    scheduler is done the model counts none, and learned only the completed ones."""

    async def main(loop: asyncio.AbstractEventLoop) -> DurationModel:
        api = UniformAPI(loop, seed=9)
        model = DurationModel()
        async with PollScheduler(api.query, model, wall=api.wall) as s:
            done = [s.track(str(i), submitted_at=api.add(str(i)), deadline=1e9) for i in range(5)]
            late = s.track("late", submitted_at=api.add("late"), deadline=loop.time() + 250)
            api.durations["late"] = 1e9
            await asyncio.gather(*done)
            with pytest.raises(TimeoutError):
                await late
            assert model.running_count == 0
        return model

    model = run_virtual(main)
    assert model.running_count == 0
    assert model.observations == 5


def test_a_model_stored_by_the_earlier_version_still_loads() -> None:
    """The persisted form is unchanged: a string as the earlier version wrote it loads with
    its counts, and what runs now (tasks still running) is never stored."""
    earlier = (
        '{"v":1,"low":180.0,"high":300.0,"prior_weight":20.0,"max_weight":500.0,"bin_s":2,'
        '"counts":{"100":3.0,"110":4.5,"120":2.0}}'
    )
    model = DurationModel.load(earlier)
    assert model.counts == {100: 3.0, 110: 4.5, 120: 2.0}
    assert (model.low, model.high, model.observations) == (180.0, 300.0, 9.5)
    model.running(None, 250.0)
    stored = json.loads(model.to_json())
    assert stored == json.loads(earlier)
    assert DurationModel.load(model.to_json()).running_count == 0


def test_learning_on_from_a_learned_model_keeps_its_query_cost() -> None:
    """A run that starts learned (500 uniform tasks) and learns on costs no more queries than
    the learned plan itself (~3.2 a video at <= 10 s mean lag): a task planned under an older
    plan continues by the new one's policy from where it is, never a few seconds after its
    last query."""
    rng = random.Random(1)
    learned = DurationModel()
    learned.learn_many(rng.uniform(180, 300) for _ in range(500))
    stored = learned.to_json()

    async def main(loop: asyncio.AbstractEventLoop) -> tuple[float, float]:
        api = UniformAPI(loop, seed=7)
        slots, queries, lags = asyncio.Semaphore(60), [], []
        async with PollScheduler(api.query, DurationModel.load(stored), wall=api.wall) as s:

            async def row(i: int) -> None:
                async with slots:
                    await asyncio.sleep(0.5)
                    watch = s.track(str(i), submitted_at=api.add(str(i)), deadline=1e9)
                    await watch
                    queries.append(watch.sent)
                    lags.append(watch.lag)

            await asyncio.gather(*(row(i) for i in range(360)))
        return sum(queries) / len(queries), sum(lags) / len(lags)

    per_video, lag = run_virtual(main)
    assert lag <= 10.5, lag
    assert per_video <= 3.4, per_video
