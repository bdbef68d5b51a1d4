"""The member runs of a shared batch: K `generate-videos` deployment runs that any worker of
the pool may take, all on the same options and one ledger, started and watched to the end.

A member's liveness is its heartbeat in the batch's ledger (`member:<flow run id>`, beaten
every second by a thread of the member's process, see `tasks.run.lifecycle`): a flow run
killed with SIGKILL stays "Running" on the Prefect server forever, but its heartbeat stops the
instant its process does. So:

* a member that reads "Pending" or "Running" (a worker took it) with no heartbeat younger than
  `dead_after` seconds, for `dead_after` seconds since it was first seen taken or last seen
  beating, is dead: it is marked Crashed on the server. Its rows are the batch's, not its own:
  the other members take them over once its leases run out, rows it left between intent and
  task id become `unknown`, never sent twice. `dead_after` must be longer than a flow run
  takes to start (5-15 s);
* when every member has ended and rows are still left to do, replacement members are started
  (up to `attempts` runs per slot in all); a slot whose run a person cancelled is left so;
* a resend (`resubmit_unknown`, `retry_failed`) is a person's decision for one run: only the
  first members carry it. A replacement never repeats it, so rows a first member resent and
  left doubtful again are not resent a third time by a restart nobody decided.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from tasks.run.lifecycle import ShareBatch
from tasks.run.options import RunOptions
from tasks.run.runtime import run_logger

SHARD_TAG = "videobatch-shard"


@dataclass(frozen=True)
class ShardWatch:
    """How the member runs are started and watched."""

    deployment: str
    attempts: int = 3
    dead_after: float = 60.0
    poll: float = 2.0


@dataclass
class ShardOutcome:
    """One slot of the batch: the member runs started in it, and how the last one ended."""

    index: int
    state: str = "NotStarted"
    runs: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.state == "Completed"

    @property
    def name(self) -> str:
        return f"shard-{self.index}"


# Heartbeat ages by member run id (seconds), as the batch's ledger has them now.
Heartbeats = Callable[[], Awaitable[dict[str, float]]]


class CachedBeats:
    """The ledger's heartbeats read at most once per `every` seconds, for every watcher."""

    def __init__(self, read: Callable[[], dict[str, float]], every: float) -> None:
        self._read, self._every = read, every
        self._at = -float("inf")
        self._ages: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def __call__(self) -> dict[str, float]:
        async with self._lock:
            if time.monotonic() - self._at >= self._every:
                try:
                    self._ages = await asyncio.to_thread(self._read)
                except Exception as exc:
                    # Unreadable now is not "silent": keep what was last read, ageing it.
                    run_logger().warning("could not read the members' heartbeats (%s)", exc)
                    spent = time.monotonic() - self._at
                    self._ages = {k: v + spent for k, v in self._ages.items()}
                self._at = time.monotonic()
            return dict(self._ages)


async def _watch(client: Any, run_id: UUID, watch: ShardWatch, name: str, beats: Heartbeats) -> str:
    """Poll one member until it ends; its state name ("Crashed" for a dead one)."""
    from prefect.states import Crashed

    last_sign: float | None = None
    while True:
        flow_run = await client.read_flow_run(run_id)
        state = flow_run.state
        if state is not None and state.is_final():
            return str(state.name)
        # Pending: a worker took the run and is starting its process (5-15 s); Running: the
        # flow is on. A live process beats within seconds of opening the ledger.
        taken = state is not None and (state.is_running() or state.is_pending())
        if taken:
            now = time.monotonic()
            age = (await beats()).get(str(run_id))
            # The last sign of life: first seen taken, or its latest heartbeat since.
            last_sign = now if last_sign is None else last_sign
            if age is not None:
                last_sign = max(last_sign, now - age)
            if now - last_sign >= watch.dead_after:
                message = (
                    f"{name}: {state.name} but no heartbeat in the batch's ledger for "
                    f"{watch.dead_after:.0f}s: its process died (killed worker or machine)"
                )
                run_logger().error("%s", message)
                await client.set_flow_run_state(run_id, Crashed(message=message), force=True)
                return "Crashed"
        else:
            last_sign = None
        await asyncio.sleep(watch.poll)


async def run_member(
    slot: ShardOutcome,
    options: RunOptions,
    *,
    share: ShareBatch,
    watch: ShardWatch,
    parent: str,
    parent_name: str,
    beats: Heartbeats,
) -> ShardOutcome:
    """Start one member run in `slot` through the deployment and watch it to its end."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.flow_runs import arun_deployment

    attempt = len(slot.runs) + 1
    async with get_client() as client:
        flow_run = await arun_deployment(
            name=watch.deployment,
            client=client,
            parameters={"options": options.model_dump(mode="json"), "share_batch": share},
            flow_run_name=f"{parent_name}-{slot.name}" + (f"-{attempt}" if attempt > 1 else ""),
            idempotency_key=f"{parent}-{slot.name}-{attempt}",
            timeout=0,
            tags=[SHARD_TAG],
        )
        slot.runs.append(str(flow_run.id))
        slot.state = await _watch(client, flow_run.id, watch, slot.name, beats)
    return slot


async def run_members(
    count: int,
    options: RunOptions,
    *,
    share: ShareBatch,
    watch: ShardWatch,
    parent: str,
    parent_name: str,
    beats: Heartbeats,
    rows_left: Callable[[], Awaitable[int]],
    stopped: Callable[[], Awaitable[str | None]] | None = None,
) -> list[ShardOutcome]:
    """`count` members on one batch, in rounds: all of them, then, while rows are left to do
    when every member of the round has ended, replacements in every slot that has attempts
    left and was not cancelled by a person. No replacement round starts while the batch is
    stopped (`stopped`: its 401/402 stop in words, or None): a replacement would only meet
    the same refused key or empty balance, and must not send."""
    log = run_logger()
    slots = [ShardOutcome(k) for k in range(count)]
    restart = options.model_copy(update={"resubmit_unknown": False, "retry_failed": False})
    given = options
    todo = slots
    while todo:
        await asyncio.gather(
            *(
                run_member(
                    s,
                    given,
                    share=share,
                    watch=watch,
                    parent=parent,
                    parent_name=parent_name,
                    beats=beats,
                )
                for s in todo
            )
        )
        left = await rows_left()
        if not left:
            break
        stop = None if stopped is None else await stopped()
        if stop is not None:
            log.error(
                "%d rows left to do, but the batch is stopped (%s): no replacement runs "
                "started; fix the key or the balance and run generate-sharded again",
                left,
                stop,
            )
            break
        todo = [s for s in slots if s.state != "Cancelled" and len(s.runs) < watch.attempts]
        if todo:
            log.warning(
                "%d rows left to do after every member ended (%s); starting %d replacement "
                "run(s), without resubmit_unknown/retry_failed",
                left,
                ", ".join(f"{s.name} {s.state}" for s in slots),
                len(todo),
            )
        given = restart
    for slot in slots:
        log.info("%s: %s after %d run(s)", slot.name, slot.state, len(slot.runs))
    return slots
