"""What a manifest would cost and take, before anything is sent (`validate`, `--dry-run`).

Free of Prefect, so `videobatch validate` does not start it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.run.options import RunOptions
    from tasks.store.manifest import Manifest


@dataclass(frozen=True)
class Estimate:
    """What a manifest would cost and take, before anything is sent."""

    rows: int
    valid: int
    invalid: int
    cost: float
    minutes_low: float
    minutes_high: float
    concurrency: int = 1


# The vendor says a task usually takes 3 to 5 minutes.
TASK_MINUTES = (3.0, 5.0)


def estimate_run(manifest: Manifest, options: RunOptions) -> Estimate:
    from apimart import spec

    valid = manifest.valid_rows
    cost = sum(
        spec.estimate_cost(r.request.resolution, r.request.duration, options.prices)
        for r in valid
        if r.request is not None
    )
    waves = -(-len(valid) // options.concurrency) if valid else 0
    return Estimate(
        rows=len(manifest.rows),
        valid=len(valid),
        invalid=len(manifest.invalid_rows),
        cost=round(cost, 4),
        minutes_low=waves * TASK_MINUTES[0],
        minutes_high=waves * TASK_MINUTES[1],
        concurrency=options.concurrency,
    )
