"""Helpers shared by the flow tests (a plain module: tests/ is not a package)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

API_KEY = "sk-CANARY-flow-7c2e91d04b"


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def fast_options(manifest: Path, out: Path, sandbox_url: str, **extra: Any) -> Any:
    from tasks.options import RunOptions

    values: dict[str, Any] = {
        "manifest": str(manifest),
        "out": str(out),
        "base_url": sandbox_url,
        "poll_initial_delay": 0.1,
        "poll_interval": 0.1,
        "submit_rate": 200.0,
        "report": False,
    }
    values.update(extra)
    return RunOptions(**values)
