"""Manifests written the way a person would: a CSV with a header and one row per video."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A CSV manifest of `rows`; its columns are every key any row has, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def prompt_rows(
    prompts: Iterable[str], *, prefix: str = "r", **columns: Any
) -> list[dict[str, Any]]:
    """One cheap row (4 s) per prompt, ids `r0`, `r1`, ...; `columns` are added to every row."""
    return [
        {"id": f"{prefix}{i}", "prompt": prompt, "duration": 4, **columns}
        for i, prompt in enumerate(prompts)
    ]
