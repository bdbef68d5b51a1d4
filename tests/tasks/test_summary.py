"""Totals of a results table: known numbers in, known numbers and documents out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from apimart.models import VideoRequest
from tasks.present.summary import (
    ARTIFACT_COLUMNS,
    FailureReason,
    results_table_for_artifact,
    summarize,
    summary_markdown,
)
from tasks.store.ledger import Ledger, State
from tasks.store.manifest import Manifest, ManifestRow
from tasks.store.results import RESULT_STATUSES, SCHEMA, build_results


def line(row_id: str, status: str, **values: Any) -> dict[str, Any]:
    return {"id": row_id, "status": status, **values}


def table_of(*lines: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist(list(lines), schema=SCHEMA)


@pytest.fixture
def batch() -> pa.Table:
    """20 made videos (generation 1..20 s), and one of every way of not making one."""
    made = [
        line(
            f"ok{n:02}",
            "completed",
            cost=0.5,
            estimated_cost=0.4,
            generation_s=float(n),
            video_bytes=1000,
        )
        for n in range(1, 21)
    ]
    return table_of(
        *made,
        line(
            "f1",
            "failed",
            cost=0.0,
            estimated_cost=0.4,
            generation_s=999.0,
            error_code="content_policy",
            error_message="prompt refused | by policy",
        ),
        line(
            "f2",
            "failed",
            cost=0.0,
            estimated_cost=0.4,
            error_code="content_policy",
            error_message="second message",
        ),
        line("f3", "failed", error_code="task_failed"),
        line(
            "u1",
            "unknown",
            estimated_cost=0.25,
            error_code="submit_outcome_unknown",
            error_message="the run stopped while this row's POST was under way",
        ),
        line("u2", "unknown", estimated_cost=0.75),
        line("t1", "timeout", estimated_cost=1.0, task_id="t-1"),
        line("n1", "not_submitted", estimated_cost=2.0),
        line("s1", "skipped_budget", estimated_cost=4.0),
        line(
            "d1",
            "download_failed",
            cost=0.5,
            estimated_cost=0.4,
            error_code="http_403",
            video_bytes=77,
        ),
        line("i1", "invalid", error_code="invalid_row", error_message="duration: bad"),
    )


def test_summary_numbers(batch: pa.Table) -> None:
    """The summary counts rows by status, money spent, still to spend and at risk, and timings."""
    s = summarize(batch)
    assert s.rows == 30
    assert s.videos == 20
    assert list(s.by_status) == list(RESULT_STATUSES)
    assert s.by_status["completed"] == 20
    assert s.by_status["failed"] == 3
    assert s.by_status["unknown"] == 2
    assert s.by_status["cancelled"] == 0
    assert sum(s.by_status.values()) == 30
    assert s.spent == pytest.approx(20 * 0.5 + 0.5)
    # Not done: unknown (0.25 + 0.75), timeout 1.0, not_submitted 2.0, skipped_budget 4.0.
    assert s.estimated_remaining == pytest.approx(8.0)
    assert s.at_risk == pytest.approx(1.0)
    # Over completed rows only: the failed row's 999 s is not a generation time.
    assert s.generation_median_s == pytest.approx(10.5)
    assert s.generation_p95_s == pytest.approx(1 + 0.95 * 19)
    assert s.total_bytes == 20_000


def test_failures_grouped_by_status_and_code(batch: pa.Table) -> None:
    """Failures are grouped by status and error code, largest first, with one example."""
    failures = summarize(batch).failures
    assert failures[0] == FailureReason("failed", "content_policy", 2, "prompt refused | by policy")
    assert {(f.status, f.error_code): f.count for f in failures} == {
        ("failed", "content_policy"): 2,
        ("failed", "task_failed"): 1,
        ("unknown", "submit_outcome_unknown"): 1,
        ("unknown", None): 1,
        ("timeout", None): 1,
        ("skipped_budget", None): 1,
        ("download_failed", "http_403"): 1,
        ("invalid", "invalid_row"): 1,
    }
    assert [f.count for f in failures] == sorted((f.count for f in failures), reverse=True)
    by_key = {(f.status, f.error_code): f for f in failures}
    assert by_key[("failed", "task_failed")].example is None


def test_quantiles_of_small_samples() -> None:
    """Median and p95 of one or two generation times are interpolated linearly."""
    one = summarize(table_of(line("a", "completed", generation_s=7.0)))
    assert (one.generation_median_s, one.generation_p95_s) == (7.0, 7.0)
    two = summarize(
        table_of(
            line("a", "completed", generation_s=10.0), line("b", "completed", generation_s=20.0)
        )
    )
    assert two.generation_median_s == 15.0
    assert two.generation_p95_s == pytest.approx(19.5)


def test_summary_of_nothing_done() -> None:
    """A batch with no video made sums to zero and has no timings."""
    s = summarize(table_of(line("a", "not_submitted"), line("b", "invalid")))
    assert s.videos == 0 and s.spent == 0 and s.total_bytes == 0
    assert s.generation_median_s is None and s.generation_p95_s is None
    empty = summarize(SCHEMA.empty_table())
    assert empty.rows == 0 and empty.failures == ()


def test_an_unlisted_status_is_still_counted() -> None:
    """A status the summary does not know is still counted, not dropped."""
    s = summarize(table_of(line("a", "from-the-future"), line("b", "completed")))
    assert s.by_status["from-the-future"] == 1
    assert sum(s.by_status.values()) == 2


def test_markdown(batch: pa.Table) -> None:
    """The Markdown summary states totals, statuses and failures, its title escaped."""
    text = summary_markdown(summarize(batch), title="Spring <b>batch</b>")
    assert text.startswith("# Spring &lt;b&gt;batch&lt;/b&gt;\n")
    assert "**20 of 30 videos made** · spent **$10.50**" in text
    assert "Estimated cost of rows not done yet: $8.00" in text
    assert "At risk: $1.00" in text
    assert "| completed | 20 |" in text
    assert "| cancelled |" not in text  # zero rows: not listed
    assert "| failed | content_policy | 2 | prompt refused \\| by policy |" in text
    assert "| timeout | – | 1 |  |" in text
    assert "median 10.5 s, p95 19.1 s" in text


def test_markdown_without_failures_or_timings() -> None:
    """The Markdown says "None." for no failures and no timings, and omits at-risk."""
    text = summary_markdown(summarize(table_of(line("a", "not_submitted"))), title="t")
    assert "## Failures by reason\n\nNone." in text
    assert "No completed video reported a generation time." in text
    assert "At risk" not in text


def test_artifact_rows_under_the_limit(batch: pa.Table) -> None:
    """Under the row limit, the artifact table has one JSON-safe line per row."""
    rows = results_table_for_artifact(batch)
    assert len(rows) == 30
    assert all(tuple(r) == ARTIFACT_COLUMNS for r in rows)
    assert rows[0] == {
        "id": "ok01",
        "status": "completed",
        "cost": 0.5,
        "generation_s": 1.0,
        "video_path": None,
        "error_code": None,
        "task_id": None,
    }
    assert json.loads(json.dumps(rows, allow_nan=False)) == rows


def test_artifact_over_the_limit_is_one_line_per_status(batch: pa.Table) -> None:
    """Over the row limit, the artifact table has one JSON-safe line per status."""
    assert len(results_table_for_artifact(batch, limit=30)) == 30
    rows = results_table_for_artifact(batch, limit=29)
    assert rows[0] == {"status": "completed", "rows": 20, "cost": 10.0, "example_id": "ok01"}
    assert [r["status"] for r in rows] == [
        "completed",
        "failed",
        "download_failed",
        "timeout",
        "unknown",
        "not_submitted",
        "skipped_budget",
        "invalid",
    ]
    assert sum(r["rows"] for r in rows) == 30
    assert json.loads(json.dumps(rows, allow_nan=False)) == rows


def test_summary_of_a_table_built_from_a_ledger(tmp_path: Path) -> None:
    """A summary of results built from a ledger counts spent, at-risk and never-sent rows."""

    def row(index: int, row_id: str) -> ManifestRow:
        request = VideoRequest.build(prompt="a cat")
        fields = {
            "prompt": "a cat",
            "duration": 6,
            "resolution": "720p",
            "aspect_ratio": "16:9",
            "image_count": 0,
        }
        return ManifestRow(index, row_id, request, {}, fields, {})

    with Ledger(tmp_path) as ledger:
        ledger.ensure("a", 0)
        ledger.update("a", state=State.DOWNLOADED, cost=0.15, generation_s=30.0, video_bytes=9)
        ledger.ensure("b", 1)
        ledger.update("b", state=State.UNKNOWN, estimated_cost=0.15)
        manifest = Manifest(tmp_path / "m.csv", (row(0, "a"), row(1, "b"), row(2, "c")), ())
        s = summarize(build_results(manifest, ledger.all()))
    assert (s.rows, s.videos, s.total_bytes) == (3, 1, 9)
    assert s.spent == pytest.approx(0.15)
    assert s.at_risk == pytest.approx(0.15)
    assert s.estimated_remaining == pytest.approx(0.30)  # b at risk + c never sent
    assert s.generation_median_s == 30.0


def test_earlier_posts_of_a_resent_row_count_as_money_at_risk() -> None:
    """An earlier POST of unknown outcome stays at risk in the summary and the report, even
    after the resent row completed and reported its real cost."""
    from tasks.present.report import report_numbers

    table = table_of(
        line("r0", "completed", cost=0.15, estimated_cost=0.15, earlier_posts_cost=0.15),
        line("r1", "completed", cost=0.15, estimated_cost=0.15),
    )
    assert summarize(table).at_risk == pytest.approx(0.15)
    assert report_numbers(table)["at_risk"] == pytest.approx(0.15)


def test_the_results_table_carries_the_earlier_posts_cost_from_the_ledger(
    tmp_path: Path,
) -> None:
    """build_results copies a row's earlier_posts_cost from its ledger record."""
    from tasks.store.manifest import read_manifest

    manifest_path = tmp_path / "m.csv"
    manifest_path.write_text("id,prompt\nr0,A lighthouse\n", encoding="utf-8")
    manifest = read_manifest(manifest_path)
    with Ledger(tmp_path / "out") as ledger:
        ledger.ensure("r0", 0)
        ledger.update("r0", state=State.UNKNOWN, estimated_cost=0.15, earlier_posts_cost=0.15)
        table = build_results(manifest, ledger.all())
    assert table.column("earlier_posts_cost").to_pylist() == [0.15]
