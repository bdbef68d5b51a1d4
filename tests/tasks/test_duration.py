"""The duration model: learning, the shape of its query plans, persistence and estimates."""

from __future__ import annotations

import itertools
import random

import pytest

from apimart.models import Task
from tasks.run.duration import (
    MAX_GAP_S,
    MIN_GAP_S,
    TAIL_MAX_GAP_S,
    DurationModel,
    Schedule,
    duration_of,
)


def simulate(schedule: Schedule, durations: list[float]) -> tuple[float, float]:
    """(mean queries, mean lag) of a plan over tasks of the given durations."""
    queries, lag = 0, 0.0
    for d in durations:
        t, n = schedule.first_query(0.0), 1
        while t < d:
            t, n = schedule.next_query(t), n + 1
        queries += n
        lag += t - d
    return queries / len(durations), lag / len(durations)


def narrow(rng: random.Random, n: int) -> list[float]:
    return [rng.gauss(290.0, 6.0) for _ in range(n)]


def test_a_learned_model_needs_fewer_queries_than_the_prior_on_what_it_learned() -> None:
    """After learning a narrow distribution, the plan costs fewer queries at the same lag."""
    rng = random.Random(3)
    learned = DurationModel()
    assert learned.learn_many(narrow(rng, 300)) == 300
    truth = narrow(rng, 4000)
    prior_q, prior_lag = simulate(DurationModel().schedule(10.0), truth)
    learned_q, learned_lag = simulate(learned.schedule(10.0), truth)
    assert learned_lag <= 11.0
    assert learned_q < prior_q - 0.5, (learned_q, prior_q, prior_lag)


def test_the_plan_meets_its_lag_target_on_its_own_distribution() -> None:
    """A model learned from uniform 180-300 s plans ~3.2-3.6 queries at <= ~10 s mean lag."""
    rng = random.Random(5)
    model = DurationModel()
    model.learn_many(rng.uniform(180, 300) for _ in range(500))
    queries, lag = simulate(model.schedule(10.0), [rng.uniform(180, 300) for _ in range(4000)])
    assert lag <= 10.5
    assert queries <= 3.7


@pytest.mark.parametrize("learned", [0, 400])
def test_gaps_stay_between_5_and_60_s_inside_the_learned_range(learned: int) -> None:
    """Inside the learned range no gap is under 5 s or over 60 s, for the prior and learned."""
    rng = random.Random(learned)
    model = DurationModel()
    model.learn_many(rng.uniform(150, 420) for _ in range(learned))
    schedule = model.schedule(10.0)
    low, high = model.learned_range
    t = schedule.first_query(0.0)
    assert t <= low + MAX_GAP_S
    while t < high:
        following = schedule.next_query(t)
        assert MIN_GAP_S <= following - t <= MAX_GAP_S, (t, following)
        t = following
    for elapsed in (0.0, 37.3, low, (low + high) / 2, high - 1):
        assert schedule.next_query(elapsed) - elapsed >= MIN_GAP_S


def test_past_the_learned_range_gaps_grow_but_stay_bounded_until_any_deadline() -> None:
    """A late task is queried with growing gaps, never above 120 s, however late it runs."""
    schedule = DurationModel().schedule(10.0)
    t, gaps = schedule.range_high + 1.0, []
    while t < 20_000:
        following = schedule.next_query(t)
        gaps.append(following - t)
        t = following
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(gaps))
    assert max(gaps) == pytest.approx(TAIL_MAX_GAP_S)
    assert gaps[-1] == pytest.approx(TAIL_MAX_GAP_S)
    assert gaps[0] < 30


def test_a_task_first_seen_late_is_queried_at_once() -> None:
    """A task resumed far past the plan is asked about now, not after a tail gap."""
    schedule = DurationModel().schedule(10.0)
    assert schedule.first_query(5000.0) == 5000.0
    assert schedule.first_query(0.0) == schedule.times[0] > 150


def test_json_round_trip_keeps_the_model_and_its_plan() -> None:
    """to_json/from_json restore the same counts and plan, in one small string."""
    rng = random.Random(8)
    model = DurationModel(low=120, high=240)
    model.learn_many(rng.uniform(150, 260) for _ in range(700))
    text = model.to_json()
    assert len(text) < 2000
    back = DurationModel.from_json(text)
    assert (back.low, back.high) == (120, 240)
    assert back.counts == pytest.approx(model.counts, abs=1e-3)
    assert back.schedule(10.0).times == model.schedule(10.0).times


def test_load_falls_back_to_the_prior_and_from_json_names_the_problem() -> None:
    """A missing or damaged stored model gives the prior; from_json says what is wrong."""
    assert DurationModel.load(None).observations == 0
    assert DurationModel.load("{not json").observations == 0
    assert DurationModel.load(None, low=60, high=90).high == 90
    with pytest.raises(ValueError, match="not JSON"):
        DurationModel.from_json("{not json")
    with pytest.raises(ValueError, match="bad count"):
        DurationModel.from_json(
            '{"v":1,"low":1,"high":2,"prior_weight":1,"max_weight":9,"bin_s":2,"counts":{"x":1}}'
        )
    with pytest.raises(ValueError, match="above low"):
        DurationModel(low=300, high=200)


def test_a_few_outliers_neither_stretch_the_range_nor_the_plan() -> None:
    """Three 25-minute tasks among 200 normal ones barely change the plan's range or cost."""
    rng = random.Random(11)
    typical = [rng.uniform(180, 300) for _ in range(200)]
    clean, noisy = DurationModel(), DurationModel()
    clean.learn_many(typical)
    noisy.learn_many([*typical, 1500.0, 1520.0, 1490.0])
    assert noisy.learned_range[1] < 400
    truth = [rng.uniform(180, 300) for _ in range(3000)]
    clean_q, _ = simulate(clean.schedule(10.0), truth)
    noisy_q, noisy_lag = simulate(noisy.schedule(10.0), truth)
    assert noisy_q <= clean_q * 1.1
    assert noisy_lag <= 11.0


def test_merge_adds_another_models_observations() -> None:
    """Merging two halves gives the counts of learning everything in one model."""
    rng = random.Random(2)
    data = [rng.uniform(100, 400) for _ in range(300)]
    whole, left, right = DurationModel(), DurationModel(), DurationModel()
    whole.learn_many(data)
    left.learn_many(data[:150])
    right.learn_many(data[150:])
    left.merge(right)
    assert left.counts == pytest.approx(whole.counts)


def test_forgetting_follows_a_vendor_that_got_slower() -> None:
    """After 500 tasks at ~200 s then 1000 at ~320 s, the model's median is near 320 s."""
    model = DurationModel(max_weight=500)
    model.learn_many([200.0] * 500 + [320.0] * 1000)
    assert model.observations <= 500.001
    assert 300 < model.quantile(0.5) < 330


def test_nonsense_durations_are_not_learned() -> None:
    """Negative, zero, NaN and infinite durations teach nothing."""
    model = DurationModel()
    assert [model.learn(v) for v in (-1.0, 0.0, float("nan"), float("inf"))] == [False] * 4
    assert model.observations == 0


def test_duration_comes_from_the_apis_own_timings() -> None:
    """completed - created is the duration (even if noticed late); else actual_time."""
    done = Task(id="t", status="completed", created=1000, completed=1230, actual_time=200)
    assert duration_of(done) == 230
    assert duration_of(Task(id="t", status="completed", actual_time=200)) == 200
    assert duration_of(Task(id="t", status="completed")) is None
    model = DurationModel()
    assert model.learn_task(done) == 230
    assert model.observations == 1


def test_expected_remaining_and_eta() -> None:
    """Remaining time shrinks as a task ages; the ETA of N rows scales with N / concurrency."""
    model = DurationModel()
    model.learn_many([240.0] * 300)
    assert model.expected_remaining(0) == pytest.approx(240, abs=5)
    assert model.expected_remaining(200) == pytest.approx(40, abs=5)
    assert model.expected_remaining(10_000) <= TAIL_MAX_GAP_S
    lag = model.schedule().expected_lag
    row = model.mean + lag
    assert model.eta(0, 10, [200.0]) == pytest.approx(40 + lag, abs=5)
    assert model.eta(100, 10) == pytest.approx(10 * row, rel=0.01)
    assert model.eta(105, 10) == pytest.approx(11 * row, rel=0.01)
    assert model.eta(100, 10, [200.0] * 10) == pytest.approx(40 + lag + 10 * row, rel=0.02)
