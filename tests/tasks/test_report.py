"""The HTML report: self-contained, escaped, and showing the same numbers as report_numbers."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.present.report import report_numbers, write_report
from tasks.present.summary import summarize
from tasks.store.probe import first_frame_thumbnail
from tasks.store.storage import staged_preview

JPEG_MAGIC = b"\xff\xd8\xff"
XSS = '<script>alert("x")</script> & "quotes" \'single\''


def _encoder() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def make_mp4(path: Path, *, width: int = 64, height: int = 36, colour: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(_encoder(), rate=24)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(2):
            pixels = np.full((height, width, 3), (colour, 40 * i, 90), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def row(row_id: str, status: str, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": row_id,
        "prompt": f"prompt for {row_id}",
        "duration": 6,
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "image_count": 0,
        "campaign": "spring",
        "status": status,
        "error_code": None,
        "error_message": None,
        "task_id": None,
        "attempt": 1,
        "cost": None,
        "estimated_cost": 0.15,
        "submitted_at": None,
        "completed_at": None,
        "generation_s": None,
        "video_path": None,
        "run_id": "run-1",
    }
    base.update(values)
    return base


SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("duration", pa.int32()),
        ("resolution", pa.string()),
        ("aspect_ratio", pa.string()),
        ("image_count", pa.int32()),
        ("campaign", pa.string()),
        ("status", pa.string()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("task_id", pa.string()),
        ("attempt", pa.int32()),
        ("cost", pa.float64()),
        ("estimated_cost", pa.float64()),
        ("submitted_at", pa.timestamp("us", tz="UTC")),
        ("completed_at", pa.timestamp("us", tz="UTC")),
        ("generation_s", pa.float64()),
        ("video_path", pa.string()),
        ("run_id", pa.string()),
    ]
)

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2025, 5, 1, 12, 3, tzinfo=UTC)


def results(out: Path) -> pa.Table:
    """Six rows: four videos on disk (one with a hostile prompt), failures, an unknown row."""
    done = {"submitted_at": T0, "completed_at": T1, "task_id": "task"}
    rows = [
        row("a1", "completed", cost=0.15, generation_s=10.0, video_path="videos/a1.mp4", **done),
        row(
            "b2",
            "completed",
            prompt=XSS,
            resolution="1080p",
            duration=8,
            cost=0.25,
            generation_s=20.0,
            video_path="videos/b2.mp4",
            **done,
        ),
        row(
            "c3",
            "completed",
            resolution="4k",
            duration=10,
            cost=0.60,
            generation_s=30.0,
            video_path="videos/c3.mp4",
            **done,
        ),
        row(
            "d4",
            "completed",
            resolution="1080p",
            cost=0.20,
            generation_s=40.0,
            video_path="videos/d4.mp4",
            **done,
        ),
        row(
            "e5",
            "failed",
            cost=0.05,
            error_code="content_policy",
            error_message='refused: <img src=x onerror="alert(1)">',
        ),
        row("f6", "failed", error_code="content_policy", error_message="refused again"),
        row("g7", "unknown", resolution="4k", estimated_cost=0.40),
        row("h8", "invalid", prompt=None, error_code="bad_duration", error_message="7 s"),
        # A completed row whose file vanished: a placeholder card, not a crash.
        row("i9", "download_failed", cost=0.15, video_path="videos/missing.mp4"),
    ]
    for i, record in enumerate(rows):
        if record["video_path"] and record["id"] != "i9":
            make_mp4(out / record["video_path"], colour=40 * i)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


class Page(HTMLParser):
    """The parts of the report a browser test would look at."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.text_of: dict[str, str] = {}
        self.cards: dict[str, dict[str, str | None]] = {}
        self.card_imgs: dict[str, list[str]] = {}
        self.card_links: dict[str, list[str]] = {}
        self.resources: list[str] = []
        self.scripts = 0
        self._open_id: str | None = None
        self._card: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            if attr.get(name) is not None:
                self.resources.append(str(attr[name]))
        element_id = attr.get("id")
        if element_id:
            self.by_id[element_id] = attr
            self._open_id = element_id
            self.text_of[element_id] = ""
        if tag == "div":
            if "card" in (attr.get("class") or "").split():
                self._card, self._depth = str(attr["data-id"]), 0
                self.cards[self._card] = attr
                self.card_imgs[self._card] = []
                self.card_links[self._card] = []
            elif self._card is not None:
                self._depth += 1
        if self._card is not None and tag == "img" and attr.get("class") == "thumb":
            self.card_imgs[self._card].append(str(attr["src"]))
        if self._card is not None and tag == "a":
            self.card_links[self._card].append(str(attr["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._card is not None:
            if self._depth == 0:
                self._card = None
            else:
                self._depth -= 1
        if tag in ("span", "b"):
            self._open_id = None

    def handle_data(self, data: str) -> None:
        if self._open_id is not None:
            self.text_of[self._open_id] += data


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, pa.Table, str, Page]:
    table = results(tmp_path)
    uri = write_report(tmp_path, table)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return tmp_path, table, uri, page


def test_writes_the_file_and_returns_its_uri(report: tuple[Path, pa.Table, str, Page]) -> None:
    """The report is written as report.html (no temporary file left) and its file URI returned."""
    out, _, uri, _ = report
    assert uri == (out / "report.html").resolve().as_uri()
    assert uri.startswith("file://")
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_nothing_is_fetched_from_the_network(tmp_path: Path) -> None:
    """The report loads nothing from the network and runs no script (CSP default-src 'none')."""
    table = results(tmp_path)
    write_report(tmp_path, table)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    assert page.resources
    assert not [r for r in page.resources if re.match(r"\s*(https?:)?//", r, re.I)]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "url(" not in text and "@import" not in text
    assert page.scripts == 0
    assert "default-src 'none'" in text


def test_numbers_match_hand_computed_values(report: tuple[Path, pa.Table, str, Page]) -> None:
    """The report's numbers (cost, rate, at risk, timings, breakdowns) match hand-computed ones."""
    _, table, _, _ = report
    numbers = report_numbers(table)
    assert numbers["rows"] == 9
    assert numbers["videos"] == 4
    assert numbers["cost"] == pytest.approx(0.15 + 0.25 + 0.60 + 0.20 + 0.05 + 0.15)
    assert numbers["success_rate"] == pytest.approx(4 / 9)
    assert numbers["unknown_rows"] == 1
    assert numbers["at_risk"] == pytest.approx(0.40)
    # numpy's linear percentiles of 10, 20, 30, 40.
    assert numbers["median_generation_s"] == pytest.approx(25.0)
    assert numbers["p95_generation_s"] == pytest.approx(38.5)
    assert numbers["statuses"] == {
        "completed": 4,
        "failed": 2,
        "unknown": 1,
        "invalid": 1,
        "download_failed": 1,
    }
    assert list(numbers["by_resolution"]) == ["720p", "1080p", "4k"]
    assert numbers["by_resolution"]["1080p"] == {
        "rows": 2,
        "videos": 2,
        "cost": pytest.approx(0.45),
        "estimated": pytest.approx(0.30),
    }
    assert numbers["by_resolution"]["720p"]["cost"] == pytest.approx(0.15 + 0.05 + 0.15)
    assert list(numbers["by_duration"]) == ["6", "8", "10"]
    assert numbers["by_duration"]["10"]["videos"] == 1


def test_numbers_agree_with_the_markdown_summary(
    report: tuple[Path, pa.Table, str, Page],
) -> None:
    """The report's numbers are the same as the Markdown summary's."""
    _, table, _, _ = report
    numbers, summary = report_numbers(table), summarize(table)
    assert numbers["rows"] == summary.rows
    assert numbers["videos"] == summary.videos
    assert numbers["cost"] == pytest.approx(summary.spent)
    assert numbers["at_risk"] == pytest.approx(summary.at_risk)
    assert numbers["median_generation_s"] == pytest.approx(summary.generation_median_s)
    assert numbers["p95_generation_s"] == pytest.approx(summary.generation_p95_s)


def test_page_shows_the_numbers(report: tuple[Path, pa.Table, str, Page]) -> None:
    """The page shows each number as text and as a machine-readable data-value."""
    _, table, _, page = report
    numbers = report_numbers(table)
    assert page.text_of["total-videos"] == "4"
    assert page.text_of["total-rows"] == "9"
    assert page.text_of["total-cost"] == f"${numbers['cost']:,.2f}" == "$1.40"
    assert page.text_of["success-rate"] == "44.4%"
    assert page.text_of["at-risk"] == "$0.40"
    assert page.text_of["median-generation"] == "25.0 s"
    assert page.text_of["p95-generation"] == "38.5 s"
    for element_id, key in (
        ("total-videos", "videos"),
        ("total-cost", "cost"),
        ("success-rate", "success_rate"),
        ("at-risk", "at_risk"),
        ("median-generation", "median_generation_s"),
        ("p95-generation", "p95_generation_s"),
    ):
        assert float(str(page.by_id[element_id]["data-value"])) == pytest.approx(numbers[key])
    assert "generation-histogram" in page.by_id
    assert "cost-by-resolution" in page.by_id and "cost-by-duration" in page.by_id


def test_every_row_has_a_card_with_its_status(report: tuple[Path, pa.Table, str, Page]) -> None:
    """Every row of the results has a card on the page carrying its status."""
    _, table, _, page = report
    expected = dict(zip(table["id"].to_pylist(), table["status"].to_pylist(), strict=True))
    assert {k: v["data-status"] for k, v in page.cards.items()} == expected


def test_videos_get_thumbnails_and_links(report: tuple[Path, pa.Table, str, Page]) -> None:
    """Each video gets its first frame inline as a JPEG and a link; rows without one get neither."""
    out, _, _, page = report
    for row_id in ("a1", "b2", "c3", "d4"):
        (src,) = page.card_imgs[row_id]
        assert src.startswith("data:image/jpeg;base64,")
        jpeg = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert jpeg.startswith(JPEG_MAGIC)
        assert jpeg == first_frame_thumbnail(out / f"videos/{row_id}.mp4", width=240).data
        assert page.card_links[row_id] == [f"videos/{row_id}.mp4"]
    for row_id in ("e5", "f6", "g7", "h8", "i9"):
        assert page.card_imgs[row_id] == []
        assert page.card_links[row_id] == []


def test_user_text_is_escaped(report: tuple[Path, pa.Table, str, Page]) -> None:
    """Prompts and errors with HTML in them are escaped, never markup, yet kept whole."""
    out, _, _, page = report
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=" in text
    assert page.scripts == 0
    # The full prompt survives (as an attribute) once unescaped by the parser.
    assert any(XSS in (attrs.get("title") or "") for attrs in _all_attrs(text))


def test_failures_are_grouped_by_reason(report: tuple[Path, pa.Table, str, Page]) -> None:
    """Failures are listed grouped by status and reason, with counts."""
    out, _, _, _ = report
    text = (out / "report.html").read_text(encoding="utf-8")
    groups = dict(
        re.findall(
            r'<tr class="failure" data-status="([^"]*)" data-code="[^"]*" '
            r'data-count="(\d+)"',
            text,
        )
    )
    assert groups["failed"] == "2"
    assert groups["unknown"] == "1" and groups["invalid"] == "1"
    assert "refused: &lt;img src=x" in text


def test_reads_results_parquet_when_no_table_is_given(tmp_path: Path) -> None:
    """Without a table the report is built from the folder's results.parquet."""
    table = results(tmp_path)
    pq.write_table(table, tmp_path / "results.parquet")
    uri = write_report(str(tmp_path))
    assert uri.endswith("/report.html")
    page = Page()
    page.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert len(page.cards) == table.num_rows


def test_a_broken_video_file_gets_a_placeholder(tmp_path: Path) -> None:
    """A video file that does not decode gets no thumbnail but keeps its link."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos/x.mp4").write_bytes(b"not a video")
    table = pa.Table.from_pylist(
        [row("x", "completed", cost=0.1, generation_s=5.0, video_path="videos/x.mp4")],
        schema=SCHEMA,
    )
    write_report(tmp_path, table)
    page = Page()
    page.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert page.card_imgs["x"] == []
    assert page.card_links["x"] == ["videos/x.mp4"]


def test_a_video_whose_staged_copy_was_deleted_shows_its_kept_first_frame(
    tmp_path: Path,
) -> None:
    """A video already in the store, its staged copy gone, still gets its first frame."""
    make_mp4(tmp_path / "videos/x.mp4", colour=90)
    frame = first_frame_thumbnail(tmp_path / "videos/x.mp4", width=240)
    staged_preview(tmp_path / "videos/x.mp4").write_bytes(frame.data)
    (tmp_path / "videos/x.mp4").unlink()
    table = pa.Table.from_pylist(
        [row("x", "completed", cost=0.1, generation_s=5.0, video_path="videos/x.mp4")],
        schema=SCHEMA,
    )
    write_report(tmp_path, table)
    page = Page()
    page.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    (src,) = page.card_imgs["x"]
    assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(JPEG_MAGIC)


def test_an_empty_table_still_renders(tmp_path: Path) -> None:
    """A results table with no rows still renders, with zeros and no timings."""
    write_report(tmp_path, SCHEMA.empty_table())
    page = Page()
    page.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert page.text_of["total-rows"] == "0"
    assert page.text_of["success-rate"] == "0.0%"
    assert page.cards == {}
    assert report_numbers(SCHEMA.empty_table())["median_generation_s"] is None


def _all_attrs(text: str) -> list[dict[str, str | None]]:
    found: list[dict[str, str | None]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append(dict(attrs))

    Collect().feed(text)
    return found
