"""The results table: status mapping, schema, manifest order, carried columns, safe files."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apimart import spec
from apimart.models import VideoRequest
from tasks.store import results
from tasks.store.ledger import Ledger, RowRecord, State
from tasks.store.manifest import Manifest, ManifestRow, read_manifest
from tasks.store.results import (
    RESULT_STATUSES,
    SCHEMA,
    build_results,
    read_results,
    result_status,
    results_schema,
    write_results,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def valid_row(
    index: int,
    row_id: str,
    *,
    prompt: str = "a cat on a skateboard",
    duration: int = 6,
    resolution: str = "720p",
    extra: dict[str, Any] | None = None,
) -> ManifestRow:
    request = VideoRequest.build(prompt=prompt, duration=duration, resolution=resolution)
    return ManifestRow(
        index=index,
        id=row_id,
        request=request,
        problems={},
        fields={
            "prompt": prompt,
            "duration": duration,
            "resolution": resolution,
            "aspect_ratio": "16:9",
            "image_count": 0,
        },
        extra=extra or {},
    )


def invalid_row(index: int, row_id: str, extra: dict[str, Any] | None = None) -> ManifestRow:
    return ManifestRow(
        index=index,
        id=row_id,
        request=None,
        problems={
            "duration": "must be one of [4, 6, 8, 10] seconds, got 'abc'",
            "resolution": "must be one of 720p, 1080p, 4k (any case), got '8k'",
        },
        fields={
            "prompt": "a dog",
            "duration": "abc",
            "resolution": "8k",
            "aspect_ratio": "16:9",
            "image_count": None,
        },
        extra=extra or {},
    )


def manifest_of(*rows: ManifestRow, extra_columns: tuple[str, ...] = ()) -> Manifest:
    return Manifest(path=Path("/tmp/manifest.csv"), rows=rows, extra_columns=extra_columns)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "out") as led:
        yield led


def downloaded(ledger: Ledger, row_id: str, idx: int = 0) -> None:
    ledger.ensure(row_id, idx)
    ledger.update(
        row_id,
        state=State.DOWNLOADED,
        attempt=1,
        task_id=f"task-{row_id}",
        estimated_cost=0.15,
        cost=0.14,
        intent_at=T0,
        submitted_at=T0 + 1,
        terminal_at=T0 + 41,
        api_completed=T0 + 40,
        generation_s=38.0,
        polls=7,
        url_expires_at=T0 + 86_400,
        video_path=f"videos/{row_id}.mp4",
        video_bytes=123_456,
        video_sha256="ab" * 32,
        video_width=1280,
        video_height=720,
        video_duration_s=6.04,
        download_s=2.5,
        run_id="run-1",
    )


# --- status ---------------------------------------------------------------------------------

STATE_TO_STATUS = [
    (State.PENDING, "not_submitted"),
    (State.INTENT, "unknown"),
    (State.UNKNOWN, "unknown"),
    (State.SUBMITTED, "timeout"),
    (State.TIMEOUT, "timeout"),
    (State.COMPLETED, "download_failed"),
    (State.DOWNLOADED, "completed"),
    (State.DOWNLOAD_FAILED, "download_failed"),
    (State.FAILED, "failed"),
    (State.CANCELLED, "cancelled"),
    (State.REJECTED, "rejected"),
    (State.SKIPPED_BUDGET, "skipped_budget"),
    (State.SKIPPED_PAYMENT, "skipped_payment"),
]


@pytest.mark.parametrize(("state", "status"), STATE_TO_STATUS)
def test_every_ledger_state_maps_to_its_status(ledger: Ledger, state: str, status: str) -> None:
    ledger.ensure("r1", 0)
    ledger.update("r1", state=state)
    row = valid_row(0, "r1")
    assert result_status(row, ledger.get("r1")) == status
    table = build_results(manifest_of(row), ledger.all())
    assert table.column("status").to_pylist() == [status]


def test_every_ledger_state_is_mapped_and_every_status_is_listed() -> None:
    states = {v for k, v in vars(State).items() if k.isupper()}
    assert states == {state for state, _ in STATE_TO_STATUS}
    listed = {status for _, status in STATE_TO_STATUS} | {"invalid", "conflict"}
    assert listed == set(RESULT_STATUSES)


def test_no_record_is_not_submitted() -> None:
    assert result_status(valid_row(0, "r1"), None) == "not_submitted"


def test_invalid_row_is_invalid_whatever_the_ledger_says(ledger: Ledger) -> None:
    downloaded(ledger, "bad")
    row = invalid_row(0, "bad")
    assert result_status(row, None) == "invalid"
    assert result_status(row, ledger.get("bad")) == "invalid"


def test_an_unrecognised_ledger_state_reads_as_unknown() -> None:
    record = RowRecord(row_id="r1", idx=0, state="from-the-future")
    assert result_status(valid_row(0, "r1"), record) == "unknown"


# --- the table ------------------------------------------------------------------------------


def test_schema_is_the_documented_one() -> None:
    assert SCHEMA.names == [
        "id",
        "prompt",
        "duration",
        "resolution",
        "aspect_ratio",
        "image_count",
        "status",
        "error_code",
        "error_message",
        "task_id",
        "attempt",
        "cost",
        "estimated_cost",
        "earlier_posts_cost",
        "submitted_at",
        "completed_at",
        "generation_s",
        "wait_s",
        "polls",
        "download_s",
        "total_s",
        "video_path",
        "video_bytes",
        "video_sha256",
        "video_width",
        "video_height",
        "video_duration_s",
        "url_expires_at",
        "run_id",
    ]
    ts = pa.timestamp("us", tz="UTC")
    types = dict(zip(SCHEMA.names, SCHEMA.types, strict=True))
    assert types["duration"] == types["image_count"] == types["attempt"] == pa.int32()
    assert types["polls"] == types["video_width"] == types["video_height"] == pa.int32()
    assert types["video_bytes"] == pa.int64()
    assert types["submitted_at"] == types["completed_at"] == types["url_expires_at"] == ts
    assert types["cost"] == types["estimated_cost"] == types["total_s"] == pa.float64()
    assert not SCHEMA.field("id").nullable and not SCHEMA.field("status").nullable
    assert SCHEMA.field("cost").nullable


def test_table_without_extra_columns_has_exactly_the_schema(ledger: Ledger) -> None:
    downloaded(ledger, "a")
    manifest = manifest_of(valid_row(0, "a"), valid_row(1, "b"), invalid_row(2, "c"))
    table = build_results(manifest, ledger.all())
    assert table.schema.equals(SCHEMA)
    assert table.num_rows == 3


def test_a_downloaded_row_carries_every_fact(ledger: Ledger) -> None:
    downloaded(ledger, "a")
    table = build_results(manifest_of(valid_row(0, "a")), ledger.all())
    (row,) = table.to_pylist()
    assert row["id"] == "a"
    assert row["prompt"] == "a cat on a skateboard"
    assert (row["duration"], row["resolution"], row["aspect_ratio"]) == (6, "720p", "16:9")
    assert row["image_count"] == 0
    assert row["status"] == "completed"
    assert row["error_code"] is None and row["error_message"] is None
    assert (row["task_id"], row["attempt"], row["polls"]) == ("task-a", 1, 7)
    assert (row["cost"], row["estimated_cost"]) == (0.14, 0.15)
    assert row["submitted_at"] == datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert row["completed_at"] == datetime(2026, 1, 1, 0, 0, 40, tzinfo=UTC)
    assert row["url_expires_at"] == datetime(2026, 1, 2, tzinfo=UTC)
    assert row["generation_s"] == 38.0
    assert row["wait_s"] == pytest.approx(40.0)
    assert row["download_s"] == 2.5
    # Intent to the last ledger write, which happened "now" (after T0 + 41).
    record = ledger.get("a")
    assert record is not None and record.updated_at is not None
    assert row["total_s"] == pytest.approx(record.updated_at - T0)
    assert row["video_path"] == "videos/a.mp4"
    assert (row["video_bytes"], row["video_sha256"]) == (123_456, "ab" * 32)
    assert (row["video_width"], row["video_height"], row["video_duration_s"]) == (1280, 720, 6.04)
    assert row["run_id"] == "run-1"


def test_rows_in_flight_have_no_total_and_no_wait(ledger: Ledger) -> None:
    ledger.ensure("a", 0)
    ledger.record_intent("a", attempt=1, req_hash="h", key="k", estimated_cost=0.2, run_id="r")
    ledger.record_submitted("a", task_id="t-1", status="submitted")
    (row,) = build_results(manifest_of(valid_row(0, "a")), ledger.all()).to_pylist()
    assert row["status"] == "timeout"
    assert row["task_id"] == "t-1"
    assert row["submitted_at"] is not None
    assert row["wait_s"] is None and row["total_s"] is None
    assert row["estimated_cost"] == 0.2 and row["cost"] is None


def test_manifest_order_is_kept_whatever_the_ledger_order(ledger: Ledger) -> None:
    ids = ["zeta", "alpha", "mid", "beta"]
    for n, row_id in enumerate(reversed(ids)):
        ledger.ensure(row_id, n)
    manifest = manifest_of(*(valid_row(n, row_id) for n, row_id in enumerate(ids)))
    table = build_results(manifest, ledger.all())
    assert table.column("id").to_pylist() == ids


def test_ledger_rows_not_in_the_manifest_are_left_out(ledger: Ledger) -> None:
    downloaded(ledger, "gone")
    table = build_results(manifest_of(valid_row(0, "a")), ledger.all())
    assert table.column("id").to_pylist() == ["a"]


def test_invalid_row_reports_its_problems(ledger: Ledger) -> None:
    table = build_results(manifest_of(invalid_row(0, "bad")), ledger.all())
    (row,) = table.to_pylist()
    assert row["status"] == "invalid"
    assert row["error_code"] == "invalid_row"
    assert row["error_message"] == (
        "duration: must be one of [4, 6, 8, 10] seconds, got 'abc'; "
        "resolution: must be one of 720p, 1080p, 4k (any case), got '8k'"
    )
    # What can be shown is shown; a raw value that does not fit the column type is left out.
    assert (row["prompt"], row["resolution"], row["duration"]) == ("a dog", "8k", None)
    assert row["estimated_cost"] is None and row["task_id"] is None


def test_invalid_row_keeps_money_already_spent_on_it(ledger: Ledger) -> None:
    downloaded(ledger, "bad")
    (row,) = build_results(manifest_of(invalid_row(0, "bad")), ledger.all()).to_pylist()
    assert row["status"] == "invalid"
    assert row["error_code"] == "invalid_row"
    assert row["cost"] == 0.14 and row["task_id"] == "task-bad"


def test_a_held_row_keeps_its_money_but_shows_no_video_under_the_new_request(
    ledger: Ledger,
) -> None:
    """A held row reads `conflict`: its task and cost stay, its old video's facts do not."""
    downloaded(ledger, "changed")
    downloaded(ledger, "same", idx=1)
    manifest = manifest_of(
        valid_row(0, "changed", prompt="a new prompt"), valid_row(1, "same", prompt="kept")
    )
    table = build_results(manifest, ledger.all(), held={"changed": "changed: held, because"})
    changed, same = table.to_pylist()
    assert changed["status"] == "conflict" and changed["prompt"] == "a new prompt"
    assert changed["error_code"] == "manifest_conflict"
    assert changed["error_message"] == "changed: held, because"
    assert (changed["task_id"], changed["cost"], changed["attempt"]) == ("task-changed", 0.14, 1)
    for column in ("video_path", "video_sha256", "video_bytes", "completed_at", "total_s"):
        assert changed[column] is None, column
    assert same["status"] == "completed" and same["video_path"] == "videos/same.mp4"


def test_rows_never_sent_are_estimated_at_the_given_prices(ledger: Ledger) -> None:
    ledger.ensure("skipped", 1)
    ledger.update("skipped", state=State.SKIPPED_BUDGET)
    manifest = manifest_of(
        valid_row(0, "fresh", resolution="4k", duration=10), valid_row(1, "skipped")
    )
    table = build_results(manifest, ledger.all())
    assert table.column("estimated_cost").to_pylist() == [
        spec.estimate_cost("4k", 10),
        spec.estimate_cost("720p", 6),
    ]
    assert table.column("attempt").to_pylist() == [None, 0]
    priced = build_results(manifest, ledger.all(), prices={"720p": 1.0, "1080p": 2, "4k": 3.0})
    assert priced.column("estimated_cost").to_pylist() == [5.0, 1.0]


def test_carried_columns_sit_between_request_and_outcome(ledger: Ledger) -> None:
    rows = (
        valid_row(0, "a", extra={"campaign": "spring", "n": 3, "score": 0.5, "mixed": 1}),
        valid_row(1, "b", extra={"campaign": None, "n": None, "score": float("nan"), "mixed": "x"}),
    )
    manifest = manifest_of(*rows, extra_columns=("campaign", "n", "score", "mixed", "empty"))
    table = build_results(manifest, ledger.all())
    extra = [
        pa.field("campaign", pa.string()),
        pa.field("n", pa.int64()),
        pa.field("score", pa.float64()),
        pa.field("mixed", pa.string()),
        pa.field("empty", pa.string()),
    ]
    assert table.schema.equals(results_schema(extra))
    assert table.column_names[5:12] == [
        "image_count",
        "campaign",
        "n",
        "score",
        "mixed",
        "empty",
        "status",
    ]
    assert table.column("campaign").to_pylist() == ["spring", None]
    assert table.column("n").to_pylist() == [3, None]
    assert table.column("score").to_pylist() == [0.5, None]
    assert table.column("mixed").to_pylist() == ["1", "x"]
    assert table.column("empty").to_pylist() == [None, None]


def test_colliding_carried_column_gets_the_manifest_prefix(ledger: Ledger) -> None:
    row = valid_row(0, "a", extra={"status": "approved", "cost": "12", "manifest_cost": "y"})
    manifest = manifest_of(row, extra_columns=("status", "cost", "manifest_cost"))
    table = build_results(manifest, ledger.all())
    (out,) = table.to_pylist()
    assert out["status"] == "not_submitted"
    assert out["manifest_status"] == "approved"
    # The prefix repeats until the name is free, so no column ever hides another.
    assert out["manifest_manifest_cost"] == "12"
    assert out["manifest_cost"] == "y"


def test_columns_from_a_real_csv_manifest_stay_strings(tmp_path: Path, ledger: Ledger) -> None:
    source = tmp_path / "batch.csv"
    source.write_text(
        "id,prompt,duration,campaign,budget_line,status\n"
        "one,a cat,6,spring,17,approved\n"
        "two,a dog,abc,summer,-5,draft\n",
        encoding="utf-8",
    )
    manifest = read_manifest(source)
    table = build_results(manifest, ledger.all())
    assert table.column_names[6:10] == ["campaign", "budget_line", "manifest_status", "status"]
    assert table.schema.field("budget_line").type == pa.string()
    assert table.column("budget_line").to_pylist() == ["17", "-5"]
    assert table.column("status").to_pylist() == ["not_submitted", "invalid"]
    assert table.column("duration").to_pylist() == [6, None]


# --- files ----------------------------------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://evil.example","click")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\ry"]


def _formula_table(ledger: Ledger) -> pa.Table:
    rows = [
        valid_row(n, f"r{n}", prompt=text, extra={"note": text, "level": -n - 1})
        for n, text in enumerate(FORMULAS)
    ]
    rows.append(valid_row(len(rows), "plain", prompt="a = b, not a formula"))
    downloaded(ledger, "r0", 0)
    return build_results(manifest_of(*rows, extra_columns=("note", "level")), ledger.all())


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_write_results_writes_both_files_and_nothing_else(tmp_path: Path, ledger: Ledger) -> None:
    table = _formula_table(ledger)
    out = tmp_path / "results-out"
    parquet, csv_path = write_results(table, out)
    assert (parquet, csv_path) == (out / "results.parquet", out / "results.csv")
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.parquet"]
    assert read_results(out).equals(table)
    assert pq.read_schema(parquet).equals(table.schema)


def test_csv_defuses_formulas_and_parquet_keeps_them(tmp_path: Path, ledger: Ledger) -> None:
    table = _formula_table(ledger)
    write_results(table, tmp_path)
    rows = _csv_rows(tmp_path / "results.csv")
    assert [r["prompt"] for r in rows] == [f"'{t}" for t in FORMULAS] + ["a = b, not a formula"]
    assert [r["note"] for r in rows[: len(FORMULAS)]] == [f"'{t}" for t in FORMULAS]
    assert read_results(tmp_path).column("prompt").to_pylist()[: len(FORMULAS)] == FORMULAS
    # Numbers are numbers: a negative value in a numeric column is left alone.
    assert [r["level"] for r in rows] == [str(-n - 1) for n in range(len(FORMULAS))] + [""]
    assert rows[0]["cost"] == "0.14" and rows[0]["duration"] == "6"


def test_csv_times_are_iso_8601_utc(tmp_path: Path, ledger: Ledger) -> None:
    write_results(_formula_table(ledger), tmp_path)
    first, second, *_ = _csv_rows(tmp_path / "results.csv")
    assert first["submitted_at"] == "2026-01-01T00:00:01.000000Z"
    assert first["url_expires_at"] == "2026-01-02T00:00:00.000000Z"
    parsed = datetime.fromisoformat(first["completed_at"])
    assert parsed == datetime(2026, 1, 1, 0, 0, 40, tzinfo=UTC)
    assert second["submitted_at"] == ""


def test_write_replaces_and_a_failed_write_leaves_the_old_file(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _formula_table(ledger)
    write_results(table, tmp_path)
    write_results(table.slice(0, 2), tmp_path)
    assert read_results(tmp_path).num_rows == 2
    before = (tmp_path / "results.parquet").read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(results.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_results(table, tmp_path)
    assert (tmp_path / "results.parquet").read_bytes() == before
    # No temp file is left behind ("out" holds the fixture's ledger).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "results.csv", "results.parquet"]


def test_read_results_without_a_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_results(tmp_path)


def test_artifact_of_a_built_table_is_json_safe(ledger: Ledger) -> None:
    from tasks.present.summary import results_table_for_artifact

    downloaded(ledger, "a")
    table = build_results(manifest_of(valid_row(0, "a"), invalid_row(1, "b")), ledger.all())
    json.dumps(results_table_for_artifact(table))
