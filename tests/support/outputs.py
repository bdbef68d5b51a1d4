"""Reading a run's output folder as a person (or the next run) would: results and ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tasks.store.ledger import Ledger, RowRecord


def results(out: Path) -> dict[str, dict[str, Any]]:
    """The results table of the run folder `out`, one dict per row, by row id."""
    return {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}


def ledger_rows(out: Path) -> dict[str, RowRecord]:
    """Every row the ledger of `out` records, read-only (a bystander beside a live run)."""
    with Ledger(out, readonly=True) as ledger:
        return ledger.all()
