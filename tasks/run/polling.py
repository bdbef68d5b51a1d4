"""The run's one poll scheduler: built from the options, learning from the folder's tasks.

`open_poller(runtime)` wraps the rows of a run (the flow's chunk run): it builds one
`PollScheduler` over the client's `get_task`, restores the duration model this folder learned
in earlier runs (the ledger's meta key `DurationModel.META_KEY`, under the run's configured
prior), sets `runtime.poller`, and writes the model back every `PERSIST_EVERY_S` seconds while
tasks finish and once more at exit, whether the run ended, was stopped or was cancelled. The
stored model is an optimisation only: one that cannot be read starts from the prior, and one
that cannot be written is logged, never allowed to stop a run that is spending money.

The schedule: with neither `poll_interval` nor `poll_initial_delay` set, adaptive (the model's
plan for `poll_lag_target`); either one given pins `FixedSchedule`, honoured exactly as given
(the interval alone also sets the initial delay; the delay alone polls every
`DEFAULT_FIXED_INTERVAL_S` after it, the old default).

What a query may fail with and still be retried is `TRANSIENT` (what the poll step always
rode out), so behaviour on errors is what it was; anything else fails that row's watch and
the poll step decides (a 401 or 403 stops the run).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from apimart.errors import ProtocolError, RateLimitError, ServerError, TransportError
from apimart.models import Task
from tasks.run.duration import DurationModel
from tasks.run.scheduler import DEFAULT_WORKERS, FixedSchedule, PollScheduler, Watch

if TYPE_CHECKING:
    from tasks.run.options import RunOptions
    from tasks.run.runtime import Runtime

# A query that failed so is a missed poll; a later one could succeed.
TRANSIENT_ERRORS = (
    TransportError,
    ServerError,
    ProtocolError,
    RateLimitError,
)
# ... and so is a query that got no answer before its share of the row's deadline.
TRANSIENT = (*TRANSIENT_ERRORS, TimeoutError)
# With only --poll-initial-delay given, queries follow it this often (the old default).
DEFAULT_FIXED_INTERVAL_S = 8.0
# How often the learned model is written to the ledger while tasks finish: a crash loses at
# most this much learning, and a 100,000-row run writes the key a few hundred times at most.
PERSIST_EVERY_S = 30.0
# A step called outside a run's poller (a test, a script) polls through a private one this
# small: one row needs no pool.
PRIVATE_WORKERS = 1


def fixed_schedule(options: RunOptions) -> FixedSchedule | None:
    """The pinned schedule the options ask for, or None for adaptive polling."""
    interval, initial = options.poll_interval, options.poll_initial_delay
    if interval is None and initial is None:
        return None
    if interval is None:
        interval = DEFAULT_FIXED_INTERVAL_S
    return FixedSchedule(initial_delay=interval if initial is None else initial, interval=interval)


def stored_model(stored: str | None, options: RunOptions) -> DurationModel:
    """The model a folder (or shared batch) learned, as its ledger's meta key
    `DurationModel.META_KEY` holds it (`stored`), under the run's configured prior; the
    prior alone when nothing (readable) is stored yet."""
    return DurationModel.load(
        stored, low=options.poll_duration_low, high=options.poll_duration_high
    )


def restore_model(runtime: Runtime) -> DurationModel:
    """The model this folder learned (ledger meta), under the run's configured prior."""
    return stored_model(runtime.ledger.meta(DurationModel.META_KEY), runtime.options)


def describe(scheduler: PollScheduler) -> str:
    """The polling mode in words, for the run's first log lines."""
    model = scheduler.model
    learned = round(model.observations)
    source = (
        f"durations learned from {learned} tasks of this folder"
        if learned
        else f"duration prior {model.low:g}-{model.high:g} s, nothing learned yet"
    )
    fixed = scheduler.fixed
    if fixed is not None:
        return (
            f"polling: fixed interval {fixed.interval:g} s (first query "
            f"{fixed.initial_delay:g} s after submitting); {source}, for the ETA"
        )
    return (
        f"polling: adaptive ({source}; mean lag target {scheduler.lag_target:g} s, "
        f"at most {scheduler.max_rate:g} queries/s)"
    )


def persist(runtime: Runtime, model: DurationModel) -> bool:
    """Write the model to the ledger; False (logged) when the ledger refused."""
    from tasks.run.runtime import run_logger

    try:
        runtime.ledger.set_meta(DurationModel.META_KEY, model.to_json())
    except Exception as exc:  # an optimisation: never worth stopping a paid run for
        run_logger().warning("could not store the learned task durations: %s", exc)
        return False
    return True


def _observer(runtime: Runtime) -> Callable[[Watch, Task | BaseException], None]:
    """Log lines for what a query saw, naming the row and the task."""
    from tasks.run.runtime import run_logger

    warned: set[tuple[str, str]] = set()

    def observe(watch: Watch, outcome: Task | BaseException) -> None:
        row_id = runtime.polling_rows.get(watch.task_id, "?")
        if isinstance(outcome, BaseException):
            run_logger().warning(
                "row %s: query of task %s failed (%s); polling on until the deadline",
                row_id,
                watch.task_id,
                str(outcome) or "no answer before the polling deadline",
            )
            return
        seen = (watch.task_id, outcome.status)
        if not (outcome.is_terminal or outcome.is_known_status or seen in warned):
            warned.add(seen)
            run_logger().warning(
                "row %s: task %s has unknown status %r, still waiting",
                row_id,
                watch.task_id,
                outcome.status,
            )

    return observe


def build_scheduler(runtime: Runtime, *, workers: int | None = None) -> PollScheduler:
    """A scheduler for `runtime`'s run as its options ask (not yet entered)."""
    options = runtime.options
    return PollScheduler(
        query=runtime.client.get_task,
        model=restore_model(runtime),
        fixed=fixed_schedule(options),
        max_queries_per_s=options.max_queries_per_s,
        lag_target=options.poll_lag_target,
        transient=TRANSIENT,
        check=runtime.gate.check,
        observer=_observer(runtime),
        workers=DEFAULT_WORKERS if workers is None else workers,
    )


async def _persist_while_running(runtime: Runtime, scheduler: PollScheduler) -> None:
    written = scheduler.stats.completed
    while True:
        await asyncio.sleep(PERSIST_EVERY_S)
        if scheduler.stats.completed != written:
            written = scheduler.stats.completed
            persist(runtime, scheduler.model)


@contextlib.asynccontextmanager
async def open_poller(runtime: Runtime) -> AsyncIterator[PollScheduler]:
    """The run's one scheduler, as `runtime.poller` while the block runs (module docstring)."""
    from tasks.run.runtime import run_logger

    if runtime.poller is not None:
        raise RuntimeError("this run already has a poller")
    scheduler = build_scheduler(runtime)
    run_logger().info(describe(scheduler))
    async with scheduler:
        keeper = asyncio.create_task(
            _persist_while_running(runtime, scheduler), name="poll-model-keeper"
        )
        runtime.poller = scheduler
        try:
            yield scheduler
        finally:
            runtime.poller = None
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(keeper, return_exceptions=True)
            # Whatever ended the block (the end, a stop, a cancellation): keep what was learned.
            if scheduler.stats.completed:
                persist(runtime, scheduler.model)


@contextlib.asynccontextmanager
async def private_poller(runtime: Runtime) -> AsyncIterator[PollScheduler]:
    """A scheduler for one step called outside a run's poller (a test, a script).

    It never writes the model: several such steps at once would each overwrite what the
    others learned with less.
    """
    async with build_scheduler(runtime, workers=PRIVATE_WORKERS) as scheduler:
        yield scheduler


def eta_seconds(
    model: DurationModel, *, unfinished: int, running: Sequence[float], concurrency: int
) -> float:
    """Seconds until the last of `unfinished` rows is done: the tasks running (`running`,
    seconds since each was submitted) end as the duration model expects for their age, and
    the rest start as slots free, at most `concurrency` at once (`DurationModel.eta`).

    The one ETA of a run: the progress artifact (`eta_of`, from the scheduler's watches) and
    the command line's progress line (from the ledger) both say this. It comes from the
    model, not from recent throughput, which the first wave makes meaningless (every slot
    submitted at once, nothing finished for minutes). More tasks running than rows unfinished
    (a view a moment old) keeps the youngest: the oldest are likeliest to have ended.
    """
    if unfinished <= 0:
        return 0.0
    ages = sorted(max(0.0, age) for age in running)[:unfinished]
    return model.eta(unfinished - len(ages), max(1, concurrency), ages)


def eta_clock(seconds: float) -> str:
    """An ETA as the command line prints it: "45s", "4m10s", "2h05m"."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def eta_of(runtime: Runtime) -> Callable[[int], float | None]:
    """ETA in seconds for `unfinished` rows of this run (for the progress artifact): the
    tasks being polled, then the rest at the concurrency cap (`eta_seconds`)."""

    def eta(unfinished: int) -> float | None:
        scheduler = runtime.poller
        if scheduler is None:
            return None
        return eta_seconds(
            scheduler.model,
            unfinished=unfinished,
            running=scheduler.ages(),
            concurrency=runtime.options.concurrency,
        )

    return eta
