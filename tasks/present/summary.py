"""Totals of a results table, for people: a `Summary`, its markdown, and a table artifact.

Works on the table alone (see `tasks.store.results`), so a summary can be made of any results
file, from any run, without the ledger. No Prefect here: `tasks.present.artifacts` publishes
what this makes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa

from tasks.store.results import RESULT_STATUSES
from tasks.store.states import NOT_DONE, NOT_FAILURES, Status

__all__ = [
    "ARTIFACT_COLUMNS",
    "FailureReason",
    "Summary",
    "flow_outcome",
    "money",
    "results_table_for_artifact",
    "seconds",
    "summarize",
    "summary_markdown",
]

ARTIFACT_COLUMNS: Final = (
    "id",
    "status",
    "cost",
    "generation_s",
    "video_path",
    "error_code",
    "task_id",
)
_EXAMPLE_CHARS: Final = 160


@dataclass(frozen=True)
class FailureReason:
    """Rows that ended the same way: same status and error code (None when the API gave none)."""

    status: str
    error_code: str | None
    count: int
    example: str | None  # the first non-empty error message of the group


@dataclass(frozen=True)
class Summary:
    """What a batch came to.

    - `by_status`: every status of RESULT_STATUSES (zeros included, in that order), then any
      status this version does not know, so nothing in the table goes uncounted.
    - `spent`: sum of the API-reported `cost` (rows without one count 0).
    - `estimated_remaining`: `estimated_cost` of rows not done yet (NOT_DONE): never sent,
      skipped, still running (`timeout`) or of unknown fate, when they have no real cost yet.
    - `at_risk`: the part of that belonging to `unknown` rows, which may have been charged,
      plus every row's `earlier_posts_cost` (earlier POSTs of a resent row).
    - `failures`: every status other than completed and not_submitted, by (status, error_code),
      largest group first.
    - `generation_median_s`, `generation_p95_s`: over completed rows with a `generation_s`;
      linear interpolation between order statistics (numpy's default); None with no data.
    - `total_bytes`: bytes of the completed videos.
    """

    rows: int
    by_status: dict[str, int]
    videos: int
    spent: float
    estimated_remaining: float
    at_risk: float
    failures: tuple[FailureReason, ...]
    generation_median_s: float | None
    generation_p95_s: float | None
    total_bytes: int


def earlier_posts_cost(table: pa.Table) -> list[float]:
    """Each row's estimates of earlier POSTs of unknown outcome (0 where none, or an older
    results file without the column)."""
    if "earlier_posts_cost" not in table.column_names:
        return [0.0] * table.num_rows
    return [finite_number(v) or 0.0 for v in column_values(table, "earlier_posts_cost")]


def summarize(table: pa.Table) -> Summary:
    statuses = [str(s) for s in column_values(table, "status")]
    costs = [finite_number(v) for v in column_values(table, "cost")]
    estimates = [finite_number(v) for v in column_values(table, "estimated_cost")]
    counts = Counter(statuses)
    by_status = {str(status): counts.get(status, 0) for status in RESULT_STATUSES}
    by_status.update((s, n) for s, n in counts.items() if s not in by_status)

    remaining = at_risk = 0.0
    for status, cost, estimate in zip(statuses, costs, estimates, strict=True):
        if status in NOT_DONE and cost is None and estimate is not None:
            remaining += estimate
            if status == Status.UNKNOWN:
                at_risk += estimate
    # Earlier POSTs of a resent row may have been charged whatever the row's own fate.
    at_risk += sum(earlier_posts_cost(table))

    generation = sorted(
        g
        for g, s in zip(
            map(finite_number, column_values(table, "generation_s")), statuses, strict=True
        )
        if s == Status.COMPLETED and g is not None
    )
    sizes = (
        finite_number(b)
        for b, s in zip(column_values(table, "video_bytes"), statuses, strict=True)
        if s == Status.COMPLETED
    )
    return Summary(
        rows=table.num_rows,
        by_status=by_status,
        videos=counts.get(Status.COMPLETED, 0),
        spent=sum(c for c in costs if c is not None),
        estimated_remaining=remaining,
        at_risk=at_risk,
        failures=_failures(table, statuses),
        generation_median_s=_quantile(generation, 0.5),
        generation_p95_s=_quantile(generation, 0.95),
        total_bytes=int(sum(b for b in sizes if b is not None)),
    )


def flow_outcome(out: str, table: pa.Table, markdown: str) -> dict[str, Any]:
    """What a generate flow returns about its results table: the folder, its rows, how many
    made a video, rows by status (sorted) and the markdown summary published for it."""
    statuses = table.column("status").to_pylist()
    return {
        "out": out,
        "rows": len(statuses),
        "completed": statuses.count(Status.COMPLETED),
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "summary": markdown,
    }


def summary_markdown(summary: Summary, *, title: str) -> str:
    """A short markdown page: totals, rows by status, failures by reason, timings."""
    s = summary
    lines = [
        f"# {_inline(title)}",
        "",
        f"**{s.videos} of {s.rows} videos made** · spent **{money(s.spent)}**"
        f" · {_bytes(s.total_bytes)} of video",
        "",
    ]
    if s.estimated_remaining:
        lines.append(f"- Estimated cost of rows not done yet: {money(s.estimated_remaining)}")
    if s.at_risk:
        lines.append(
            f"- **At risk: {money(s.at_risk)}** over {s.by_status.get(Status.UNKNOWN, 0)} row(s)"
            " whose submission outcome is unknown; check them before resending"
        )
    if s.estimated_remaining or s.at_risk:
        lines.append("")

    lines += ["## Rows by status", "", "| Status | Rows |", "|---|---:|"]
    lines += [f"| {_cell(k)} | {n} |" for k, n in s.by_status.items() if n]
    lines.append("")

    lines += ["## Failures by reason", ""]
    if s.failures:
        lines += ["| Status | Error code | Rows | Example |", "|---|---|---:|---|"]
        lines += [
            f"| {_cell(f.status)} | {_cell(f.error_code or '–')} | {f.count} "
            f"| {_cell(f.example or '')} |"
            for f in s.failures
        ]
    else:
        lines.append("None.")
    lines.append("")

    lines += ["## Timings", ""]
    if s.generation_median_s is None:
        lines.append("No completed video reported a generation time.")
    else:
        lines.append(
            f"Generation time of completed videos: median {seconds(s.generation_median_s)},"
            f" p95 {seconds(s.generation_p95_s)}."
        )
    return "\n".join(lines) + "\n"


def results_table_for_artifact(table: pa.Table, *, limit: int = 200) -> list[dict[str, Any]]:
    """JSON-safe rows of ARTIFACT_COLUMNS for a Prefect table artifact.

    A table with more than `limit` rows would make an artifact too big to read (or store), so
    it is replaced by one line per status, in RESULT_STATUSES order:
    `{"status", "rows", "cost", "example_id"}` (cost summed; the first row id with that status).
    The full table is always in results.parquet / results.csv.
    """
    if table.num_rows <= limit:
        columns = {name: column_values(table, name) for name in ARTIFACT_COLUMNS}
        return [
            {name: _json_safe(columns[name][i]) for name in ARTIFACT_COLUMNS}
            for i in range(table.num_rows)
        ]
    groups: dict[str, dict[str, Any]] = {}
    for row_id, status, cost in zip(
        column_values(table, "id"),
        column_values(table, "status"),
        column_values(table, "cost"),
        strict=True,
    ):
        group = groups.setdefault(
            str(status), {"status": str(status), "rows": 0, "cost": 0.0, "example_id": row_id}
        )
        group["rows"] += 1
        group["cost"] += finite_number(cost) or 0.0
    order = {status: n for n, status in enumerate(RESULT_STATUSES)}
    return sorted(groups.values(), key=lambda g: (order.get(g["status"], len(order)), g["status"]))


# --- helpers --------------------------------------------------------------------------------


def column_values(table: pa.Table, name: str) -> list[Any]:
    # Tables written by older versions may lack a column: read it as empty, do not fail.
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [None] * table.num_rows


def finite_number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _failures(table: pa.Table, statuses: list[str]) -> tuple[FailureReason, ...]:
    counts: Counter[tuple[str, str | None]] = Counter()
    examples: dict[tuple[str, str | None], str] = {}
    codes = column_values(table, "error_code")
    messages = column_values(table, "error_message")
    for status, code, message in zip(statuses, codes, messages, strict=True):
        if status in NOT_FAILURES:
            continue
        key = (status, None if code is None else str(code))
        counts[key] += 1
        if message and key not in examples:
            examples[key] = str(message)
    reasons = [
        FailureReason(status=s, error_code=c, count=n, example=examples.get((s, c)))
        for (s, c), n in counts.items()
    ]
    return tuple(sorted(reasons, key=lambda r: (-r.count, r.status, r.error_code or "")))


def _inline(text: str) -> str:
    # Markdown renderers may pass raw HTML through; user and API text must stay text.
    return " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    """User and API text inside a table cell: one line, pipes escaped, kept short."""
    text = _inline(text).replace("\\", "\\\\").replace("|", "\\|")
    return text if len(text) <= _EXAMPLE_CHARS else text[: _EXAMPLE_CHARS - 1] + "…"


def money(value: float) -> str:
    """Dollars to the cent; summary.md and report.html both use it, so they never disagree."""
    return f"${value:,.2f}"


def seconds(value: float | None) -> str:
    """A duration for people: seconds, or minutes from two minutes on; a dash when unknown."""
    if value is None:
        return "–"
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.1f} s"


def _bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    size = count / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
