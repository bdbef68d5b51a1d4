"""The results table: one line per manifest row, joining what was asked with what happened.

Built from the manifest and the ledger alone (never from the API), so it can be rebuilt at any
time, by any run or by `videobatch results`, and always says the same thing.

Columns, in order (`SCHEMA` holds the fixed ones with their Arrow types):

    id, prompt, duration, resolution, aspect_ratio, image_count   what the row asked for
    <manifest columns>     every other manifest column, carried through with the type it came
                           with (CSV cells are strings). One whose name collides with a fixed
                           column is renamed `manifest_<name>` (prefixed again while that name
                           is taken too), so neither hides the other.
    status                 one of RESULT_STATUSES (`tasks.store.states.Status`, mapped from the
                           ledger state by `tasks.store.states.result_status`); `conflict` marks a
                           row held because its paid task was made from another version of the
                           row: its money columns (task_id, attempt, cost, estimated_cost,
                           submitted_at, run_id) stay, since money spent is still spent, but
                           what that task made (video_*, timings, completed_at) is left empty,
                           so no video is ever shown under a request it was not made from. The
                           file itself stays on disk untouched.
    error_code, error_message
    task_id, attempt
    cost                   what the API reported it charged (None while unknown)
    estimated_cost         the estimate committed when the row was sent; for a row never sent,
                           what sending it would cost at the given prices
    earlier_posts_cost     estimates of this row's earlier POSTs whose outcome was never known
                           (a resent `unknown` row): they may have been charged, so they count
                           as money at risk on top of the row's own cost
    submitted_at           when the API accepted the task (UTC)
    completed_at           the API's own completion time (UTC)
    generation_s           the API's `actual_time`
    wait_s                 submitted_at -> the moment polling saw the task finish
    polls                  status requests made for the current task
    download_s             seconds spent fetching and checking the video
    total_s                the latest attempt's intent -> the row's last ledger write, for rows
                           that have settled (None while a row is still in flight): the whole
                           wall-clock cost of the row, queueing and download included
    video_path             relative to the output folder, e.g. `videos/<id>.mp4`; for an output in
                           an object store, the video's URL (`s3://bucket/prefix/videos/<id>.mp4`,
                           `with_video_urls`) on completed rows, empty on the others
    video_bytes, video_sha256, video_width, video_height, video_duration_s
    url_expires_at         when the API's download link expires (UTC); the link is never kept
    run_id                 the run that last sent the row

Files are written beside the ledger as `results.parquet` (exact values and types) and
`results.csv` (for spreadsheets: formula-like text is defused, times are ISO 8601 UTC).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, overload

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from apimart import spec
from tasks.store.ledger import RowRecord
from tasks.store.states import SETTLED, STATUS_ORDER, UNSENT, Status
from tasks.store.states import result_status as status_of_state
from tasks.store.storage import Output, open_output

if TYPE_CHECKING:
    from tasks.store.manifest import Manifest, ManifestRow

__all__ = [
    "CSV_FILE",
    "PARQUET_FILE",
    "RESULT_STATUSES",
    "SCHEMA",
    "build_results",
    "read_results",
    "result_status",
    "results_schema",
    "write_results",
]

PARQUET_FILE: Final = "results.parquet"
CSV_FILE: Final = "results.csv"

# Display order: done first, then what went wrong, then what never started.
RESULT_STATUSES: Final = STATUS_ORDER

INVALID_ROW_CODE: Final = "invalid_row"
CONFLICT_CODE: Final = "manifest_conflict"
# What a held row's old task made: shown under the row's new request, it would be a lie.
_OLD_RESULT: Final = (
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
)
MANIFEST_PREFIX: Final = "manifest_"

_TS: Final = pa.timestamp("us", tz="UTC")
_HEAD: Final = (
    pa.field("id", pa.string(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("duration", pa.int32()),
    pa.field("resolution", pa.string()),
    pa.field("aspect_ratio", pa.string()),
    pa.field("image_count", pa.int32()),
)
_TAIL: Final = (
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_code", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("task_id", pa.string()),
    pa.field("attempt", pa.int32()),
    pa.field("cost", pa.float64()),
    pa.field("estimated_cost", pa.float64()),
    pa.field("earlier_posts_cost", pa.float64()),
    pa.field("submitted_at", _TS),
    pa.field("completed_at", _TS),
    pa.field("generation_s", pa.float64()),
    pa.field("wait_s", pa.float64()),
    pa.field("polls", pa.int32()),
    pa.field("download_s", pa.float64()),
    pa.field("total_s", pa.float64()),
    pa.field("video_path", pa.string()),
    pa.field("video_bytes", pa.int64()),
    pa.field("video_sha256", pa.string()),
    pa.field("video_width", pa.int32()),
    pa.field("video_height", pa.int32()),
    pa.field("video_duration_s", pa.float64()),
    pa.field("url_expires_at", _TS),
    pa.field("run_id", pa.string()),
)
SCHEMA: Final = pa.schema([*_HEAD, *_TAIL])
FIXED_COLUMNS: Final = frozenset(SCHEMA.names)

# OWASP CSV injection: a cell starting with one of these is run as a formula by spreadsheets.
_FORMULA_START: Final = r"^([=+\-@\t\r])"
_INT32_MAX: Final = 2**31 - 1


def result_status(row: ManifestRow, record: RowRecord | None) -> Status:
    """The row's outcome as the results table reports it (the map is `tasks.store.states`')."""
    return status_of_state(None if record is None else record.state, valid=row.valid)


def results_schema(extra: Sequence[pa.Field] = ()) -> pa.Schema:
    """The fixed columns with the carried-through manifest columns between them."""
    return pa.schema([*_HEAD, *extra, *_TAIL])


def build_results(
    manifest: Manifest,
    ledger_rows: Mapping[str, RowRecord],
    *,
    prices: dict[str, float] | None = None,
    held: Mapping[str, str] | None = None,
) -> pa.Table:
    """One line per manifest row, in manifest order (`prices` as for `spec.estimate_cost`).

    `held` maps the rows the ledger check holds (see `tasks.run.lifecycle.ledger_conflicts`) to why:
    they read `conflict`, with that reason as their error message.
    """
    rows = manifest.rows
    records = [ledger_rows.get(row.id) for row in rows]
    columns: dict[str, list[Any]] = {f.name: [] for f in (*_HEAD, *_TAIL)}
    held = held or {}
    seen: set[str] = set()
    for row, record in zip(rows, records, strict=True):
        values = _row_values(row, record, prices)
        # A duplicate id is the later, invalid copy; the hold is the first row's.
        if row.id in held and row.id not in seen:
            values.update(dict.fromkeys(_OLD_RESULT))
            values.update(
                status=Status.CONFLICT, error_code=CONFLICT_CODE, error_message=held[row.id]
            )
        seen.add(row.id)
        for name, value in values.items():
            columns[name].append(value)

    extra_fields, extra_arrays = _extra_columns(manifest)
    schema = results_schema(extra_fields)
    arrays: list[pa.Array] = []
    extra_by_name = dict(zip((f.name for f in extra_fields), extra_arrays, strict=True))
    for field in schema:
        if field.name in extra_by_name:
            arrays.append(extra_by_name[field.name])
        else:
            arrays.append(pa.array(columns[field.name], type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


@overload
def write_results(table: pa.Table, out: Path) -> tuple[Path, Path]: ...
@overload
def write_results(table: pa.Table, out: str | Output) -> tuple[Path | str, Path | str]: ...
def write_results(table: pa.Table, out: Path | str | Output) -> tuple[Path | str, Path | str]:
    """Write `OUT/results.parquet` and `OUT/results.csv`, each replaced atomically; `out` is a
    folder (returns the two paths) or a store URL such as `s3://bucket/prefix` (returns the
    two URLs; each object appears whole or not at all, see `tasks.store.storage`)."""
    output = open_output(out)
    parquet = output.write(PARQUET_FILE, lambda f: pq.write_table(table, f))
    csv_table = _for_spreadsheets(table)
    csv = output.write(CSV_FILE, lambda f: pacsv.write_csv(csv_table, f))
    return parquet, csv


def with_video_urls(table: pa.Table, output: Output) -> pa.Table:
    """`table` with each completed row's `video_path` replaced by the video's URL in `output`
    (a store location), and no path on rows whose video is not there (not completed)."""
    index = table.schema.get_field_index("video_path")
    statuses = table.column("status").to_pylist()
    paths = table.column("video_path").to_pylist()
    urls = [
        output.url(str(path)) if path and status == Status.COMPLETED else None
        for path, status in zip(paths, statuses, strict=True)
    ]
    field = table.schema.field(index)
    return table.set_column(index, field, pa.array(urls, type=field.type))


def read_results(out: str | Path) -> pa.Table:
    """The table last written to `OUT/results.parquet`, a folder or a URL (FileNotFoundError
    when none)."""
    with open_output(str(out)).open_input(PARQUET_FILE) as handle:
        return pq.read_table(handle)


# --- one row ------------------------------------------------------------------------------


def _row_values(
    row: ManifestRow, record: RowRecord | None, prices: dict[str, float] | None
) -> dict[str, Any]:
    fields = row.fields
    request = row.request
    status = result_status(row, record)
    values: dict[str, Any] = {
        "id": row.id,
        "prompt": _text(fields.get("prompt", request.prompt if request else None)),
        "duration": _int32(fields.get("duration", request.duration if request else None)),
        "resolution": _text(fields.get("resolution", request.resolution if request else None)),
        "aspect_ratio": _text(
            fields.get("aspect_ratio", request.aspect_ratio if request else None)
        ),
        "image_count": _int32(
            fields.get("image_count", len(request.image_urls) if request else None)
        ),
        "status": status,
    }
    rec = record if record is not None else RowRecord(row_id=row.id, idx=row.index)
    has_record = record is not None
    estimated = rec.estimated_cost
    if estimated is None and request is not None and status in UNSENT:
        estimated = spec.estimate_cost(request.resolution, request.duration, prices)
    values.update(
        error_code=rec.error_code,
        error_message=rec.error_message,
        task_id=rec.task_id,
        attempt=rec.attempt if has_record else None,
        cost=_float(rec.cost),
        estimated_cost=_float(estimated),
        earlier_posts_cost=_float(rec.earlier_posts_cost),
        submitted_at=_micros(rec.submitted_at),
        completed_at=_micros(rec.api_completed),
        generation_s=_float(rec.generation_s),
        wait_s=_span(rec.submitted_at, rec.terminal_at),
        polls=rec.polls if has_record else None,
        download_s=_float(rec.download_s),
        total_s=_span(rec.intent_at, _last_step(rec)) if rec.state in SETTLED else None,
        video_path=rec.video_path,
        video_bytes=rec.video_bytes,
        video_sha256=rec.video_sha256,
        video_width=_int32(rec.video_width),
        video_height=_int32(rec.video_height),
        video_duration_s=_float(rec.video_duration_s),
        url_expires_at=_micros(rec.url_expires_at),
        run_id=rec.run_id,
    )
    if status is Status.INVALID:
        # Ledger facts (task, cost, files) stay: money spent on an earlier version of the row
        # is still money spent. Only the verdict and its reason come from the manifest.
        values["error_code"] = INVALID_ROW_CODE
        values["error_message"] = "; ".join(f"{col}: {rule}" for col, rule in row.problems.items())
    return values


def _last_step(record: RowRecord) -> float | None:
    ends = [t for t in (record.terminal_at, record.updated_at) if t is not None]
    return max(ends) if ends else None


def _span(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(end - start, 6)


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


def _float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int32(value: object) -> int | None:
    """An int for an int32 column; raw values that are not whole numbers read as missing
    (the row's problems already say what was wrong with them)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            return None
        if not parsed.is_integer():
            return None
        number = int(parsed)
    else:
        return None
    return number if -_INT32_MAX - 1 <= number <= _INT32_MAX else None


def _micros(epoch_s: float | None) -> int | None:
    """Epoch seconds as microseconds; the API's times are Unix seconds (docs and sandbox)."""
    number = _float(epoch_s)
    return None if number is None else round(number * 1_000_000)


# --- carried-through manifest columns -------------------------------------------------------


def _extra_columns(manifest: Manifest) -> tuple[list[pa.Field], list[pa.Array]]:
    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []
    # Manifest columns that collide with nothing keep their names; only a collision with a
    # fixed column is renamed, to a name no other column holds.
    taken = set(FIXED_COLUMNS) | set(manifest.extra_columns)
    for column in manifest.extra_columns:
        name = column
        if column in FIXED_COLUMNS:
            name = MANIFEST_PREFIX + column
            while name in taken:
                name = MANIFEST_PREFIX + name
            taken.add(name)
        array = _infer([row.extra.get(column) for row in manifest.rows])
        fields.append(pa.field(name, array.type))
        arrays.append(array)
    return fields, arrays


def _infer(values: list[Any]) -> pa.Array:
    """Arrow's own type for the column, or text when its cells disagree on a type."""
    try:
        # from_pandas: a NaN from a pandas-read manifest means an empty cell, not a number.
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        array = pa.array([_text(v) for v in values], type=pa.string())
    # An all-empty column has Arrow type null, which spreadsheets and pandas read back as
    # strings anyway; say so up front so every table of one manifest has the same schema.
    if pa.types.is_null(array.type):
        array = array.cast(pa.string())
    return array


# --- writing --------------------------------------------------------------------------------


def _for_spreadsheets(table: pa.Table) -> pa.Table:
    """Text cells defused against formula injection; timestamps as ISO 8601 UTC text."""
    arrays: list[pa.ChunkedArray] = []
    fields: list[pa.Field] = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            column = pc.replace_substring_regex(column, pattern=_FORMULA_START, replacement=r"'\1")
        elif pa.types.is_timestamp(field.type):
            if field.type.tz is None:
                column = column.cast(pa.timestamp(field.type.unit, tz="UTC"))
            column = pc.strftime(column, format="%Y-%m-%dT%H:%M:%SZ")
        arrays.append(column)
        fields.append(pa.field(field.name, column.type, field.nullable))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
