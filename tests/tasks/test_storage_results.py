"""The results table and the report written to an s3:// output (moto on loopback), read back
with boto3 as a person's tools would; nothing of them lands on the local disk."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import s3 as s3kit
from support.s3 import S3Server

from tasks.present.report import write_report
from tasks.store.results import SCHEMA, write_results

pytestmark = pytest.mark.slow  # starts moto_server once per session
s3_server, s3_out = s3kit.s3_server, s3kit.s3_out


def _key(url: str, name: str) -> str:
    return f"{url.split('/', 3)[3]}/{name}"


def _table(**video: Any) -> pa.Table:
    rows = [
        {"id": "a", "prompt": "=HYPERLINK(1)", "status": "completed", "cost": 0.14, **video},
        {"id": "b", "prompt": "a dog", "status": "failed", "error_code": "moderation"},
    ]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _mp4(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 64, 36, "yuv420p"
        pixels = np.full((36, 64, 3), (200, 40, 90), dtype=np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_results_are_written_to_the_bucket(
    s3_out: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """results.parquet (exact) and results.csv (defused) land in the bucket, not on disk."""
    monkeypatch.chdir(tmp_path)
    table = _table()
    parquet, csv_url = write_results(table, s3_out)
    assert (parquet, csv_url) == (f"{s3_out}/results.parquet", f"{s3_out}/results.csv")
    stored = pq.read_table(io.BytesIO(s3_server.get(_key(s3_out, "results.parquet"))))
    assert stored.equals(table)
    rows = list(csv.DictReader(io.StringIO(s3_server.get(_key(s3_out, "results.csv")).decode())))
    assert [r["prompt"] for r in rows] == ["'=HYPERLINK(1)", "a dog"]
    assert list(tmp_path.iterdir()) == []


def test_report_is_built_from_the_bucket_results(
    s3_out: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a table, the report reads results.parquet from the bucket and is written there."""
    monkeypatch.chdir(tmp_path)
    write_results(_table(), s3_out)
    assert write_report(s3_out) == f"{s3_out}/report.html"
    html = s3_server.get(_key(s3_out, "report.html")).decode()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count('class="card"') == 2
    assert list(tmp_path.iterdir()) == []


def test_report_takes_thumbnails_from_the_local_staging_folder(
    s3_out: str, s3_server: S3Server, tmp_path: Path
) -> None:
    """Given the folder the videos were staged in, the report shows their first frames."""
    _mp4(tmp_path / "staging" / "videos" / "a.mp4")
    table = _table(video_path="videos/a.mp4")
    write_report(s3_out, table, videos=tmp_path / "staging")
    html = s3_server.get(_key(s3_out, "report.html")).decode()
    assert html.count('src="data:image/jpeg;base64,') == 1
    assert 'href="videos/a.mp4"' in html
