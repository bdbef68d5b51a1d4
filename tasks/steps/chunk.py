"""Rows in chunks: the one Prefect task of a run, so a run's task runs stay few at any size.

A flow run makes at most `MAX_TASK_RUNS` task runs, whatever the manifest's size: its rows are
cut into consecutive chunks of `rows_per_chunk(n)` rows, and each chunk is one task run named
after its rows (`rows 00001-00200`), or after its row when it holds one (every manifest of up
to `MAX_TASK_RUNS` rows). One code path: a chunk of one row is the small case.

Inside a chunk each row goes submit -> poll -> download as plain async steps, all rows of all
chunks under the run's shared caps (`Lanes`): a generation slot is held from submission until
the task ends, downloads run outside it under a bound of their own. Chunks are started in
order, a few ahead of the rows being fed (`LOOKAHEAD`), so rows start in manifest order and
only chunks with work under way show as running.

The chunk task has no Prefect retries and no cache: it wraps paid POSTs, and a retry would
re-run the body. Should the body run again anyway, it redoes nothing the ledger says is done:
every step asks the ledger first (`send_decision`, a recorded task id, a verified video).

On a batch shared by several runs (a PostgreSQL ledger) the chunks are not planned up front but
claimed (`Ledger.claim`): each chunk is the next `rows_per_chunk` rows nobody holds, leased to
this run (its run id) for the run's `lease_seconds` (default `LEASE_S`), renewed every quarter
of that while the run works,
and released when it ends, however it ends. So K runs started at once on one batch each take
different rows, and a run whose process died frees its rows when its lease runs out: a run
still claiming (or the next one) takes them over, and a row the dead run left between intent
and task id becomes `unknown` in that same claim, never resent blindly. A run whose claims come
back empty waits while other live runs hold rows that are still on their way (they may die),
then ends. The folder's SQLite ledger has one run by its lock, so its rows are planned as ever.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from apimart import retry
from tasks.errors import RunStopped
from tasks.run.gate import Budget, LedgerBudget
from tasks.run.options import DEFAULT_LEASE_S
from tasks.run.runtime import Runtime, as_task_parameter, run_logger
from tasks.steps.download import RETRYABLE, download_row, mark_download_failed
from tasks.steps.poll import poll_row
from tasks.steps.submit import obey_batch_stop, shares_batch, submit_row
from tasks.store.ledger import CLAIMABLE
from tasks.store.states import DOWNLOADABLE, TO_POLL, State

# At most this many task runs per flow run. Measured here (shared/prefect-notes.md,
# shared/scale-notes.md): a tuned server records about 100 task runs/s and 5,000 at once
# without loss, but the UI slows badly past ~5,000 task runs in one flow run, the server's
# event queues drop past 10,000 messages (2,000 rows x 3 task runs lost ~40 % of them), and
# the engine keeps every task call in memory until the flow ends. 1,000 stays well inside
# all of that while still showing one task run per row for every manifest up to 1,000 rows.
MAX_TASK_RUNS = 1000
# Chunks started but not yet fed (each of their rows given a slot): enough that creating
# task runs (one API round trip each) never leaves slots idle, few enough that rows start
# roughly in manifest order. Measured (bench/scale.py, 2,000 rows, concurrency 200): 4 left
# the run waiting on task-run creation, 149 s; 32 took 86 s, the floor being 58 s.
LOOKAHEAD = 32
# A CDN or API that kept failing through the client's own retries gets this many more tries
# of the download step, after these waits (jittered down to half), as Prefect's did before.
DOWNLOAD_RETRY_WAITS_S = (2.0, 10.0, 30.0)
# How long a claimed row stays this run's without a renewal (renewed every quarter of it), by
# default: the run's `lease_seconds` option. A run that died frees its rows after at most this.
LEASE_S = DEFAULT_LEASE_S
# Rows of the batch another live run holds while still on their way: a run whose own claims
# came back empty waits for them (their run may die and leave them) at most this many leases.
TAKEOVER_WAIT_LEASES = 2
_ON_THEIR_WAY = frozenset({State.PENDING, State.INTENT, State.SUBMITTED, State.COMPLETED})


def lookahead(concurrency: int) -> int:
    """How many chunks may wait for slots: up to LOOKAHEAD, and no more than a quarter of the
    concurrency (at least 4, as before), since on a shared batch every started chunk holds
    claimed rows that another run could be working on."""
    return min(LOOKAHEAD, max(4, concurrency // 4))


def rows_per_chunk(rows: int) -> int:
    """The fewest rows per chunk that keep the chunks of `rows` rows within MAX_TASK_RUNS."""
    return max(1, math.ceil(rows / MAX_TASK_RUNS))


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of the run that share one task run; `label` names that task run."""

    label: str
    row_ids: tuple[str, ...]


def plan_chunks(runtime: Runtime, row_ids: Sequence[str]) -> list[Chunk]:
    """`row_ids` (in manifest order) cut into chunks of `rows_per_chunk` rows."""
    size = rows_per_chunk(len(row_ids))
    chunks = []
    for start in range(0, len(row_ids), size):
        ids = tuple(row_ids[start : start + size])
        if len(ids) == 1:
            label = ids[0]
        else:
            first, last = runtime.row(ids[0]).number, runtime.row(ids[-1]).number
            label = f"rows {first:05d}-{last:05d}"
        chunks.append(Chunk(label, ids))
    return chunks


@dataclass
class Lanes:
    """What the chunks of one run share besides the runtime: its caps, and whom to tell when
    a row has ended (the progress artifact)."""

    slots: asyncio.Semaphore
    download_slots: asyncio.Semaphore
    on_row_done: Callable[[str], Awaitable[None]]
    unfed: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(LOOKAHEAD))

    @classmethod
    def for_run(cls, runtime: Runtime, on_row_done: Callable[[str], Awaitable[None]]) -> Lanes:
        concurrency = runtime.options.concurrency
        # Downloads run outside the generation slots, so they get a bound of their own.
        return cls(
            asyncio.Semaphore(concurrency),
            asyncio.Semaphore(concurrency),
            on_row_done,
            asyncio.Semaphore(lookahead(concurrency)),
        )


class _Fed:
    """Gives the run's LOOKAHEAD place back once, when the chunk's rows all have slots or
    the chunk ended (whichever comes first)."""

    def __init__(self, lanes: Lanes) -> None:
        self._lanes, self._given = lanes, False

    def __call__(self) -> None:
        if not self._given:
            self._given = True
            self._lanes.unfed.release()


async def _download(runtime: Runtime, row_id: str) -> str:
    waits = iter(DOWNLOAD_RETRY_WAITS_S)
    while True:
        try:
            return await download_row(runtime, row_id)
        except RETRYABLE as exc:
            wait = next(waits, None)
            if wait is None:
                raise
            run_logger().warning("row %s: download failed (%s); trying again", row_id, exc)
            if retry.waits_enabled():
                await asyncio.sleep(wait * random.uniform(0.5, 1.0))


async def run_row(runtime: Runtime, lanes: Lanes, row_id: str) -> str:
    """One row through its steps. The caller holds a generation slot for it: released here
    once the row's task has ended (or it was never sent), before the download."""
    log = run_logger()
    try:
        runtime.gate.check()
        state = await submit_row(runtime, row_id)
        if state in TO_POLL:
            try:
                state = await poll_row(runtime, row_id)
            except RunStopped:
                raise
            except Exception as exc:
                if runtime.gate.stop_reason:
                    raise
                # The task id is in the ledger: the next run polls it again.
                log.error("row %s: polling failed (%s); will resume next run", row_id, exc)
                return State.TIMEOUT
    finally:
        lanes.slots.release()
    if state in DOWNLOADABLE:
        try:
            async with lanes.download_slots:
                state = await _download(runtime, row_id)
        except Exception as exc:
            if runtime.gate.stop_reason:
                raise
            state = mark_download_failed(runtime, row_id, str(exc))
    return state


async def _tracked(runtime: Runtime, lanes: Lanes, row_id: str) -> str:
    state = await run_row(runtime, lanes, row_id)
    await lanes.on_row_done(state)
    return state


async def run_chunk(
    runtime: Runtime, lanes: Lanes, row_ids: Sequence[str], fed: Callable[[], None] = lambda: None
) -> dict[str, int]:
    """Every row of the chunk, concurrently under the run's caps; the count of end states.

    Raises RunStopped when the run was stopped (its rows not yet started are left as the
    ledger has them); any other failure of a row is logged with its id and ends that row only.
    """
    log = run_logger()
    started: dict[str, asyncio.Task[str]] = {}
    try:
        for row_id in row_ids:
            if runtime.gate.stop_reason:
                break
            await lanes.slots.acquire()
            started[row_id] = asyncio.create_task(_tracked(runtime, lanes, row_id))
        fed()
        outcomes = await asyncio.gather(*started.values(), return_exceptions=True)
    except BaseException:
        for job in started.values():
            job.cancel()
        await asyncio.gather(*started.values(), return_exceptions=True)
        raise
    states: Counter[str] = Counter()
    for row_id, outcome in zip(started, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            # A stopped run's rows end with what stopped it (a 401, say): the flow reports
            # that once, so only other failures are worth a line each.
            stopped = runtime.gate.stop_reason or isinstance(outcome, RunStopped)
            if not (stopped or isinstance(outcome, asyncio.CancelledError)):
                log.error("row %s: failed unexpectedly: %r", row_id, outcome)
            continue
        states[outcome] += 1
    if runtime.gate.stop_reason:
        raise RunStopped(runtime.gate.stop_reason)
    return dict(states)


@task(
    name="rows",
    task_run_name="{label}",
    retries=0,
    cache_policy=NO_CACHE,
    log_prints=False,
)
async def chunk_task(
    runtime: Runtime,
    lanes: Lanes,
    label: str,
    row_ids: tuple[str, ...],
    fed: Callable[[], None],
) -> dict[str, int]:
    """Pass `runtime`, `lanes` and `fed` through `as_task_parameter`: never recorded."""
    return await run_chunk(runtime, lanes, row_ids, fed)


async def run_in_chunks(
    runtime: Runtime, row_ids: Sequence[str], on_row_done: Callable[[str], Awaitable[None]]
) -> list[dict[str, int] | BaseException]:
    """Every row of `row_ids` through its steps, one chunk task run per chunk; each chunk's
    state counts, or what it raised. Once the run is stopped no further chunk starts.

    On a shared batch the rows are claimed chunk by chunk instead (see the module): `row_ids`
    are then the rows this run may work on, of which it works those it manages to claim."""
    if shares_batch(runtime.ledger):
        return await _run_claimed(runtime, row_ids, on_row_done)
    planned = iter(plan_chunks(runtime, row_ids))

    async def next_chunk() -> Chunk | None:
        return next(planned, None)

    return await _launch_all(runtime, Lanes.for_run(runtime, on_row_done), next_chunk)


async def _launch_all(
    runtime: Runtime, lanes: Lanes, next_chunk: Callable[[], Awaitable[Chunk | None]]
) -> list[dict[str, int] | BaseException]:
    """One chunk task run for every chunk `next_chunk` gives (None: no more), each started
    once the LOOKAHEAD allows it; their outcomes, in order."""
    jobs: list[asyncio.Task[dict[str, int]]] = []

    async def launch(chunk: Chunk, fed: _Fed) -> dict[str, int]:
        try:
            return await chunk_task(
                as_task_parameter(runtime),
                as_task_parameter(lanes),
                chunk.label,
                chunk.row_ids,
                as_task_parameter(fed),
            )
        finally:
            fed()

    try:
        while True:
            await lanes.unfed.acquire()
            chunk = None if runtime.gate.stop_reason else await next_chunk()
            if chunk is None or runtime.gate.stop_reason:
                lanes.unfed.release()
                break
            jobs.append(asyncio.create_task(launch(chunk, _Fed(lanes))))
        return list(await asyncio.gather(*jobs, return_exceptions=True))
    except BaseException:
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        raise


def claim_states(runtime: Runtime) -> frozenset[str]:
    """The states a claim of this run asks for: what a plain run works on, rejected rows (a
    changed row is sent again), and what the run's options say a person asked to resend."""
    states = set(CLAIMABLE) | {State.REJECTED}
    if runtime.options.resubmit_unknown:
        states.add(State.UNKNOWN)
    if runtime.options.retry_failed:
        states |= {State.FAILED, State.CANCELLED}
    return frozenset(states)


def _no_more_claims(runtime: Runtime) -> bool:
    """Stopped, throttled out or cut off from the API: claiming more rows would only hold
    them away from a run that can still work on them."""
    gate = runtime.gate
    return bool(gate.stop_reason or gate.throttled_out or gate.unreachable)


def _label(runtime: Runtime, ids: Sequence[str]) -> str:
    if len(ids) == 1:
        return ids[0]
    numbers = sorted(runtime.row(i).number for i in ids)
    return f"rows {numbers[0]:05d}-{numbers[-1]:05d}"


def _reopen_missing_videos(runtime: Runtime, wanted: set[str]) -> None:
    """A row the ledger calls downloaded whose video is not where it should be is not
    claimable as it stands: it becomes download_failed, which a claim hands out (the
    download step then uploads the kept file or fetches the video again). A row another live
    run holds is left to it: it may be uploading that very video now."""
    now = time.time()
    for row_id, record in runtime.ledger.all().items():
        if row_id in wanted and record.state == State.DOWNLOADED:
            lease = runtime.ledger.lease(row_id)
            if lease is not None and lease.until > now:
                continue
            runtime.ledger.update(
                row_id,
                "video-missing",
                state=State.DOWNLOAD_FAILED,
                error_code="download_failed",
                error_message="the video is missing from the output location",
            )


def _held_by_others(runtime: Runtime, owner: str, wanted: set[str]) -> list[str]:
    """Rows this run may work on that another live run holds while they are on their way."""
    held = []
    for row_id, record in runtime.ledger.all().items():
        if row_id in wanted and record.state in _ON_THEIR_WAY:
            lease = runtime.ledger.lease(row_id)
            if lease is not None and lease.owner != owner and lease.until > time.time():
                held.append(row_id)
    return held


def renewal_period(lease_s: float, budget: Budget) -> float:
    """Seconds between renewals: a quarter of the lease, or of the budget reservation's first
    hold when that is shorter (a reservation lasts `hold_s` until the first renewal stretches
    it to a lease: a longer lease alone would let it lapse and another run spend the money)."""
    hold = budget.hold_s if isinstance(budget, LedgerBudget) else lease_s
    return min(lease_s, hold) / 4


async def _keep_leases(runtime: Runtime, owner: str, holding: set[str]) -> None:
    """Renew this run's leases every quarter lease; say which rows another run took over."""
    log = run_logger()
    lease_s = runtime.options.lease_seconds
    while True:
        await asyncio.sleep(renewal_period(lease_s, runtime.budget))
        try:
            kept = set(runtime.ledger.renew_lease(owner, lease_s=lease_s))
        except Exception as exc:
            # Tried again next time; meanwhile the lease fences every intent of this run.
            log.error("could not renew this run's leases (%s); trying again", exc)
            continue
        lost = holding - kept
        if lost:
            holding -= lost
            log.warning(
                "lost the lease of %d rows (%s): another run may work on them now; nothing is "
                "sent for them from here",
                len(lost),
                ", ".join(sorted(lost)[:10]),
            )


async def _run_claimed(
    runtime: Runtime, row_ids: Sequence[str], on_row_done: Callable[[str], Awaitable[None]]
) -> list[dict[str, int] | BaseException]:
    log = run_logger()
    ledger, owner = runtime.ledger, runtime.run_id
    wanted = set(row_ids)
    size, states = rows_per_chunk(len(row_ids)), claim_states(runtime)
    lease_s = runtime.options.lease_seconds
    lanes = Lanes.for_run(runtime, on_row_done)
    holding: set[str] = set()
    outcomes: list[dict[str, int] | BaseException] = []
    # A person's --resubmit-unknown is about the rows unknown when they asked: a row that
    # turns unknown during this run (a dead run's POST), also at its own open of the ledger
    # (a database batch's open turns expired mid-POST rows unknown), is never resent by it.
    unknown_before = runtime.started_at if runtime.options.resubmit_unknown else None
    _reopen_missing_videos(runtime, wanted)
    renewer = asyncio.create_task(_keep_leases(runtime, owner, holding))

    async def next_chunk() -> Chunk | None:
        while True:
            obey_batch_stop(runtime)
            if _no_more_claims(runtime):
                return None
            claim = ledger.claim(
                owner, size, lease_s=lease_s, states=states, unknown_before=unknown_before
            )
            if claim.unknown:
                log.warning(
                    "rows left mid-POST by a run that stopped renewing its lease are now unknown "
                    "(never resent blindly; --resubmit-unknown resends them): %s",
                    ", ".join(claim.unknown[:20]),
                )
            if not claim.rows:
                return None
            # Rows claimed but not this run's to work on (held by the ledger check, finished
            # meanwhile, or not in this manifest) stay leased, so the next claim moves on.
            holding.update(r.row_id for r in claim.rows)
            ids = [r.row_id for r in claim.rows if r.row_id in wanted]
            if ids:
                return Chunk(_label(runtime, ids), tuple(ids))

    try:
        waited_since: float | None = None
        while True:
            launched = await _launch_all(runtime, lanes, next_chunk)
            outcomes += launched
            if _no_more_claims(runtime):
                break
            others = _held_by_others(runtime, owner, wanted)
            if not others and not launched:
                break
            if not others:
                # A row another run held while this round worked may have had its lease run
                # out meanwhile: it is held by nobody now, so claim once more before ending.
                continue
            now = time.monotonic()
            waited_since = waited_since or now
            if now - waited_since > TAKEOVER_WAIT_LEASES * lease_s:
                log.warning(
                    "%d rows are still held by other runs of the batch; leaving them to them",
                    len(others),
                )
                break
            if waited_since == now:
                log.info(
                    "waiting for %d rows other runs of the batch hold (taken over should their "
                    "run stop renewing its lease)",
                    len(others),
                )
            await asyncio.sleep(min(1.0, lease_s / 8))
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
        ledger.release(owner)
    return outcomes
