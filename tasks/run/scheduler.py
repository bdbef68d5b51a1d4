"""One poll scheduler per run: every task in flight on one heap, queried under one rate cap.

A row does not sleep in its own loop. `PollScheduler.track` puts the task on a heap keyed by
when it should next be queried; one dispatcher coroutine hands due tasks to a small pool of
workers (`workers`, default 16), and every query waits for a turn of one global rate limit
(`max_queries_per_s`, default 4). So the loop holds a fixed number of coroutines and one timer
whether 10 or 100,000 rows are in flight, and the API never sees more than the cap.

When to query comes from `tasks.run.duration`: the model's plan for `lag_target` (mean
detection lag, default 10 s), or, with `fixed=FixedSchedule(initial_delay, interval)` (an
explicit `--poll-initial-delay` / `--poll-interval`), exactly that: the first query
`initial_delay` after submission (by the wall clock that recorded it), then `interval` after
each answer, any value above zero (the sandbox and tests go below 5 s).

The deadline (monotonic, on the loop's clock, which is `time.monotonic()` in any standard
asyncio loop) bounds each watch: every task is queried at least once; an adaptive watch gets
a last query at its deadline when the plan would pass it; a fixed one ends when the next wait
would pass it (as the poll loop always did). Then the watch raises `PollTimeout`. The rate cap
may hold a due query back, so a watch can end a little after its deadline, never before; a
watch already asked about that is held past its deadline by a pause (after a 429 or 503)
ends at the deadline instead.

What a query raises:
* a transient error (`TRANSIENT`: transport, 5xx, 429, no answer in time) is a missed poll:
  the task stays on its schedule, and a task whose queries keep failing waits twice as long
  after each failure (up to 120 s), so an API that is down is not hammered;
* a 429 or a 503 also slows everyone: the rate halves (never below `MIN_RATE`, once per
  pause however many answers say so), every query waits out a pause of Retry-After
  (a 429's hint, else 5 s; at most 120 s), and each answered query gives back a tenth of
  the configured rate (additive increase, multiplicative decrease). A watch whose deadline
  falls inside a pause ends there, or, never asked about yet, gets its one query of the run
  then (under the rate only);
* anything else (401/403, 404, an answer we cannot parse, a bug) fails that watch alone with
  the error: the caller decides whether it stops the run (`fail_all` ends every watch).

Each finished task that completed teaches the model its true duration (`completed - created`,
see `duration.duration_of`) unless `learn=False`; failed and cancelled tasks do not (a
moderation refusal after 5 s says nothing of generation time, and noticing one late costs no
money). Every answer that finds a task still running tells the model its age
(`DurationModel.running`, a right-censored duration), and a watch that ends, however it ends,
leaves that count. `stats` counts queries, answers, failures, throttles and detection lags (elapsed
time when the answer came minus the true duration) for the progress artifact and the bench.

Wiring in a poll step (one scheduler for the whole run, created where the client is):

    async with PollScheduler(query=client.get_task, model=model, fixed=fixed,
                             max_queries_per_s=opts.max_queries_per_s,
                             lag_target=opts.poll_lag_target, check=runtime.gate.check) as s:
        watch = s.track(task_id, submitted_at=record.submitted_at, deadline=deadline)
        try:
            task = await watch                  # the terminal apimart.models.Task
        except PollTimeout as exc:              # exc.last_task, exc.queries, exc.problem
            ...
        polls = (record.polls or 0) + watch.queries

`VirtualTimeLoop` at the end is an event loop whose clock jumps to the next timer when
nothing is ready: the benchmark and the tests run hours of polling in milliseconds with it,
deterministically, through this same code.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import selectors
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from apimart import spec
from apimart.errors import RateLimitError, ServerError, TransportError
from apimart.models import Task
from tasks.run.duration import (
    DEFAULT_LAG_TARGET_S,
    MIN_GAP_S,
    DurationModel,
    Schedule,
    duration_of,
)

DEFAULT_MAX_QUERIES_PER_S = 4.0
DEFAULT_WORKERS = 16
# What a later try could cure; anything else fails the watch at once.
TRANSIENT: tuple[type[BaseException], ...] = (
    TransportError,
    ServerError,
    RateLimitError,
    TimeoutError,
)
# A query gets at least this long, even at its deadline: every task is asked about once.
MIN_QUERY_S = 2.0
# The slowest a run of 429s can push the query rate, and the pauses they ask for.
MIN_RATE = 0.05
DEFAULT_PAUSE_S = 5.0
MAX_PAUSE_S = 120.0
# After failed queries of one task its wait doubles up to this.
MAX_FAILED_WAIT_S = 120.0
# Waits shorter than this are not waited: a sleep of less than the clock's rounding can end
# at the very time it began, and waiting for it again would spin.
_EPSILON_S = 1e-6


@dataclass(frozen=True)
class FixedSchedule:
    """A pinned schedule: first query `initial_delay` after submission, then `interval`
    after each answer. Honoured exactly, below 5 s too."""

    initial_delay: float
    interval: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial_delay) and self.initial_delay >= 0):
            raise ValueError(f"poll initial delay must be >= 0 s, got {self.initial_delay!r}")
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"poll interval must be > 0 s, got {self.interval!r}")


class PollTimeout(TimeoutError):
    """A watch reached its deadline with the task still running (or never answered for)."""

    def __init__(
        self, task_id: str, *, last_task: Task | None, queries: int, problem: str | None
    ) -> None:
        self.task_id = task_id
        self.last_task = last_task
        self.queries = queries
        self.problem = problem
        state = f"still {last_task.status}" if last_task else "no answer about it"
        message = f"task {task_id}: {state} at the polling deadline after {queries} queries"
        if problem:
            message += f"; the last query failed: {problem}"
        super().__init__(message)


class SchedulerClosed(RuntimeError):
    """The scheduler closed (or was never opened) while a watch was pending."""


class Watch:
    """One task being watched. Await it for the terminal `Task`; read its counters."""

    __slots__ = (
        "alive_at",
        "deadline",
        "failures",
        "future",
        "lag",
        "last_task",
        "origin",
        "problem",
        "queries",
        "sent",
        "task_id",
    )

    def __init__(self, task_id: str, origin: float, deadline: float, future: asyncio.Future[Task]):
        self.task_id = task_id
        self.origin = origin  # loop time of submission
        self.deadline = deadline
        self.future = future
        self.queries = 0  # answered queries (the ledger's `polls`)
        self.sent = 0  # queries sent, failed ones included
        self.failures = 0  # failed queries in a row
        self.problem: str | None = None
        self.last_task: Task | None = None
        self.lag: float | None = None  # detection lag, once finished
        # seconds since submission when a query last found the task running (the model
        # counts it as running at least that long)
        self.alive_at: float | None = None

    def __await__(self) -> Generator[Any, None, Task]:
        return self.future.__await__()

    def done(self) -> bool:
        return self.future.done()


@dataclass
class PollStats:
    """What the scheduler did, for the progress artifact and the bench."""

    queries: int = 0  # sent
    answers: int = 0
    failures: int = 0
    throttled: int = 0  # 429/503 answers that slowed the rate
    finished: int = 0  # terminal tasks seen
    completed: int = 0
    timeouts: int = 0
    errors: int = 0  # watches failed by a non-transient error
    lags: list[float] = field(default_factory=list)

    @property
    def mean_lag(self) -> float | None:
        return sum(self.lags) / len(self.lags) if self.lags else None

    def lag_quantile(self, q: float) -> float | None:
        if not self.lags:
            return None
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def snapshot(self) -> dict[str, float | int | None]:
        return {
            "queries": self.queries,
            "answers": self.answers,
            "failures": self.failures,
            "throttled": self.throttled,
            "finished": self.finished,
            "completed": self.completed,
            "timeouts": self.timeouts,
            "queries_per_finished": self.queries / self.finished if self.finished else None,
            "mean_lag_s": self.mean_lag,
            "p95_lag_s": self.lag_quantile(0.95),
        }


def _failed_wait(base: float, failures: int) -> float:
    return min(base * 2 ** (failures - 1), max(base, MAX_FAILED_WAIT_S))


class PollScheduler:
    """Watches every task of a run on one heap under one query-rate cap (module docstring).

    `query` is an async callable task_id -> Task (the client's `get_task`). `wall` is the
    clock `submitted_at` was read from (epoch seconds); the loop's own clock measures the
    rest. `check`, if given, runs before each query; if it raises (a stopped run), every
    pending watch fails with that error. `observer(watch, answer_or_error)` sees every
    query's outcome (for logs); an error in it fails that watch.
    """

    def __init__(
        self,
        query: Callable[[str], Awaitable[Task]],
        model: DurationModel | None = None,
        *,
        max_queries_per_s: float = DEFAULT_MAX_QUERIES_PER_S,
        lag_target: float = DEFAULT_LAG_TARGET_S,
        fixed: FixedSchedule | None = None,
        workers: int = DEFAULT_WORKERS,
        learn: bool = True,
        transient: tuple[type[BaseException], ...] = TRANSIENT,
        check: Callable[[], None] | None = None,
        observer: Callable[[Watch, Task | BaseException], None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(max_queries_per_s) and max_queries_per_s > 0):
            raise ValueError(f"max queries per second must be > 0, got {max_queries_per_s!r}")
        if not (math.isfinite(lag_target) and lag_target > 0):
            raise ValueError(f"poll lag target must be > 0 s, got {lag_target!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._query_fn = query
        self.model = model if model is not None else DurationModel()
        self.max_rate = float(max_queries_per_s)
        self.rate = self.max_rate
        self.lag_target = float(lag_target)
        self.fixed = fixed
        self._workers_n = workers
        self._learn = learn
        self._transient = transient
        self._check = check
        self._observer = observer
        self._wall = wall
        self.stats = PollStats()
        self._heap: list[tuple[float, int, Watch]] = []
        self._seq = itertools.count()
        self._active: set[Watch] = set()
        self._next_slot = -math.inf
        self._paused_until = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._queue: asyncio.Queue[Watch] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> PollScheduler:
        if self._loop is not None:
            raise RuntimeError("a PollScheduler is entered once")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._queue = asyncio.Queue(maxsize=self._workers_n)
        self._tasks = [self._loop.create_task(self._dispatch(), name="poll-dispatch")]
        self._tasks += [
            self._loop.create_task(self._work(), name=f"poll-worker-{n}")
            for n in range(self._workers_n)
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.fail_all(SchedulerClosed("the poll scheduler closed before this task ended"))

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # -- the public face --------------------------------------------------------------------
    def track(self, task_id: str, *, submitted_at: float | None, deadline: float) -> Watch:
        """Start watching a task; await the returned `Watch` for its terminal `Task`.

        `submitted_at`: wall-clock epoch seconds of the submission (None: just now; a time in
        our future counts as now). `deadline`: loop time (monotonic) when the watch gives up.
        """
        if self._loop is None or self._closed:
            raise SchedulerClosed("the poll scheduler is not open (use `async with`)")
        now = self._now()
        since = 0.0 if submitted_at is None else max(0.0, self._wall() - submitted_at)
        watch = Watch(task_id, now - since, deadline, self._loop.create_future())
        if self.fixed is not None:
            due = now + max(0.0, self.fixed.initial_delay - since)
        else:
            due = watch.origin + self._schedule().first_query(since)
        self._active.add(watch)
        self._push(min(due, deadline), watch)
        return watch

    async def watch(self, task_id: str, *, submitted_at: float | None, deadline: float) -> Task:
        """`track` and wait: the terminal Task, or PollTimeout / the query's own error."""
        return await self.track(task_id, submitted_at=submitted_at, deadline=deadline)

    def forget(self, watch: Watch) -> None:
        """Stop watching (its caller went away, cancelled): no further query, not in flight."""
        self._drop(watch)
        if not watch.future.done():
            watch.future.cancel()

    def fail_all(self, error: BaseException) -> None:
        """End every pending watch with `error` (a stopped run)."""
        for watch in list(self._active):
            self._fail(watch, error)

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def ages(self) -> list[float]:
        """Seconds since submission of every task in flight."""
        now = self._now()
        return [now - w.origin for w in self._active]

    def eta(self, rows_left: int, concurrency: int) -> float:
        """Expected seconds until the last row ends: the tasks in flight, then `rows_left`
        more at `concurrency` at once (`DurationModel.eta`)."""
        return self.model.eta(rows_left, concurrency, self.ages())

    # -- scheduling -------------------------------------------------------------------------
    def _schedule(self) -> Schedule:
        return self.model.schedule(self.lag_target)

    def _push(self, due: float, watch: Watch) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), watch))
        assert self._wake is not None
        self._wake.set()

    def _reschedule(self, watch: Watch) -> None:
        now = self._now()
        if self.fixed is not None:
            wait = self.fixed.interval
            if watch.failures:
                wait = _failed_wait(self.fixed.interval, watch.failures)
            due = now + wait
            if due > watch.deadline:
                self._time_out(watch)
                return
        else:
            due = watch.origin + self._schedule().next_query(now - watch.origin)
            if watch.failures:
                due = max(due, now + _failed_wait(MIN_GAP_S, watch.failures))
            if due >= watch.deadline:
                # One last look at the deadline, unless that would follow this one at once.
                if watch.deadline - now < MIN_GAP_S:
                    self._time_out(watch)
                    return
                due = watch.deadline
        self._push(due, watch)

    async def _dispatch(self) -> None:
        assert self._wake is not None and self._queue is not None
        heap = self._heap
        while True:
            while heap and heap[0][2].done():
                heapq.heappop(heap)
            if not heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = heap[0][0] - self._now()
            if delay > _EPSILON_S:
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            _, _, watch = heapq.heappop(heap)
            await self._queue.put(watch)

    async def _turn(self, watch: Watch) -> bool:
        """Wait for a slot of the global rate and out of any pause; False when a pause
        outlasts the deadline of a watch asked about already (the pause must neither hold
        the row past its deadline nor be broken for one more query of it). A watch never
        asked about gets its one query of the run at its deadline, under the rate only.

        The slot is taken when the worker is awake and about to query, never reserved ahead:
        a worker woken late cannot then crowd the next one, so queries really start at least
        1/rate apart. Workers waiting for the same slot wake together and all but one sleep on.
        """
        while True:
            now = self._now()
            paused = self._paused_until - now > _EPSILON_S
            start = max(self._next_slot, self._paused_until)
            if paused and now >= watch.deadline:
                if watch.sent:
                    return False
                start = self._next_slot
            if start - now <= _EPSILON_S:
                self._next_slot = now + 1.0 / self.rate
                return True
            wake = start
            if paused and now < watch.deadline:
                wake = min(start, max(watch.deadline, now + _EPSILON_S))
            await asyncio.sleep(wake - now)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            watch = await self._queue.get()
            if watch.done():
                continue
            if not await self._turn(watch):
                if not watch.done():
                    self._time_out(watch)
                continue
            if watch.done():
                continue
            try:
                await self._query(watch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not leave the row waiting forever
                self._fail(watch, exc)

    async def _query(self, watch: Watch) -> None:
        if self._check is not None:
            try:
                self._check()
            except Exception as exc:
                self.fail_all(exc)
                return
        self.stats.queries += 1
        watch.sent += 1
        # A task that answers "running" was running when the query left.
        asked_at = self._now() - watch.origin
        try:
            async with asyncio.timeout(max(watch.deadline - self._now(), MIN_QUERY_S)):
                task = await self._query_fn(watch.task_id)
        except asyncio.CancelledError:
            raise
        except self._transient as exc:
            self.stats.failures += 1
            watch.failures += 1
            watch.problem = str(exc) or "no answer in time"
            if isinstance(exc, RateLimitError) or (
                isinstance(exc, ServerError) and exc.status_code == 503
            ):
                self._throttle(exc)
            self._observe(watch, exc)
            if not watch.done():
                self._reschedule(watch)
        except Exception as exc:
            self.stats.errors += 1
            self._fail(watch, exc)
        else:
            self.stats.answers += 1
            watch.queries += 1
            watch.failures, watch.problem, watch.last_task = 0, None, task
            self.rate = min(self.max_rate, self.rate + self.max_rate / 10)
            self._observe(watch, task)
            if watch.done():
                return
            if task.is_terminal:
                self._finish(watch, task)
            else:
                self._still_running(watch, asked_at)
                self._reschedule(watch)

    def _observe(self, watch: Watch, outcome: Task | BaseException) -> None:
        if self._observer is None:
            return
        try:
            self._observer(watch, outcome)
        except Exception as exc:
            self._fail(watch, exc)

    def _throttle(self, exc: BaseException) -> None:
        now = self._now()
        self.stats.throttled += 1
        # One slow-down per pause: the queries in flight when the API pushed back (and first
        # queries during the pause) answer the same 429/503, and halving for each of them
        # would drop the rate to its floor on one event.
        if self._paused_until <= now:
            self.rate = max(MIN_RATE, self.rate / 2)
        hint = exc.retry_after if isinstance(exc, RateLimitError) else None
        pause = min(MAX_PAUSE_S, DEFAULT_PAUSE_S if hint is None else hint)
        self._paused_until = max(self._paused_until, now + pause)

    def _still_running(self, watch: Watch, age: float) -> None:
        """Tell the model this task has run at least `age` seconds (a censored duration)."""
        if self._learn and (watch.alive_at is None or age > watch.alive_at):
            self.model.running(watch.alive_at, age)
            watch.alive_at = age

    def _drop(self, watch: Watch) -> None:
        """No longer in flight: neither on the heap's live set nor counted as running."""
        self._active.discard(watch)
        if watch.alive_at is not None:
            self.model.running(watch.alive_at, None)
            watch.alive_at = None

    # -- endings ----------------------------------------------------------------------------
    def _finish(self, watch: Watch, task: Task) -> None:
        self.stats.finished += 1
        seconds = duration_of(task)
        # Out of the running tasks first: the same task is not counted twice by the model.
        self._drop(watch)
        if task.status == spec.STATUS_COMPLETED:
            self.stats.completed += 1
            if self._learn and seconds is not None:
                self.model.learn(seconds)
        if seconds is not None:
            watch.lag = max(0.0, (self._now() - watch.origin) - seconds)
            self.stats.lags.append(watch.lag)
        watch.future.set_result(task)

    def _time_out(self, watch: Watch) -> None:
        self.stats.timeouts += 1
        self._fail(
            watch,
            PollTimeout(
                watch.task_id,
                last_task=watch.last_task,
                queries=watch.queries,
                problem=watch.problem,
            ),
        )

    def _fail(self, watch: Watch, error: BaseException) -> None:
        self._drop(watch)
        if not watch.future.done():
            watch.future.set_exception(error)


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, instead of blocking, moves its loop's clock to the next timer."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._virtual_loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ready: list[tuple[Any, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual-time loop: nothing is scheduled and nothing can happen")
        self._virtual_loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on simulated time: when nothing is ready, its clock jumps to the next
    timer. Sleeps, timeouts and the scheduler's waits cost no real time, and a run is
    deterministic. Nothing may wait on real I/O or threads here (such a wait would be
    skipped past); a loop with nothing left to wake it raises instead of hanging.

        loop = VirtualTimeLoop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    """

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = float(start)
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += max(0.0, seconds)
