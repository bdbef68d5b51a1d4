"""How long a task takes, learned from this folder's finished tasks, and when to query it next.

`DurationModel` is a distribution of task durations (submission to terminal state, seconds):
a prior (the vendor's "3 to 5 minutes": uniform on [`low`, `high`], softened at its edges)
mixed with what finished tasks showed. Durations come from the API's own timings
(`completed - created`, else `actual_time`, see `duration_of`), so a completion we noticed
late still teaches the true duration, never our detection time.

From the distribution it plans when to query a task so that the expected number of queries
is smallest for a target mean detection lag (`lag_target`, the mean time from a task ending to
our query seeing it). Minimising E[queries] + mu * E[lag] gives, in the continuum, gaps
sqrt(2 S(t) / (mu f(t))) (S the survival, f the density): few queries where completions are
unlikely, dense ones where they are likely (shared/scale-notes.md). The plan solves the same
problem exactly on a 1 s grid by dynamic programming (`_Optimiser`; the continuum rule is
off by ~5 % near the end of the range, where a gap is as long as the time left), and mu is
bisected so the plan's mean lag, computed over the model's own distribution, meets the
target. The plan obeys:

* gaps are clamped to [`MIN_GAP_S`, `MAX_GAP_S`] = [5 s, 60 s] inside the learned range (the
  0.5 %..99.5 % quantiles, the top one fenced at Q3 + 1.5 IQR so a few outliers cannot stretch
  it); before the range the first query may come later than 60 s (nothing finishes there);
* past the range a task is late: gaps back off linearly with how late it is
  (`TAIL_SLOPE` of the overdue time) but never beyond `TAIL_MAX_GAP_S` = 120 s. It is still
  a paid task: the bound keeps its detection lag under two minutes and keeps queries landing
  until the caller's deadline, at a cost of at most 30 queries per hour per late task, while
  unbounded (say geometric) growth would put a late video minutes behind and let one gap
  jump over most of the deadline.

Learning: `learn(seconds)` adds one observation (binned at `BIN_S`). The prior counts as
`prior_weight` observations, so a handful of tasks bends it and a few hundred replace it.
Past `max_weight` observations every count is scaled down (exponential forgetting), so a
vendor that gets slower mid-run is followed within a few hundred tasks and the stored state
stays small. The bandwidth of the smoothing kernel follows Silverman's rule (4 to 30 s), which
widens a sparse model: with few tasks learned the tail is under-covered otherwise.

Tasks still running count too: `running(before, after)` (the scheduler calls it on every
answer) keeps the ages at which running tasks were last seen running, as right-censored
durations, and the distribution is the Kaplan-Meier product-limit estimate over the prior
(as `prior_weight` pseudo-events), the smoothed finished tasks, and those. Early in a wave
only the short tasks have finished; alone they would say tasks are short and the plan would
poll the rest too early and too often. The running tasks are a snapshot, never stored. Their
moves are cheap (no kernels, no plan): a new plan is made for them only once the survival
curve inside the learned range moved by `SURVIVAL_TOLERANCE` (or the range's top by
`RANGE_TOLERANCE_S`).

A plan is a policy as well as a path: `Schedule.steps` holds the best next query after a
query at each second of the range, so a task whose earlier queries followed an older plan
(the model learned meanwhile) continues optimally from where it is, instead of jumping to
the new path's next point, which may be seconds after its last query.

Persistence (one key of the ledger's `meta` store, a JSON string of well under 2 KB):

    model = DurationModel.load(ledger.meta(DurationModel.META_KEY))   # prior if absent/bad
    ...
    ledger.set_meta(DurationModel.META_KEY, model.to_json())

`merge` adds another model's observations (a shard's, say) to this one.

Planning is pure Python on a 1 s grid (a few hundred cells) and is
cached: it is recomputed once new observations reach 10 % of those held (at least one), so
learning on every finished task costs little (a plan takes ~50-150 ms of CPU; at the default
500 observations held that is one plan per 50 finished tasks). Plans aim a little under the lag
target: `LAG_MARGIN` always (a real query starts late under the rate cap, and its answer
takes time), and `PRIOR_MARGIN` more while the prior (or tasks still running) still weigh.
`schedule(lag_target)` returns the cached `Schedule`; `next_query(elapsed, lag_target)` is
the one call a poller needs.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from apimart.models import Task

# Gaps between two queries of one task, inside the learned range.
MIN_GAP_S = 5.0
MAX_GAP_S = 60.0
# Past the learned range: gap = TAIL_SLOPE * overdue seconds, at least the last in-range gap,
# at most TAIL_MAX_GAP_S (see the module docstring for why it is bounded).
TAIL_SLOPE = 0.5
TAIL_MAX_GAP_S = 120.0
# Width of the bins observations are stored in (the API reports whole seconds anyway).
BIN_S = 2
# Durations are clipped to this: a value past it is an outlier whatever it says.
MAX_DURATION_S = 3600.0
# The learned range, as quantiles of the model.
RANGE_LOW_Q = 0.005
RANGE_HIGH_Q = 0.995
# The high end of the range never passes Q3 + RANGE_FENCE_IQR * IQR (Tukey's fence).
RANGE_FENCE_IQR = 1.5
# Where in its unit of query density the first query sits (midpoint rule).
FIRST_PHASE = 0.5
# With only the prior, plans aim PRIOR_MARGIN more under the lag target; the margin fades as
# the share of the prior and of the tasks still running (what is not yet known) does.
PRIOR_MARGIN = 0.1
# Every plan aims this much under the lag target: the plan's lag is a query's planned time,
# while a real one starts a little late (the rate cap) and its answer takes time.
LAG_MARGIN = 0.03
# A plan is rebuilt once the observations learned since the last one reach this share of
# those held (at least one): a plan costs tens of milliseconds of CPU.
REPLAN_SHARE = 0.1
# Tasks still running are re-checked once the moves of their ages reach this share of all
# that is held, finished and running (at least one move)...
RUNNING_CHECK_SHARE = 0.1
# ... and the plan is rebuilt for them once the survival curve moved this much somewhere
# (or the top of the learned range by RANGE_TOLERANCE_S seconds).
SURVIVAL_TOLERANCE = 0.1
RANGE_TOLERANCE_S = 30.0
DEFAULT_LAG_TARGET_S = 10.0
_SCHEMA = 1


def duration_of(task: Task) -> float | None:
    """The task's true duration by the API's own clock, or None if it does not say.

    `completed - created` is preferred: it is submission to end, queueing included, which is
    what a poller waits for. `actual_time` may leave the queue out, so it is the fallback.
    """
    if task.completed is not None and task.created is not None:
        span = task.completed - task.created
        if span >= 0:
            return span
    if task.actual_time is not None and task.actual_time >= 0:
        return task.actual_time
    return None


@dataclass(frozen=True)
class Schedule:
    """A query plan for a fresh task: elapsed seconds of each query inside the learned range,
    then a back-off past it. Built by `DurationModel.schedule`; `next_query` is stateless, so
    one Schedule serves every task in flight."""

    times: tuple[float, ...]
    range_low: float
    range_high: float
    edge_gap: float
    expected_queries: float
    expected_lag: float
    lag_target: float
    # The plan as a policy: steps[k] is the best next query after one at second
    # steps_from + k, whatever came before. A task planned under an older model (the model
    # learned meanwhile) continues from where it is, not from the nearest point of a path it
    # never followed, which would put two queries a few seconds apart.
    steps: tuple[float, ...] = ()
    steps_from: int = 0

    def tail_gap(self, elapsed: float) -> float:
        """The gap after a query at `elapsed` past the learned range: grows, bounded."""
        overdue = max(0.0, elapsed - self.range_high)
        return min(TAIL_MAX_GAP_S, max(self.edge_gap, MIN_GAP_S, TAIL_SLOPE * overdue))

    def first_query(self, elapsed: float) -> float:
        """Elapsed time of the first query of a task first seen at `elapsed` (none made yet).

        The next planned time at or after `elapsed`; at once for a task already past the plan
        (one resumed from an earlier run has most likely ended by now).
        """
        index = bisect.bisect_left(self.times, elapsed)
        return self.times[index] if index < len(self.times) else elapsed

    def next_query(self, elapsed: float) -> float:
        """Elapsed time (since submission) of the next query after one made at `elapsed`.

        The plan's best next query after one at `elapsed` (its policy, `steps`), else the next
        planned time; at least `MIN_GAP_S` after `elapsed`: a query that ran late (rate cap,
        slow answer) is not followed by a burst, nor does it skip a planned point.
        """
        step = int(elapsed) - self.steps_from
        if 0 <= step < len(self.steps):
            return max(self.steps[step], elapsed + MIN_GAP_S)
        index = bisect.bisect_right(self.times, elapsed)
        if index < len(self.times):
            return max(self.times[index], elapsed + MIN_GAP_S)
        return elapsed + self.tail_gap(elapsed)


@dataclass(frozen=True)
class _Grid:
    """The model's distribution on 1 s cells: mass[i] = P(i <= T < i + 1)."""

    mass: tuple[float, ...]
    survival: tuple[float, ...]  # survival[i] = P(T >= i), one longer than mass
    range_low: float
    range_high: float
    horizon: int  # cells planned over; mass past it only counts through the survival
    mean: float


@dataclass
class DurationModel:
    """A learned distribution of task durations (see the module docstring)."""

    META_KEY = "poll.duration_model"

    low: float = 180.0
    high: float = 300.0
    prior_weight: float = 20.0
    max_weight: float = 500.0
    # bin index -> observed weight; a bin holds durations in [i * BIN_S, (i + 1) * BIN_S)
    counts: dict[int, float] = field(default_factory=dict)
    _grid: _Grid | None = field(default=None, init=False, repr=False, compare=False)
    _schedules: dict[float, Schedule] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # the last price of lag found per target, a starting point for the next calibration
    _log_mu: dict[float, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    # observations learned since the cached grid was built (forgetting keeps the total flat)
    _unplanned: float = field(default=0.0, init=False, repr=False, compare=False)
    # Tasks still running, as right-censored observations: whole seconds each is known to
    # have run -> how many. A snapshot the caller keeps current (`running`); never stored.
    _running: dict[int, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    # changes to `_running` since the plan's survival was last checked against it
    _running_moves: float = field(default=0.0, init=False, repr=False, compare=False)
    # the prior and the smoothed finished tasks on 1 s cells, before censoring (cached)
    _base: list[float] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low > 0):
            raise ValueError(f"duration prior: low must be a positive number, got {self.low!r}")
        if not self.high > self.low:
            raise ValueError(
                f"duration prior: high ({self.high!r}) must be above low ({self.low!r})"
            )
        if self.high > MAX_DURATION_S:
            raise ValueError(f"duration prior: high must be at most {MAX_DURATION_S:.0f} s")
        if not (self.prior_weight > 0 and self.max_weight >= 1):
            raise ValueError("duration prior: prior_weight must be > 0 and max_weight >= 1")

    # -- learning ---------------------------------------------------------------------------
    @property
    def observations(self) -> float:
        """Weight of what was learned (a count of tasks, less what was forgotten)."""
        return sum(self.counts.values())

    def learn(self, seconds: float, weight: float = 1.0) -> bool:
        """Add one observed duration; False (and nothing learned) for a non-number or <= 0."""
        if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
            return False
        if not (math.isfinite(weight) and weight > 0):
            return False
        index = int(min(seconds, MAX_DURATION_S) // BIN_S)
        self.counts[index] = self.counts.get(index, 0.0) + weight
        self._unplanned += weight
        self._forget()
        return True

    def learn_task(self, task: Task) -> float | None:
        """Learn from a finished task's own timings; the duration learned, or None."""
        seconds = duration_of(task)
        if seconds is None or not self.learn(seconds):
            return None
        return seconds

    def learn_many(self, durations: Iterable[float]) -> int:
        return sum(1 for seconds in durations if self.learn(seconds))

    def merge(self, other: DurationModel) -> None:
        """Add another model's observations to this one (its prior is not added)."""
        for index, weight in other.counts.items():
            self.counts[index] = self.counts.get(index, 0.0) + weight
            self._unplanned += weight
        self._forget()

    # -- tasks still running (right-censored) ---------------------------------------------
    @property
    def running_count(self) -> float:
        """How many tasks still running the model counts (each one says "T > its age")."""
        return sum(self._running.values())

    def running(self, before: float | None, after: float | None) -> None:
        """Move one task still running from known age `before` to `after` (seconds since
        submission when an answer last showed it running): None as `before` adds a task,
        None as `after` removes one (it ended, or is no longer watched). O(1): the caller
        (the scheduler) calls it on every answer.

        Finished tasks alone under-estimate durations while tasks are still running: early in
        a wave only the short ones have finished. A task running for 200 s says "longer than
        200 s", and the model counts that (Kaplan-Meier, see `_censor`).
        """
        for age, sign in ((before, -1.0), (after, 1.0)):
            if age is None or not (math.isfinite(age) and age >= 1.0):
                continue
            cell = int(min(age, MAX_DURATION_S))
            weight = self._running.get(cell, 0.0) + sign
            if weight > 1e-9:
                self._running[cell] = weight
            else:
                self._running.pop(cell, None)
            self._running_moves += 1.0

    def set_running(self, ages: Iterable[float]) -> None:
        """Replace the tasks still running by tasks of these known ages (seconds)."""
        self._running = {}
        self._running_moves += 1.0
        for age in ages:
            self.running(None, age)

    def _forget(self) -> None:
        total = self.observations
        if total > self.max_weight:
            scale = self.max_weight / total
            self.counts = {i: w * scale for i, w in self.counts.items() if w * scale > 1e-3}

    # -- persistence ------------------------------------------------------------------------
    def to_json(self) -> str:
        """A small JSON string (one ledger `meta` value): the prior and the binned counts."""
        return json.dumps(
            {
                "v": _SCHEMA,
                "low": self.low,
                "high": self.high,
                "prior_weight": self.prior_weight,
                "max_weight": self.max_weight,
                "bin_s": BIN_S,
                "counts": {str(i): round(w, 3) for i, w in sorted(self.counts.items())},
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> DurationModel:
        """The model `to_json` wrote; ValueError naming what is wrong otherwise."""
        try:
            data: Any = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"duration model: not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("v") != _SCHEMA:
            raise ValueError(f"duration model: not a version {_SCHEMA} model")
        if data.get("bin_s") != BIN_S:
            raise ValueError(f"duration model: bins of {data.get('bin_s')!r} s, not {BIN_S} s")
        raw = data.get("counts")
        if not isinstance(raw, dict):
            raise ValueError("duration model: `counts` must be an object")
        counts: dict[int, float] = {}
        for key, value in raw.items():
            try:
                index, weight = int(key), float(value)
            except (TypeError, ValueError):
                raise ValueError(f"duration model: bad count {key!r}: {value!r}") from None
            if not (0 <= index <= MAX_DURATION_S // BIN_S and math.isfinite(weight)):
                raise ValueError(f"duration model: bad count {key!r}: {value!r}")
            if weight > 0:
                counts[index] = weight
        try:
            model = cls(
                low=float(data["low"]),
                high=float(data["high"]),
                prior_weight=float(data["prior_weight"]),
                max_weight=float(data["max_weight"]),
                counts=counts,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"duration model: {exc}") from None
        model._forget()
        return model

    @classmethod
    def load(
        cls, text: str | None, *, low: float | None = None, high: float | None = None
    ) -> DurationModel:
        """The stored model, or the prior when nothing (or nothing readable) is stored.

        The stored model is only an optimisation, so a damaged value never stops a run: it
        starts from the prior instead. A `low`/`high` given here (the run's configured prior)
        replaces the stored prior and keeps the stored observations.
        """
        model = None
        if text:
            try:
                model = cls.from_json(text)
            except ValueError:
                model = None
        if model is None:
            return cls(low=180.0 if low is None else low, high=300.0 if high is None else high)
        if low is not None or high is not None:
            model = cls(
                low=model.low if low is None else low,
                high=model.high if high is None else high,
                prior_weight=model.prior_weight,
                max_weight=model.max_weight,
                counts=dict(model.counts),
            )
        return model

    # -- the distribution -------------------------------------------------------------------
    def _bandwidth(self) -> float:
        """Half Silverman's rule on the observations (robust spread), within 3 to 30 s."""
        total = self.observations
        if total < 2:
            return 15.0
        centres = sorted(self.counts)
        mean = sum((i + 0.5) * BIN_S * w for i, w in self.counts.items()) / total
        var = sum(((i + 0.5) * BIN_S - mean) ** 2 * w for i, w in self.counts.items()) / total
        q1 = _weighted_quantile(centres, self.counts, 0.25)
        q3 = _weighted_quantile(centres, self.counts, 0.75)
        spread = min(math.sqrt(var), (q3 - q1) / 1.349) if q3 > q1 else math.sqrt(var)
        # Half Silverman's width: the full rule smooths the edges of a flat-topped distribution
        # (uniform 180-300 s) into tails that cost a query per task for nothing.
        return min(30.0, max(3.0, 0.5 * 1.06 * max(spread, 1.0) * total ** (-0.2)))

    def _build_base(self) -> list[float]:
        """Prior and finished tasks on 1 s cells, in observation units (sums to
        prior_weight + observations): mass[i] for durations in [i, i + 1)."""
        sigma = self._bandwidth()
        prior_sigma = max(5.0, 0.05 * (self.high - self.low))
        top = max(
            [self.high + 4 * prior_sigma] + [(i + 1) * BIN_S + 4 * sigma for i in self.counts]
        )
        cells = math.ceil(top) + 1
        mass = [0.0] * cells
        # The prior: uniform on [low, high] smoothed by a Gaussian, at each cell's midpoint.
        prior = [
            _phi((i + 0.5 - self.low) / prior_sigma) - _phi((i + 0.5 - self.high) / prior_sigma)
            for i in range(cells)
        ]
        prior_total = sum(prior)
        for i, p in enumerate(prior):
            mass[i] = self.prior_weight * p / prior_total
        # Each observed bin: a Gaussian kernel, renormalised to its weight over t >= 0.
        reach = math.ceil(4 * sigma)
        for index, weight in self.counts.items():
            centre = (index + 0.5) * BIN_S
            first, last = max(0, int(centre) - reach), min(cells - 1, int(centre) + reach)
            kernel = [
                math.exp(-0.5 * ((i + 0.5 - centre) / sigma) ** 2) for i in range(first, last + 1)
            ]
            scale = weight / sum(kernel)
            for offset, k in enumerate(kernel):
                mass[first + offset] += k * scale
        return mass

    def _censor(self, base: Sequence[float]) -> list[float]:
        """The distribution (mass per 1 s cell, summing to 1) given `base` (prior and
        finished tasks, as events) and the tasks still running (right-censored).

        Kaplan-Meier's product-limit estimate with the prior as `prior_weight` pseudo-events:
        the hazard of cell i is its event mass over the weight still at risk there (every
        event at or after i, every running task known to have run past i), and
        S(i + 1) = S(i) * (1 - hazard). With nothing running this is `base` normalised; with
        many tasks running past 200 s and a few finished before, it keeps most of the mass
        past 200 s, spread there as the prior and the later finished tasks say. A running
        task that has outlived all the event mass leaves its share in the last cell.
        """
        running = self._running
        cells = max(len(base), max(running, default=0) + 1)
        mass = list(base) + [0.0] * (cells - len(base))
        total = sum(mass)
        if not running:
            return [m / total for m in mass]
        # running_after[i]: running tasks known to have outlived cell i (age >= i + 1 s)
        running_after = [0.0] * cells
        outlived = 0.0
        for i in range(cells - 1, -1, -1):
            outlived += running.get(i + 1, 0.0)
            running_after[i] = outlived
        out = [0.0] * cells
        survival, events_left = 1.0, total
        for i, events in enumerate(mass):
            at_risk = events_left + running_after[i]
            if events > 0 and at_risk > 0:
                out[i] = survival * min(1.0, events / at_risk)
                survival -= out[i]
            events_left -= events
        out[-1] += max(0.0, survival)
        return out

    def _grid_from(self, mass: Sequence[float]) -> _Grid:
        cells = len(mass)
        survival = [0.0] * (cells + 1)
        running = 0.0
        for i in range(cells - 1, -1, -1):
            running += mass[i]
            survival[i] = running
        survival = [min(1.0, s / survival[0]) for s in survival]
        low_q = _grid_quantile(survival, RANGE_LOW_Q)
        q1, q3 = _grid_quantile(survival, 0.25), _grid_quantile(survival, 0.75)
        high_q = min(_grid_quantile(survival, RANGE_HIGH_Q), q3 + RANGE_FENCE_IQR * (q3 - q1))
        high_q = max(high_q, low_q + MIN_GAP_S)
        horizon = min(cells, math.ceil(high_q + 2 * TAIL_MAX_GAP_S))
        return _Grid(
            mass=tuple(mass),
            survival=tuple(survival),
            range_low=low_q,
            range_high=high_q,
            horizon=horizon,
            mean=sum(survival[:cells]),
        )

    def _build_grid(self) -> _Grid:
        self._base = self._build_base()
        self._running_moves = 0.0
        return self._grid_from(self._censor(self._base))

    def _fresh_grid(self) -> _Grid:
        stale = self._unplanned > 0 and self._unplanned >= max(
            1.0, REPLAN_SHARE * self.observations
        )
        if stale or self._grid is None or self._base is None:
            self._grid = self._build_grid()
            self._unplanned = 0.0
            self._schedules = {}
        elif self._running_moves >= max(
            1.0, RUNNING_CHECK_SHARE * (self.running_count + self.observations)
        ):
            # The running tasks moved on: a cheap product-limit pass (no kernels, no plan)
            # says whether the distribution moved enough to be worth a new plan.
            self._running_moves = 0.0
            grid = self._grid_from(self._censor(self._base))
            # Past the learned range the plan is a fixed back-off: only the range matters.
            span = math.ceil(min(grid.range_high, self._grid.range_high)) + 1
            new, planned = grid.survival[:span], self._grid.survival[:span]
            moved = max(abs(a - b) for a, b in zip(new, planned, strict=True))
            shifted = abs(grid.range_high - self._grid.range_high)
            if moved >= SURVIVAL_TOLERANCE or shifted >= RANGE_TOLERANCE_S:
                self._grid = grid
                self._schedules = {}
        return self._grid

    def refresh(self) -> None:
        """Rebuild the plan from every observation now (planning is otherwise lazy)."""
        self._grid = None
        self._base = None
        self._fresh_grid()

    def survival(self, elapsed: float) -> float:
        """P(T > elapsed) under the model."""
        return _survival_at(self._fresh_grid().survival, elapsed)

    def quantile(self, q: float) -> float:
        return _grid_quantile(self._fresh_grid().survival, q)

    @property
    def mean(self) -> float:
        """Expected duration, seconds."""
        return self._fresh_grid().mean

    @property
    def learned_range(self) -> tuple[float, float]:
        grid = self._fresh_grid()
        return grid.range_low, grid.range_high

    # -- planning ---------------------------------------------------------------------------
    def schedule(self, lag_target: float = DEFAULT_LAG_TARGET_S) -> Schedule:
        """The query plan that meets `lag_target` (mean lag, seconds) with fewest queries."""
        if not (math.isfinite(lag_target) and lag_target > 0):
            raise ValueError(f"lag target must be a positive number of seconds, got {lag_target}")
        grid = self._fresh_grid()
        cached = self._schedules.get(lag_target)
        if cached is None:
            # A margin while the prior still weighs: it is a guess, and the real distribution
            # may crowd where the prior's plan has its widest gaps (early in the range). Past
            # the ages of the running tasks nothing has finished yet: only the prior (and
            # older tasks) speak there, so running tasks keep the margin up too.
            unsure = self.prior_weight + self.running_count
            share = unsure / (unsure + self.observations)
            aim = lag_target * (1.0 - LAG_MARGIN - PRIOR_MARGIN * share)
            cached, self._log_mu[lag_target] = _calibrate(grid, aim, self._log_mu.get(lag_target))
            cached = replace(cached, lag_target=lag_target)
            self._schedules[lag_target] = cached
        return cached

    def next_query(self, elapsed: float, lag_target: float = DEFAULT_LAG_TARGET_S) -> float:
        """Elapsed time (since submission) of the next query after one at `elapsed`."""
        return self.schedule(lag_target).next_query(elapsed)

    # -- estimates --------------------------------------------------------------------------
    def expected_remaining(self, elapsed: float) -> float:
        """Expected seconds until a task that has run `elapsed` seconds ends.

        E[T - e | T > e]. Past everything learned the model cannot say; it answers the tail
        gap (the task is late: "any moment now", as far as it knows).
        """
        grid = self._fresh_grid()
        e = max(0.0, elapsed)
        alive = _survival_at(grid.survival, e)
        if alive < 1e-6:
            return self.schedule().tail_gap(e)
        start = int(e)
        area = (start + 1 - e) * _survival_at(grid.survival, (start + e + 1) / 2)
        area += sum(grid.survival[start + 1 : len(grid.mass)])
        return max(area / alive, 0.0)

    def eta(
        self,
        rows_left: int,
        concurrency: int,
        in_flight: Sequence[float] = (),
        *,
        per_row_s: float | None = None,
    ) -> float:
        """Seconds until the last row is done: `in_flight` elapsed times of tasks running,
        `rows_left` rows not yet submitted, at most `concurrency` at once.

        Each slot frees when its task is expected to end (plus the detection lag) and takes
        the next row, which lasts `per_row_s` (default: mean duration + lag target). Rows
        left are dealt to slots in rounds (one per slot per round, the last round partial),
        a fluid approximation of refilling slots one by one that is exact when the slots
        free together, and cheap at 100,000 rows.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        lag = self.schedule().expected_lag
        row = self.mean + lag if per_row_s is None else per_row_s
        free = sorted(self.expected_remaining(e) + lag for e in in_flight)
        slots = sorted(([0.0] * max(0, concurrency - len(free)) + free)[-concurrency:])
        if rows_left <= 0:
            return max(slots, default=0.0)
        rounds, extra = divmod(rows_left, concurrency)
        ends = [s + rounds * row + (row if k < extra else 0.0) for k, s in enumerate(slots)]
        return max(max(ends), max(slots))


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _weighted_quantile(indices: list[int], counts: dict[int, float], q: float) -> float:
    total = sum(counts[i] for i in indices)
    running = 0.0
    for i in indices:
        running += counts[i]
        if running >= q * total:
            return (i + 0.5) * BIN_S
    return (indices[-1] + 0.5) * BIN_S


def _survival_at(survival: Sequence[float], t: float) -> float:
    if t <= 0:
        return 1.0
    i = int(t)
    if i >= len(survival) - 1:
        return 0.0
    return survival[i] + (t - i) * (survival[i + 1] - survival[i])


def _grid_quantile(survival: Sequence[float], q: float) -> float:
    """Smallest t with P(T <= t) >= q, interpolated within a cell."""
    target = 1.0 - q
    for i in range(len(survival) - 1):
        if survival[i + 1] <= target:
            drop = survival[i] - survival[i + 1]
            return i + ((survival[i] - target) / drop if drop > 0 else 0.0)
    return float(len(survival) - 1)


def _evaluate(grid: _Grid, times: Sequence[float], edge_gap: float) -> tuple[float, float]:
    """(expected queries, mean detection lag) of a plan plus its tail, over the model."""
    probe = Schedule(tuple(times), grid.range_low, grid.range_high, edge_gap, 0.0, 0.0, 0.0)
    queries = 1.0
    lag = 0.0
    horizon = grid.horizon
    query = times[0] if times else probe.next_query(0.0)
    previous = 0.0
    i = 0
    while i < horizon:
        # Cells up to this query are detected by it.
        while i < horizon and i + 0.5 <= query:
            lag += grid.mass[i] * (query - (i + 0.5))
            i += 1
        if i >= horizon:
            break
        # The task was alive at `query`: another one follows.
        queries += _survival_at(grid.survival, query)
        previous, query = query, probe.next_query(query)
        if query <= previous:  # cannot happen (gaps >= MIN_GAP_S); guards the loop
            query = previous + MIN_GAP_S
    return queries, lag


def _tail_costs(grid: _Grid, first: int, last: int) -> tuple[list[float], list[float]]:
    """(queries, lag) still to come after a query at each second first..last, on the tail."""
    probe = Schedule((), grid.range_low, grid.range_high, MIN_GAP_S, 0.0, 0.0, 0.0)
    queries, lags = [], []
    for start in range(first, last + 1):
        count, lag = 0.0, 0.0
        i, query = start, float(start)
        while i < grid.horizon:
            count += grid.survival[min(i, len(grid.survival) - 1)] if query == start else 0.0
            previous, query = query, probe.next_query(query)
            while i < grid.horizon and i + 0.5 <= query:
                lag += grid.mass[i] * (query - (i + 0.5))
                i += 1
            if i < grid.horizon:
                count += _survival_at(grid.survival, query) if query != previous else 0.0
        queries.append(count)
        lags.append(lag)
    return queries, lags


class _Optimiser:
    """The exact discrete problem the sqrt rule approximates, solved by dynamic programming.

    Query times are whole seconds. After a query at t (the task alive there with
    probability S(t)), the next one at u costs S(t) queries and mu * sum over the cells
    t..u-1 of mass * (u - midpoint) lag-seconds. W(t), the cheapest cost still to come,
    is min over u of that plus W(u), with u - t in [MIN_GAP_S, MAX_GAP_S] (before the
    learned range: up to MAX_GAP_S past its start); from the range's end on, the tail's
    back-off takes over, so W there is the tail's cost. The first query t0 minimises
    1 + mu * lag(0, t0) + W(t0). Where the continuum applies this reproduces the rule
    gap = sqrt(2 S / (mu f)); near the range's end, where gaps are as long as the time left,
    it is exact where the rule is not (3.2 rather than 3.4 queries on uniform 180-300 s).
    """

    def __init__(self, grid: _Grid) -> None:
        self.grid = grid
        cells = len(grid.mass)
        self.cum_mass = [0.0] * (cells + 1)
        self.cum_moment = [0.0] * (cells + 1)
        for i, m in enumerate(grid.mass):
            self.cum_mass[i + 1] = self.cum_mass[i] + m
            self.cum_moment[i + 1] = self.cum_moment[i] + m * (i + 0.5)
        self.end = min(cells, math.ceil(grid.range_high))  # first second on the tail
        self.begin = max(int(MIN_GAP_S), math.floor(grid.range_low) - int(MAX_GAP_S))
        self.end = max(self.end, self.begin + 1)
        self.first_last = min(self.end, math.floor(grid.range_low + MAX_GAP_S))
        span = int(MAX_GAP_S) + max(0, math.ceil(grid.range_low) - self.begin)
        self.tail_from, self.tail_to = self.end, self.end + span
        self.tail_queries, self.tail_lags = _tail_costs(grid, self.tail_from, self.tail_to)

    def _lag(self, t: int, u: int) -> float:
        cm, mo = self.cum_mass, self.cum_moment
        top = min(u, len(cm) - 1)
        low = min(t, top)
        return u * (cm[top] - cm[low]) - (mo[top] - mo[low])

    def plan(self, mu: float) -> tuple[list[float], list[float]]:
        """(the path of query times from the best first one, the best next query after one
        at each second begin..end-1)."""
        grid, begin, end = self.grid, self.begin, self.end
        cm, mo, survival = self.cum_mass, self.cum_moment, grid.survival
        top = len(cm) - 1
        size = self.tail_to + 1
        cost = [0.0] * size
        choice = [0] * size
        for u in range(self.tail_from, size):
            k = u - self.tail_from
            cost[u] = self.tail_queries[k] + mu * self.tail_lags[k]
        low_gap, high_gap = int(MIN_GAP_S), int(MAX_GAP_S)
        range_low = grid.range_low
        for t in range(end - 1, begin - 1, -1):
            alive = survival[t]
            cm_t, mo_t = cm[min(t, top)], mo[min(t, top)]
            reach = int(max(t, range_low) + high_gap - t)
            best, best_u = math.inf, t + low_gap
            for u in range(t + low_gap, min(t + reach, size - 1) + 1):
                v = min(u, top)
                value = alive + mu * (u * (cm[v] - cm_t) - (mo[v] - mo_t)) + cost[u]
                if value < best:
                    best, best_u = value, u
            cost[t], choice[t] = best, best_u
        first, first_cost = begin, math.inf
        for t0 in range(begin, self.first_last + 1):
            value = mu * self._lag(0, t0) + cost[t0]
            if value < first_cost:
                first, first_cost = t0, value
        times = [float(first)]
        t = first
        while t < end:
            t = choice[t]
            times.append(float(t))
        return times, [float(u) for u in choice[begin:end]]


def _calibrate(grid: _Grid, lag_target: float, hint: float | None = None) -> tuple[Schedule, float]:
    """Bisect the price of lag, log mu, so the optimal plan's mean lag just meets the target.

    Lag falls as mu rises. `hint` (the last log mu found) narrows the bracket: a model that
    learned a few more tasks needs a mu close to the one before. Returns the log mu too.
    """
    optimiser = _Optimiser(grid)

    def build(log_mu: float) -> tuple[tuple[list[float], list[float]], float, float]:
        plan = optimiser.plan(math.exp(log_mu))
        queries, lag = _evaluate(grid, plan[0], MIN_GAP_S)
        return plan, queries, lag

    low, high, steps = math.log(1e-4), math.log(1e3), 16
    best = None
    if hint is not None and low < hint < high:
        near_low, near_high = max(low, hint - 1.0), min(high, hint + 1.0)
        upper = build(near_high)
        if upper[2] <= lag_target and build(near_low)[2] > lag_target:
            low, high, best, steps = near_low, near_high, upper, 9
    if best is None:
        best = build(high)
        if best[2] > lag_target:
            steps = 0  # even the densest plan misses the target: use it
    for _ in range(steps):
        middle = (low + high) / 2
        candidate = build(middle)
        if candidate[2] <= lag_target:
            high, best = middle, candidate
        else:
            low = middle
    (times, policy), queries, lag = best
    return Schedule(
        times=tuple(times),
        range_low=grid.range_low,
        range_high=grid.range_high,
        edge_gap=MIN_GAP_S,
        expected_queries=queries,
        expected_lag=lag,
        lag_target=lag_target,
        steps=tuple(policy),
        steps_from=optimiser.begin,
    ), high
