"""`OUT/report.html`: one self-contained page a person can open after a run.

Everything is inline (CSS, SVG charts drawn here, thumbnails as base64 JPEG data URIs) and a
Content-Security-Policy forbids any fetch, so the file can be mailed or archived and opened
offline without leaking anything. Every value that came from the manifest or the API is user
text and is escaped. No Prefect here: the CLI writes the same report outside a flow.

Public API: `write_report(out, table=None) -> str` (a `file://` URI of the written report, or
its URL when `out` is a store location such as `s3://bucket/prefix`) and
`report_numbers(table) -> dict` (the totals the page shows, for tests and callers).
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.present.summary import column_values as _column
from tasks.present.summary import earlier_posts_cost, money, seconds
from tasks.present.summary import finite_number as _number
from tasks.store.atomic import write_text_atomically
from tasks.store.probe import Thumbnail, first_frame_thumbnail
from tasks.store.results import FIXED_COLUMNS, PARQUET_FILE, read_results
from tasks.store.states import Status
from tasks.store.storage import LocalOutput, Output, open_output, staged_preview

REPORT_FILE = "report.html"
THUMB_WIDTH = 240
PROMPT_CHARS = 140
# PyAV releases the GIL while decoding and scaling, so threads give real parallelism here.
THUMB_WORKERS = max(1, min(8, os.cpu_count() or 1))
MAX_BINS = 30

_RESOLUTION_ORDER = {"720p": 0, "1080p": 1, "4k": 2}
# Columns the page shows in their own place; anything else came from the manifest.
_KNOWN_COLUMNS = FIXED_COLUMNS | {"image_urls"}
# A conflict row gets the colour of anything else unexpected.
_STATUS_COLOURS: dict[str, str] = {
    Status.COMPLETED: "#2e9d5b",
    Status.FAILED: "#d64545",
    Status.CANCELLED: "#8a8f98",
    Status.INVALID: "#e8903a",
    Status.REJECTED: "#c2622d",
    Status.UNKNOWN: "#8a5cd1",
    Status.TIMEOUT: "#d9a521",
    Status.DOWNLOAD_FAILED: "#d6457f",
    Status.SKIPPED_BUDGET: "#5b7fb8",
    Status.SKIPPED_PAYMENT: "#3f5f91",
    Status.NOT_SUBMITTED: "#b9bec7",
}
_OTHER_COLOUR = "#6b7280"


def _colour(status: str) -> str:
    return _STATUS_COLOURS.get(status, _OTHER_COLOUR)


def _esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    number = _number(value)
    return datetime.fromtimestamp(number, UTC) if number is not None else None


# --------------------------------------------------------------------------- numbers


def _percentiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    median, p95 = np.percentile(np.asarray(values, dtype=float), [50, 95])
    return float(median), float(p95)


def _group_costs(
    keys: list[Any], statuses: list[str], costs: list[float | None], estimates: list[float | None]
) -> dict[str, dict[str, float | int]]:
    groups: dict[str, dict[str, float | int]] = {}
    for key, status, cost, estimate in zip(keys, statuses, costs, estimates, strict=True):
        label = "–" if key is None else str(key)
        group = groups.setdefault(label, {"rows": 0, "videos": 0, "cost": 0.0, "estimated": 0.0})
        group["rows"] += 1
        group["videos"] += status == Status.COMPLETED
        group["cost"] += cost or 0.0
        group["estimated"] += estimate or 0.0
    return groups


def _resolution_key(label: str) -> tuple[int, str]:
    return _RESOLUTION_ORDER.get(label, len(_RESOLUTION_ORDER)), label


def _duration_key(label: str) -> tuple[float, str]:
    number = _number(label)
    return (math.inf if number is None else number), label


def report_numbers(table: pa.Table) -> dict[str, Any]:
    """The totals the report shows, as plain numbers.

    - `rows`: rows in the table; `videos`: rows with status `completed`.
    - `cost`: sum of the real `cost` column (rows without a cost count 0).
    - `success_rate`: `videos / rows` (0.0 for an empty table), a fraction, not a percentage.
    - `unknown_rows`, `at_risk`: rows whose POST may have created a paid task, and the sum of
      the `estimated_cost` of those without a real cost yet, plus every row's
      `earlier_posts_cost` (as `tasks.present.summary` counts it).
    - `median_generation_s`, `p95_generation_s`: numpy linear-interpolated percentiles of
      `generation_s` over completed rows that have one; None when there is none.
    - `statuses`: count per status; `by_resolution`, `by_duration`: per group `rows`, `videos`,
      `cost`, `estimated` (ordered 720p/1080p/4k, durations ascending).
    """
    statuses = [str(s) if s is not None else "unknown" for s in _column(table, "status")]
    costs = [_number(v) for v in _column(table, "cost")]
    estimates = [_number(v) for v in _column(table, "estimated_cost")]
    generation = [
        g
        for g, status in zip(
            (_number(v) for v in _column(table, "generation_s")), statuses, strict=True
        )
        if status == Status.COMPLETED and g is not None
    ]
    median, p95 = _percentiles(generation)
    rows = table.num_rows
    videos = statuses.count(Status.COMPLETED)
    by_resolution = _group_costs(_column(table, "resolution"), statuses, costs, estimates)
    by_duration = _group_costs(_column(table, "duration"), statuses, costs, estimates)
    return {
        "rows": rows,
        "videos": videos,
        "cost": float(sum(c for c in costs if c is not None)),
        "success_rate": videos / rows if rows else 0.0,
        "unknown_rows": statuses.count(Status.UNKNOWN),
        "at_risk": float(
            sum(
                e
                for e, c, s in zip(estimates, costs, statuses, strict=True)
                if s == Status.UNKNOWN and c is None and e
            )
            + sum(earlier_posts_cost(table))
        ),
        "median_generation_s": median,
        "p95_generation_s": p95,
        "generation_samples": len(generation),
        "statuses": dict(Counter(statuses).most_common()),
        "by_resolution": {k: by_resolution[k] for k in sorted(by_resolution, key=_resolution_key)},
        "by_duration": {k: by_duration[k] for k in sorted(by_duration, key=_duration_key)},
    }


@dataclass(frozen=True)
class Failure:
    status: str
    error_code: str
    count: int
    example: str
    row_ids: tuple[str, ...]


def _failures(table: pa.Table) -> list[Failure]:
    """Every row that did not end with a video, grouped by why."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for row_id, status, code, message in zip(
        _column(table, "id"),
        _column(table, "status"),
        _column(table, "error_code"),
        _column(table, "error_message"),
        strict=True,
    ):
        status = str(status) if status is not None else Status.UNKNOWN.value
        if status == Status.COMPLETED:
            continue
        key = (status, "" if code is None else str(code))
        groups.setdefault(key, []).append(("" if row_id is None else str(row_id), message or ""))
    failures = [
        Failure(
            status=status,
            error_code=code,
            count=len(members),
            example=next((str(m) for _, m in members if m), ""),
            row_ids=tuple(r for r, _ in members),
        )
        for (status, code), members in groups.items()
    ]
    return sorted(failures, key=lambda f: (-f.count, f.status, f.error_code))


# --------------------------------------------------------------------------- thumbnails


def _video_file(out: Path, rel: Any) -> Path | None:
    """The video under `out`, or, for a video already in the store whose staged copy was
    deleted, the first frame kept beside where it was (`staged_preview`)."""
    if not rel:
        return None
    path = out / str(rel)
    if path.is_file():
        return path
    preview = staged_preview(path)
    return preview if preview.is_file() else None


def _thumbnail(path: Path) -> Thumbnail | None:
    # A broken file must not cost the whole report: its card says "no preview" instead.
    try:
        return first_frame_thumbnail(path, width=THUMB_WIDTH)
    except Exception:
        return None


def _thumbnails(paths: list[Path | None]) -> list[Thumbnail | None]:
    wanted = list(dict.fromkeys(p for p in paths if p is not None))
    if not wanted:
        return [None] * len(paths)
    with ThreadPoolExecutor(max_workers=THUMB_WORKERS) as pool:
        made = dict(zip(wanted, pool.map(_thumbnail, wanted), strict=True))
    return [made.get(p) if p is not None else None for p in paths]


# --------------------------------------------------------------------------- SVG


def _nice_step(span: float, target: int) -> float:
    if span <= 0:
        return 1.0
    raw = span / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= raw:
            return factor * magnitude
    return 10 * magnitude


def _ticks(low: float, high: float, target: int = 6) -> list[float]:
    step = _nice_step(high - low, target)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * max(1.0, abs(high)):
        ticks.append(round(value, 10))
        value += step
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:g}"


def _histogram_svg(values: Sequence[float], median: float, p95: float) -> str:
    data = np.asarray(values, dtype=float)
    low, high = float(data.min()), float(data.max())
    if high - low < 1e-9:
        edges = np.array([low - 0.5, high + 0.5])
    else:
        edges = np.histogram_bin_edges(data, bins="auto")
        if len(edges) - 1 > MAX_BINS:
            edges = np.linspace(low, high, MAX_BINS + 1)
    counts, edges = np.histogram(data, bins=edges)
    width, height = 720, 260
    left, right, top, bottom = 48, 16, 44, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    x0, x1 = float(edges[0]), float(edges[-1])
    peak = int(counts.max()) or 1

    def x(value: float) -> float:
        return left + (value - x0) / (x1 - x0) * plot_w

    def y(count: float) -> float:
        return top + plot_h - count / peak * plot_h

    parts = [
        f'<svg id="generation-histogram" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="histogram of generation time">'
    ]
    for tick in _ticks(0, peak, 4):
        if tick != int(tick):
            continue
        ty = y(tick)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
            f'<text class="axis" x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{int(tick)}'
            "</text>"
        )
    for count, start, end in zip(counts, edges[:-1], edges[1:], strict=True):
        if not count:
            continue
        bx, bw = x(float(start)), max(1.0, x(float(end)) - x(float(start)) - 1)
        by = y(float(count))
        parts.append(
            f'<rect class="bar" x="{bx:.1f}" y="{by:.1f}" width="{bw:.1f}" '
            f'height="{top + plot_h - by:.1f}"><title>{float(start):.1f}–{float(end):.1f} s: '
            f"{int(count)} videos</title></rect>"
        )
    baseline = top + plot_h
    parts.append(
        f'<line class="axisline" x1="{left}" x2="{width - right}" y1="{baseline}" y2="{baseline}"/>'
    )
    for tick in _ticks(x0, x1):
        if x0 - 1e-9 <= tick <= x1 + 1e-9:
            tx = x(tick)
            parts.append(
                f'<line class="axisline" x1="{tx:.1f}" x2="{tx:.1f}" y1="{baseline}" '
                f'y2="{baseline + 4}"/><text class="axis" x="{tx:.1f}" y="{baseline + 17}" '
                f'text-anchor="middle">{_tick_label(tick)}</text>'
            )
    parts.append(
        f'<text class="axis" x="{left + plot_w / 2:.1f}" y="{height - 4}" '
        'text-anchor="middle">generation time (s)</text>'
    )
    # Two label rows, and each label flips to the side of its line that has room, so a median
    # and p95 close together or near an edge stay readable.
    for name, value, css, label_y in (
        ("median", median, "median", top - 20),
        ("p95", p95, "p95", top - 6),
    ):
        mx = x(value)
        label = f"{name} {value:.1f} s"
        room = len(label) * 7.5 + 6
        anchor, lx = ("start", mx + 4) if mx + room <= width else ("end", mx - 4)
        parts.append(
            f'<line class="marker {css}" x1="{mx:.1f}" x2="{mx:.1f}" y1="{label_y - 10}" '
            f'y2="{baseline}"/><text class="marker-label {css}" x="{lx:.1f}" '
            f'y="{label_y}" text-anchor="{anchor}">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _status_bar_svg(statuses: dict[str, int], rows: int) -> str:
    width, height = 1000, 28
    parts = [
        f'<svg id="status-bar" class="statusbar" viewBox="0 0 {width} {height}" '
        'preserveAspectRatio="none" role="img" aria-label="rows by status">'
    ]
    offset = 0.0
    for status, count in statuses.items():
        w = count / rows * width
        parts.append(
            f'<rect x="{offset:.2f}" y="0" width="{w:.2f}" height="{height}" '
            f'fill="{_colour(status)}"><title>{_esc(status)}: {count}</title></rect>'
        )
        offset += w
    parts.append("</svg>")
    return "".join(parts)


def _bar_svg(value: float, peak: float) -> str:
    fraction = value / peak if peak > 0 else 0.0
    return (
        '<svg class="minibar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true">'
        f'<rect x="0" y="0" width="{100 * fraction:.2f}" height="10"/></svg>'
    )


# --------------------------------------------------------------------------- HTML

_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1f2430;--mute:#6b7280;--line:#e3e6eb;--accent:#3867d6}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--ink)}
main{max-width:1280px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:32px 0 12px}
.sub{color:var(--mute);margin:0 0 20px;word-break:break-all}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.tile .label{color:var(--mute);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile .value{display:block;font-size:26px;font-weight:650;margin-top:2px}
.tile .note{color:var(--mute);font-size:12px}
.tile.risk .value{color:#8a5cd1}
.statusbar{width:100%;height:22px;border-radius:6px;margin-top:16px;display:block}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin-top:8px;color:var(--mute)}
.dot{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:5px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:16px}
.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;
overflow-x:auto}
.panel h3{font-size:14px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--mute);font-weight:600;font-size:12px;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.barcell{width:30%;vertical-align:middle}
.minibar{width:100%;height:10px;display:block}.minibar rect{fill:var(--accent)}
.chart{width:100%;max-width:960px;height:auto;display:block}
.chart .bar{fill:var(--accent);opacity:.85}.chart .grid{stroke:var(--line)}
.chart .axisline{stroke:var(--mute)}.chart .axis{fill:var(--mute);font-size:11px}
.chart .marker{stroke-width:2;stroke-dasharray:5 3}
.chart .median{stroke:#2e9d5b;fill:#2e9d5b}.chart .p95{stroke:#d64545;fill:#d64545}
.chart .marker-label{font-size:12px;font-weight:600;stroke:none}
.stats{display:flex;gap:24px;margin:0 0 10px}.stats b{font-size:18px}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;color:#fff;font-size:11px;
font-weight:600;white-space:nowrap}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.msg{max-width:560px;word-break:break-word}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden;
display:flex;flex-direction:column}
.card a.frame{display:block;position:relative;background:#111;aspect-ratio:16/9}
.card img.thumb{position:absolute;inset:0;width:100%;height:100%;object-fit:contain}
.card .placeholder{aspect-ratio:16/9;display:flex;align-items:center;justify-content:center;
color:#fff;font-weight:600;font-size:13px;text-transform:uppercase;letter-spacing:.05em}
.card .body{padding:8px 10px 10px}
.card .rid{font-weight:650;word-break:break-all}
.card .meta{color:var(--mute);font-size:12px;margin:2px 0 4px}
.card .prompt{font-size:12.5px;margin:0}
.card .extra{color:var(--mute);font-size:11.5px;margin-top:4px;word-break:break-word}
.empty{color:var(--mute)}
footer{color:var(--mute);font-size:12px;margin:32px 0 8px}
"""

# No network at all: only inline styles and data: images may load, whatever the page contains.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _tile(
    label: str, element_id: str, value: str, raw: object, note: str = "", css: str = ""
) -> str:
    return (
        f'<div class="tile {css}"><span class="label">{_esc(label)}</span>'
        f'<span class="value" id="{element_id}" data-value="{_esc(raw)}">{_esc(value)}</span>'
        f'<span class="note">{_esc(note)}</span></div>'
    )


def _cost_table(title: str, table_id: str, groups: dict[str, dict[str, float | int]]) -> str:
    peak = max((float(g["cost"]) for g in groups.values()), default=0.0)
    rows = []
    for label, group in groups.items():
        videos, cost = int(group["videos"]), float(group["cost"])
        per_video = money(cost / videos) if videos else "–"
        rows.append(
            f'<tr data-key="{_esc(label)}"><td>{_esc(label)}</td>'
            f'<td class="num">{int(group["rows"])}</td><td class="num">{videos}</td>'
            f'<td class="barcell">{_bar_svg(cost, peak)}</td>'
            f'<td class="num cost" data-value="{cost!r}">{money(cost)}</td>'
            f'<td class="num">{money(float(group["estimated"]))}</td>'
            f'<td class="num">{per_video}</td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="7" class="empty">no rows</td></tr>'
    return (
        f'<div class="panel"><h3>{_esc(title)}</h3><table id="{table_id}"><thead><tr>'
        f'<th>{_esc(title.split()[-1])}</th><th class="num">rows</th><th class="num">videos</th>'
        '<th></th><th class="num">spent</th><th class="num">estimated</th>'
        '<th class="num">per video</th>'
        f"</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _failures_html(failures: list[Failure]) -> str:
    if not failures:
        return '<p class="empty" id="failures-none">Every row has its video.</p>'
    rows = []
    for failure in failures:
        shown = ", ".join(failure.row_ids[:5]) + (" …" if len(failure.row_ids) > 5 else "")
        rows.append(
            f'<tr class="failure" data-status="{_esc(failure.status)}" '
            f'data-code="{_esc(failure.error_code)}" data-count="{failure.count}">'
            f'<td><span class="badge" style="background:{_colour(failure.status)}">'
            f"{_esc(failure.status)}</span></td>"
            f"<td><code>{_esc(failure.error_code) or '–'}</code></td>"
            f'<td class="num">{failure.count}</td>'
            f'<td class="msg">{_esc(_truncate(failure.example, 400)) or "–"}</td>'
            f'<td class="msg">{_esc(shown)}</td></tr>'
        )
    return (
        '<div class="panel"><table id="failures"><thead><tr><th>status</th><th>error code</th>'
        '<th class="num">rows</th><th>example message</th><th>row ids</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _card(row: dict[str, Any], thumb: Thumbnail | None, has_file: bool, extras: list[str]) -> str:
    row_id = "" if row.get("id") is None else str(row["id"])
    status = Status.UNKNOWN.value if row.get("status") is None else str(row["status"])
    href = quote(str(row.get("video_path") or ""), safe="/")
    if thumb is not None:
        dims = f' width="{thumb.width}" height="{thumb.height}"'
        data = base64.b64encode(thumb.data).decode("ascii")
        picture = (
            f'<img class="thumb" src="data:{thumb.mime};base64,{data}"{dims} '
            f'alt="first frame of {_esc(row_id)}">'
        )
    else:
        label = "no preview" if has_file else status.replace("_", " ")
        picture = (
            f'<div class="placeholder" style="background:{_colour(status)}">{_esc(label)}</div>'
        )
    if has_file:
        picture = f'<a class="frame" href="{_esc(href)}" title="open {_esc(href)}">{picture}</a>'
    cost, generation = _number(row.get("cost")), _number(row.get("generation_s"))
    meta = " · ".join(
        _esc(part)
        for part in (
            row.get("resolution"),
            f"{row['duration']} s" if row.get("duration") is not None else None,
            row.get("aspect_ratio"),
            money(cost) if cost is not None else None,
            f"gen {seconds(generation)}" if generation is not None else None,
        )
        if part
    )
    prompt = "" if row.get("prompt") is None else str(row["prompt"])
    extra = " · ".join(
        f"{_esc(name)}: {_esc(_truncate(str(row[name]), 60))}"
        for name in extras
        if row.get(name) not in (None, "")
    )
    error = ""
    if status != Status.COMPLETED and (row.get("error_code") or row.get("error_message")):
        error = (
            f'<div class="extra">{_esc(row.get("error_code") or "")} '
            + _esc(_truncate(str(row.get("error_message") or ""), 120))
            + "</div>"
        )
    return (
        f'<div class="card" data-id="{_esc(row_id)}" data-status="{_esc(status)}">{picture}'
        f'<div class="body"><div class="rid">{_esc(row_id)} '
        f'<span class="badge" style="background:{_colour(status)}">{_esc(status)}</span></div>'
        f'<div class="meta">{meta}</div>'
        f'<p class="prompt" title="{_esc(prompt)}">{_esc(_truncate(prompt, PROMPT_CHARS))}</p>'
        f"{f'<div class=extra>{extra}</div>' if extra else ''}{error}</div></div>"
    )


def _legend(statuses: dict[str, int]) -> str:
    return "".join(
        f'<span data-status="{_esc(status)}"><span class="dot" '
        f'style="background:{_colour(status)}"></span>{_esc(status)} {count}</span>'
        for status, count in statuses.items()
    )


def _window(table: pa.Table) -> str:
    starts = [t for t in map(_timestamp, _column(table, "submitted_at")) if t]
    ends = [t for t in map(_timestamp, _column(table, "completed_at")) if t]
    if not starts:
        return ""
    first, last = min(starts), max(ends or starts)
    return f"submitted {first:%Y-%m-%d %H:%M:%S} UTC → last finished {last:%Y-%m-%d %H:%M:%S} UTC"


def render_report(out: Path, table: pa.Table) -> str:
    """The report's HTML for `table`, with thumbnails read from videos under `out`."""
    numbers = report_numbers(table)
    records = table.to_pylist()
    extras = [c for c in table.column_names if c not in _KNOWN_COLUMNS][:4]
    files = [_video_file(out, r.get("video_path")) for r in records]
    thumbs = _thumbnails(files)
    rows, videos = numbers["rows"], numbers["videos"]
    runs = sorted({str(r) for r in _column(table, "run_id") if r})
    median, p95 = numbers["median_generation_s"], numbers["p95_generation_s"]
    generation = [
        g
        for g, s in zip(
            map(_number, _column(table, "generation_s")), _column(table, "status"), strict=True
        )
        if s == Status.COMPLETED and g is not None
    ]

    tiles = "".join(
        (
            _tile("videos made", "total-videos", str(videos), videos),
            _tile(
                "money spent",
                "total-cost",
                money(numbers["cost"]),
                numbers["cost"],
                note="real cost reported by the API",
            ),
            _tile(
                "success rate",
                "success-rate",
                f"{numbers['success_rate']:.1%}",
                numbers["success_rate"],
                note=f"{videos} of {rows} rows",
            ),
            _tile("rows", "total-rows", str(rows), rows),
            _tile(
                "money at risk",
                "at-risk",
                money(numbers["at_risk"]),
                numbers["at_risk"],
                note=f"estimated, {_plural(numbers['unknown_rows'], 'unknown row')}",
                css="risk" if numbers["unknown_rows"] else "",
            ),
        )
    )
    status_block = (
        _status_bar_svg(numbers["statuses"], rows) + f'<div class="legend">'
        f"{_legend(numbers['statuses'])}</div>"
        if rows
        else ""
    )
    if median is not None and p95 is not None:
        histogram = (
            f'<div class="panel"><div class="stats">'
            f'<span>median <b id="median-generation" data-value="{median!r}">'
            f"{seconds(median)}</b></span>"
            f'<span>p95 <b id="p95-generation" data-value="{p95!r}">{seconds(p95)}</b></span>'
            f"<span>over <b>{len(generation)}</b> completed videos</span></div>"
            f"{_histogram_svg(generation, median, p95)}</div>"
        )
    else:
        histogram = (
            '<p class="empty">No completed video has a generation time yet. '
            '<span id="median-generation" data-value="">–</span> '
            '<span id="p95-generation" data-value="">–</span></p>'
        )
    cards = "".join(
        _card(record, thumb, path is not None, extras)
        for record, thumb, path in zip(records, thumbs, files, strict=True)
    )
    with_video = sum(1 for t in thumbs if t is not None)
    written = datetime.now(UTC)
    subtitle = " · ".join(
        part
        for part in (
            _esc(out.resolve()),
            _esc(_window(table)),
            f"run {_esc(', '.join(runs))}" if runs else "",
        )
        if part
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>videobatch report · {_esc(out.name)}</title><style>{_CSS}</style></head>"
        "<body><main>"
        f'<h1>videobatch report</h1><p class="sub">{subtitle}</p>'
        f'<section id="totals"><div class="tiles">{tiles}</div>{status_block}</section>'
        '<section id="costs"><h2>Cost</h2><div class="grid2">'
        f"{_cost_table('by resolution', 'cost-by-resolution', numbers['by_resolution'])}"
        f"{_cost_table('by duration', 'cost-by-duration', numbers['by_duration'])}"
        "</div></section>"
        f'<section id="generation"><h2>Generation time</h2>{histogram}</section>'
        f'<section id="failures-section"><h2>Rows without a video</h2>'
        f"{_failures_html(_failures(table))}</section>"
        f'<section id="contact-sheet"><h2>Contact sheet <span class="empty">'
        f"({with_video} previews, {rows} rows)</span></h2>"
        f'<div class="sheet">{cards}</div></section>'
        f"<footer>written {written:%Y-%m-%d %H:%M:%S} UTC by videobatch · "
        "thumbnails are the first frame of each file; click one to open the video</footer>"
        "</main></body></html>\n"
    )


def write_report(
    out: Path | str | Output, table: pa.Table | None = None, *, videos: Path | None = None
) -> str:
    """Write `OUT/report.html` atomically and return where it is: its absolute `file://` URI
    for a folder, its URL for a store location (`s3://bucket/prefix/report.html`).

    `table` defaults to `OUT/results.parquet` (`read_results`). Videos are looked up as
    `OUT/<video_path>` for a folder; for a store URL as `videos/<video_path>` when `videos`
    names the local folder they were staged in (thumbnails are never downloaded), and the
    cards show no preview without it.
    """
    output = open_output(out)
    if isinstance(output, LocalOutput):
        folder = output.root
        if table is None:
            table = read_results(folder)
        target = folder / REPORT_FILE
        write_text_atomically(target, render_report(folder, table))
        return target.resolve().as_uri()
    if table is None:
        with output.open_input(PARQUET_FILE) as stream:
            table = pq.read_table(stream)
    if videos is not None:
        return str(output.write_text(REPORT_FILE, render_report(Path(videos), table)))
    with tempfile.TemporaryDirectory(prefix="videobatch-report-") as empty:
        return str(output.write_text(REPORT_FILE, render_report(Path(empty), table)))
