"""What the steps of one flow run share: client, ledger, manifest, brakes, fresh links.

Every step takes the `Runtime` as its first argument, so what a step depends on is in its
signature. The Prefect task (`tasks.steps.chunk`) receives it too, wrapped by
`as_task_parameter` (Prefect's `quote`): Prefect then neither walks into it nor records it, so
the task-run records on the server hold only the plain values beside it (a chunk's label and
row ids), never the client, its key or the manifest's inlined images.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from apimart import spec
from apimart.client import AsyncAPIMartClient
from apimart.models import Video
from apimart.redact import install_redaction as install_redaction  # re-exported for the run
from tasks.run.gate import Budget, SubmitGate
from tasks.run.options import RunOptions
from tasks.store.ledger import Ledger
from tasks.store.manifest import Manifest, ManifestRow

if TYPE_CHECKING:
    from tasks.run.scheduler import PollScheduler

T = TypeVar("T")
_log = logging.getLogger("videobatch")


@dataclass
class Runtime:
    options: RunOptions
    manifest: Manifest
    ledger: Ledger
    client: AsyncAPIMartClient
    run_id: str
    gate: SubmitGate
    budget: Budget
    out: Path
    # When the run started, taken before it opened its ledger: a --resubmit-unknown claim
    # hands out only rows unknown by then (`tasks.steps.chunk`). On a database batch the
    # open itself turns a dead run's mid-POST rows unknown; that doubt is not the person's.
    started_at: float = field(default_factory=time.time)
    # Fresh signed links live only in memory: they are credentials and never stored.
    links: dict[str, Video] = field(default_factory=dict)
    # Per row, the monotonic time this run stops polling it: set by its first poll, kept by
    # every later entry (a retry of the step included), so no retry restarts the clock.
    poll_deadlines: dict[str, float] = field(default_factory=dict)
    # The run's one poll scheduler (`tasks.run.polling.open_poller` sets it while the rows
    # run), and which row each watched task belongs to, so its log lines can name the row.
    poller: PollScheduler | None = None
    polling_rows: dict[str, str] = field(default_factory=dict)

    def row(self, row_id: str) -> ManifestRow:
        return self._rows[row_id]

    def start_polling(self, row_id: str) -> tuple[float, bool]:
        """The row's polling deadline in this run (monotonic), and whether it was set just
        now (the row's first poll in this run) rather than by an earlier entry."""
        if row_id in self.poll_deadlines:
            return self.poll_deadlines[row_id], False
        deadline = time.monotonic() + self.options.poll_timeout
        self.poll_deadlines[row_id] = deadline
        return deadline, True

    def __post_init__(self) -> None:
        self._rows = {r.id: r for r in self.manifest.rows}

    def estimate(self, row: ManifestRow) -> float:
        assert row.request is not None
        return spec.estimate_cost(row.request.resolution, row.request.duration, self.options.prices)


def as_task_parameter(value: T) -> T:
    """`value` as a Prefect task argument: quoted, so Prefect neither traverses it (for the
    runtime, a walk over every manifest row per task call) nor keeps anything of it in the
    task-run record. Prefect unwraps the quote before the task body runs; the cast says so to
    the type checker.
    """
    from prefect.utilities.annotations import quote

    return cast(T, quote(value))


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """Prefect's run logger inside a run (so the UI shows it), a plain logger outside."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:
        return _log


def new_run_id() -> str:
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.get_id()
        if run_id:
            return str(run_id)
    except Exception:
        pass
    return uuid.uuid4().hex
