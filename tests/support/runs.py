"""Options of an in-process run that polls and submits fast (a sandbox answers in milliseconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.run.options import RunOptions


def fast_options(manifest: Path, out: Path, base_url: str, **extra: Any) -> RunOptions:
    """RunOptions for `manifest` into `out` against `base_url`: quick polls, no report."""
    values: dict[str, Any] = {
        "manifest": str(manifest),
        "out": str(out),
        "base_url": base_url,
        "poll_initial_delay": 0.1,
        "poll_interval": 0.1,
        "submit_rate": 200.0,
        # Tests pace polling by the interval above, not by the run's real-world query cap.
        "max_queries_per_s": 1000.0,
        "report": False,
    }
    values.update(extra)
    return RunOptions(**values)
