"""Reading manifests: formats, id rules, defaults, every problem type, local images."""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apimart import spec
from tasks.store.manifest import (
    Manifest,
    ManifestError,
    ManifestRow,
    read_manifest,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "manifests"
PNG = (DEMO / "images" / "sunrise.png").read_bytes()
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32
WEBP_HEAD = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32


def write_csv(folder: Path, text: str, *, name: str = "m.csv", bom: bool = False) -> Path:
    path = folder / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def write_jsonl(folder: Path, rows: list[dict[str, Any]], *, name: str = "m.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def one_row(folder: Path, **cells: Any) -> ManifestRow:
    """Read a one-row JSONL manifest; JSON keeps the cell types the test chose."""
    row = {"id": "r1", "prompt": "A cat on a wall; static shot", **cells}
    manifest = read_manifest(write_jsonl(folder, [row]))
    assert len(manifest.rows) == 1
    return manifest.rows[0]


def one_csv_row(folder: Path, header: str, line: str) -> ManifestRow:
    manifest = read_manifest(write_csv(folder, f"{header}\n{line}\n"))
    assert len(manifest.rows) == 1
    return manifest.rows[0]


# --- formats ---


@pytest.mark.parametrize("bom", [False, True])
def test_csv_with_and_without_bom_reads_every_cell_as_text(tmp_path: Path, bom: bool) -> None:
    """A CSV reads alike with or without a BOM, every cell as text (leading zeros kept)."""
    path = write_csv(
        tmp_path,
        "id,prompt,duration,resolution,aspect_ratio,campaign\n"
        "007,A dog runs on a beach,8,1080P,9:16,0042\n",
        bom=bom,
    )
    manifest = read_manifest(path)
    (row,) = manifest.rows
    assert row.valid, row.message
    assert row.id == "007"
    assert row.extra == {"campaign": "0042"}
    assert manifest.extra_columns == ("campaign",)
    assert row.request is not None
    assert (row.request.duration, row.request.resolution, row.request.aspect_ratio) == (
        8,
        "1080p",
        "9:16",
    )


def test_parquet_list_column_and_native_types(tmp_path: Path) -> None:
    """Parquet lists and native numbers are read as such; a null duration takes the default."""
    (tmp_path / "a.png").write_bytes(PNG)
    table = pa.table(
        {
            "id": ["one", "three"],
            "prompt": ["A boat at sea", "A fusion of three references"],
            "duration": pa.array([4, None], pa.int64()),
            "image_urls": pa.array([["a.png"], ["a.png", "https://x.test/b.png", "a.png"]]),
            "score": [1.5, 2.5],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    manifest = read_manifest(tmp_path / "m.parquet")
    one, three = manifest.rows
    assert one.valid and three.valid, (one.message, three.message)
    assert one.request is not None and three.request is not None
    assert one.request.duration == 4
    assert three.request.duration == spec.DEFAULT_DURATION
    assert three.request.image_urls[1] == "https://x.test/b.png"
    assert three.request.image_urls[0] == three.request.image_urls[2] == one.request.image_urls[0]
    assert one.extra == {"score": 1.5}


def test_parquet_written_by_pandas_ignores_its_index_column(tmp_path: Path) -> None:
    """The index column pandas writes into Parquet is neither a column nor an id."""
    import pandas as pd

    frame = pd.DataFrame({"prompt": ["A", "B"]}, index=[10, 20])
    frame.to_parquet(tmp_path / "m.parquet")
    manifest = read_manifest(tmp_path / "m.parquet")
    assert manifest.extra_columns == ()
    assert [row.id for row in manifest.rows] == ["row-00001", "row-00002"]


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_jsonl_reads_and_unions_keys(tmp_path: Path, suffix: str) -> None:
    """JSON Lines skips blank lines; a key that any row has is a column of every row."""
    path = tmp_path / f"m{suffix}"
    path.write_text(
        '{"id": "a", "prompt": "A owl", "duration": 10}\n'
        "\n"
        '{"id": "b", "prompt": "A hawk", "note": {"k": 1}}\n',
        encoding="utf-8",
    )
    manifest = read_manifest(path)
    assert [row.valid for row in manifest.rows] == [True, True]
    assert manifest.extra_columns == ("note",)
    assert manifest.rows[0].extra == {"note": None}
    assert manifest.rows[1].extra == {"note": {"k": 1}}


def test_column_names_match_case_insensitively_after_stripping(tmp_path: Path) -> None:
    """Column names match whatever their case and surrounding spaces."""
    row = one_csv_row(tmp_path, " ID , Prompt ,DURATION,Resolution", "x1,A hill,10,4K")
    assert row.valid, row.message
    assert row.id == "x1"
    assert row.fields["duration"] == 10
    assert row.fields["resolution"] == "4k"


# --- defaults and normalisation ---


def test_empty_cells_take_the_api_defaults(tmp_path: Path) -> None:
    """Empty cells take the API's defaults for duration, resolution, aspect ratio and model."""
    row = one_csv_row(
        tmp_path,
        "id,prompt,duration,resolution,aspect_ratio,image_urls,video_urls,model",
        "d1,A quiet lake,,,,,,",
    )
    assert row.valid, row.message
    assert row.request is not None
    assert row.request.duration == spec.DEFAULT_DURATION
    assert row.request.resolution == spec.DEFAULT_RESOLUTION
    assert row.request.aspect_ratio == spec.DEFAULT_ASPECT_RATIO
    assert row.request.image_urls == ()
    assert row.request.model == spec.MODEL
    assert row.fields == {
        "prompt": "A quiet lake",
        "duration": 6,
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "image_count": 0,
    }


def test_missing_id_column_names_rows_by_position(tmp_path: Path) -> None:
    """Without an id column, rows are named row-00001, row-00002, ... by position."""
    manifest = read_manifest(write_csv(tmp_path, "prompt\nA\nB\nC\n"))
    assert [row.id for row in manifest.rows] == ["row-00001", "row-00002", "row-00003"]
    assert [row.index for row in manifest.rows] == [0, 1, 2]
    assert all(row.valid for row in manifest.rows)


@pytest.mark.parametrize("value", [6, 6.0, "6", " 6 ", "6.0", "+6"])
def test_duration_accepts_integral_values(tmp_path: Path, value: object) -> None:
    """A duration of 6 is accepted as int, float, text, padded text, "6.0" or "+6"."""
    row = one_row(tmp_path, duration=value)
    assert row.valid, row.message
    assert row.request is not None and row.request.duration == 6


@pytest.mark.parametrize("value", [None, float("nan"), "", "  "])
def test_duration_blank_means_default(tmp_path: Path, value: object) -> None:
    """A blank or NaN duration means the default duration."""
    path = tmp_path / "m.parquet"
    if isinstance(value, float):
        pq.write_table(pa.table({"prompt": ["A"], "duration": [value]}), path)
        row = read_manifest(path).rows[0]
    else:
        row = one_row(tmp_path, duration=value)
    assert row.valid, row.message
    assert row.fields["duration"] == spec.DEFAULT_DURATION


@pytest.mark.parametrize("value", ["six", 6.5, "6.5", True, [6], "1e1"])
def test_duration_unreadable_is_a_problem(tmp_path: Path, value: object) -> None:
    """An unreadable duration is a problem naming the allowed values; the cell is kept as given."""
    row = one_row(tmp_path, duration=value)
    assert not row.valid
    assert row.request is None
    assert row.problems["duration"].startswith("must be one of [4, 6, 8, 10] seconds, got ")
    assert row.fields["duration"] == value


def test_size_alias_and_conflict(tmp_path: Path) -> None:
    """`size` stands for aspect_ratio; the two agreeing pass, disagreeing is a problem."""
    assert one_row(tmp_path, size="9:16").fields["aspect_ratio"] == "9:16"
    agree = one_row(tmp_path, size="9:16", aspect_ratio=" 9:16")
    assert agree.valid, agree.message
    conflict = one_row(tmp_path, size="9:16", aspect_ratio="16:9")
    assert "conflicts with size" in conflict.problems["aspect_ratio"]
    bad_size = one_row(tmp_path, size="1:1")
    assert set(bad_size.problems) == {"size"}


def test_extra_columns_are_carried_through_raw(tmp_path: Path) -> None:
    """Unknown columns are carried through unchanged, an invalid row's too."""
    manifest = read_manifest(
        write_csv(tmp_path, "campaign,prompt,Owner ,n\nspring, A , Ann ,\nautumn,\tB,,007\n")
    )
    assert manifest.extra_columns == ("campaign", "Owner ", "n")
    assert [row.extra for row in manifest.rows] == [
        {"campaign": "spring", "Owner ": " Ann ", "n": ""},
        {"campaign": "autumn", "Owner ": "", "n": "007"},
    ]
    # Even an invalid row keeps its extras for the results table.
    bad = read_manifest(write_csv(tmp_path, "prompt,campaign\n,x\n")).rows[0]
    assert not bad.valid and bad.extra == {"campaign": "x"}


# --- ids ---


@pytest.mark.parametrize("good", ["a", "007", "A.b_c-d", "x" * 100])
def test_safe_ids_pass(tmp_path: Path, good: str) -> None:
    """Ids of letters, digits, dots, underscores and dashes up to 100 characters are valid."""
    assert one_row(tmp_path, id=good).valid


@pytest.mark.parametrize("bad", ["bad id", "-lead", ".hidden", "a/b", "x" * 101, "é", "a!"])
def test_unsafe_ids_are_problems_and_never_rewritten(tmp_path: Path, bad: str) -> None:
    """An id that is not a safe file name is a problem naming it, never silently rewritten."""
    row = one_row(tmp_path, id=bad)
    assert not row.valid
    assert row.id == bad
    assert "file name" in row.problems["id"] and repr(bad) in row.problems["id"]


def test_empty_id_cell_is_a_problem_not_a_generated_name(tmp_path: Path) -> None:
    """An empty id cell is a problem, not a row-N name."""
    manifest = read_manifest(write_csv(tmp_path, "id,prompt\na,A\n,B\n"))
    row = manifest.rows[1]
    assert not row.valid
    assert row.id == ""
    assert "is empty" in row.problems["id"]
    assert row.message.startswith("row 2 (no id): id: is empty")


def test_duplicates_keep_the_first_and_refuse_the_rest(tmp_path: Path) -> None:
    """A repeated id (any case) is refused, naming the first row; the first one runs."""
    manifest = read_manifest(write_csv(tmp_path, "id,prompt\na,A\nb,B\na,C\nA,D\na,\n"))
    first, other, second, upper, third = manifest.rows
    assert first.valid and other.valid
    assert second.problems == {"id": "duplicate of row 1"}
    assert upper.problems["id"].startswith("duplicate of row 1 (id 'a'; ")
    assert third.problems["id"] == "duplicate of row 1"
    assert "prompt" in third.problems
    assert len(manifest.valid_rows) == 2 and len(manifest.invalid_rows) == 3


def test_numeric_ids_from_json_and_parquet_become_text(tmp_path: Path) -> None:
    """Numeric ids from JSON or Parquet become text (7.0 reads as "7")."""
    assert one_row(tmp_path, id=7).id == "7"
    pq.write_table(pa.table({"id": [7.0], "prompt": ["A"]}), tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet").rows[0].id == "7"


# --- every problem type, with messages naming row and column ---


@pytest.mark.parametrize(
    ("cells", "column", "fragment"),
    [
        ({"duration": 5}, "duration", "must be one of [4, 6, 8, 10] seconds, got 5"),
        ({"resolution": "8k"}, "resolution", "got '8k'"),
        ({"aspect_ratio": "1:1"}, "aspect_ratio", "got '1:1'"),
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": None}, "prompt", "non-empty"),
        ({"model": "other"}, "model", "'Omni-Flash-Ext'"),
        ({"image_urls": ["https://a.test/1", "https://a.test/2"]}, "image_urls", "got 2"),
        ({"image_urls": ["https://a.test/x"] * 4}, "image_urls", "got 4"),
        ({"image_urls": ["ftp://a.test/x"]}, "image_urls", "http(s) URL"),
        ({"image_urls": ["data:image/png;base64,!!"]}, "image_urls", "base64"),
        ({"image_urls": 5}, "image_urls", "list"),
        ({"image_urls": "[broken"}, "image_urls", "JSON"),
        ({"video_urls": ["https://v/1", "https://v/2"]}, "video_urls", "at most 1"),
        ({"video_urls": "file.mp4"}, "video_urls", "http(s)"),
    ],
)
def test_problem_types(tmp_path: Path, cells: dict[str, Any], column: str, fragment: str) -> None:
    """Each rule a cell can break is reported on its column, in a message naming the row."""
    row = one_row(tmp_path, **cells)
    assert not row.valid and row.request is None
    assert fragment in row.problems[column], row.problems
    assert row.message.startswith(f"row 1 (id 'r1'): {column}: ")


def test_every_broken_column_is_reported_in_manifest_order(tmp_path: Path) -> None:
    """Every broken column of a row is reported, in the manifest's column order."""
    row = one_csv_row(
        tmp_path,
        "image_urls,resolution,duration,prompt,id",
        "https://a/1|https://a/2,8k,5,,bad id",
    )
    assert list(row.problems) == ["id", "prompt", "duration", "resolution", "image_urls"]
    assert row.fields == {
        "prompt": None,
        "duration": 5,
        "resolution": "8k",
        "aspect_ratio": "16:9",
        "image_count": 2,
    }


def test_invalid_rows_never_stop_the_others(tmp_path: Path) -> None:
    """In invalid.csv the valid row stays valid and each other one is named with its rule."""
    manifest = read_manifest(DEMO / "invalid.csv")
    assert [row.id for row in manifest.valid_rows] == ["ok-first"]
    by_id = {row.index: row for row in manifest.invalid_rows}
    messages = [by_id[i].message for i in sorted(by_id)]
    assert messages[0] == (
        "row 2 (id 'five-seconds'): duration: must be one of [4, 6, 8, 10] seconds, got 5"
    )
    assert "resolution" in messages[1] and "'8k'" in messages[1]
    assert "image_urls" in messages[2] and "got 2" in messages[2]
    assert "prompt" in messages[3]
    assert "duplicate of row 1" in messages[4]
    assert "'bad id!'" in messages[5]


# --- image_urls cell forms and local images ---


def test_csv_image_cells_json_array_and_pipe_forms(tmp_path: Path) -> None:
    """A CSV image cell may be a JSON array, a pipe-separated list or one URL, all alike."""
    (tmp_path / "a.png").write_bytes(PNG)
    manifest = read_manifest(
        write_csv(
            tmp_path,
            "prompt,image_urls\n"
            'A,"[""a.png"", ""https://x.test/b.png"", ""a.png""]"\n'
            "B, a.png | https://x.test/b.png |a.png|\n"
            "C,https://x.test/only.png\n",
        )
    )
    rows = manifest.rows
    assert all(row.valid for row in rows), [row.message for row in rows]
    assert rows[0].request is not None and rows[1].request is not None
    assert rows[0].request.image_urls == rows[1].request.image_urls
    assert rows[0].fields["image_count"] == 3
    assert rows[2].fields["image_count"] == 1


def test_local_png_becomes_a_data_uri_of_the_file(tmp_path: Path) -> None:
    """A local PNG (relative to the manifest) is sent as a data URI of its exact bytes."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "pic.png").write_bytes(PNG)
    folder = tmp_path / "manifests"
    folder.mkdir()
    manifest = read_manifest(
        write_jsonl(folder, [{"id": "r1", "prompt": "A", "image_urls": ["../images/pic.png"]}]),
        assets=images,
    )
    (row,) = manifest.rows
    assert row.valid, row.message
    assert row.request is not None
    (uri,) = row.request.image_urls
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri[len(prefix) :]) == PNG


@pytest.mark.parametrize(("data", "kind"), [(JPEG_HEAD, "jpeg"), (WEBP_HEAD, "webp")])
def test_jpeg_and_webp_are_judged_by_content(tmp_path: Path, data: bytes, kind: str) -> None:
    """JPEG and WEBP files are recognised by their content, whatever their name."""
    (tmp_path / "photo.bin").write_bytes(data)
    row = one_row(tmp_path, image_urls=[str(tmp_path / "photo.bin")])  # absolute path
    assert row.request is not None, row.message
    assert row.request.image_urls[0].startswith(f"data:image/{kind};base64,")


def test_text_file_named_png_is_rejected(tmp_path: Path) -> None:
    """A text file named .png is refused as not a PNG, JPEG or WEBP."""
    (tmp_path / "fake.png").write_text("not an image", encoding="utf-8")
    row = one_row(tmp_path, image_urls=["fake.png"])
    assert row.problems["image_urls"].startswith("entry 1 ('fake.png'): not a PNG, JPEG or WEBP")


def test_gif_is_not_accepted(tmp_path: Path) -> None:
    """A GIF image is refused."""
    (tmp_path / "a.gif").write_bytes(b"GIF89a" + b"\x00" * 20)
    assert "not a PNG" in one_row(tmp_path, image_urls=["a.gif"]).problems["image_urls"]


def test_too_large_image_is_rejected(tmp_path: Path) -> None:
    """An image one byte over the size limit is refused; one at the limit passes."""
    (tmp_path / "big.png").write_bytes(PNG)
    path = write_jsonl(tmp_path, [{"prompt": "A", "image_urls": ["big.png"]}])
    row = read_manifest(path, max_image_bytes=len(PNG) - 1).rows[0]
    assert "over the limit" in row.problems["image_urls"]
    assert read_manifest(path, max_image_bytes=len(PNG)).rows[0].valid


def test_missing_image_and_folder_are_rejected(tmp_path: Path) -> None:
    """A missing image file or a folder in its place is refused, naming the path."""
    (tmp_path / "dir.png").mkdir()
    row = one_row(tmp_path, image_urls=["nope.png"])
    assert row.problems["image_urls"].startswith("entry 1 ('nope.png'): file not found (")
    assert str(tmp_path / "nope.png") in row.problems["image_urls"]
    assert "is not a file" in one_row(tmp_path, image_urls=["dir.png"]).problems["image_urls"]


def test_every_bad_entry_and_the_count_are_reported(tmp_path: Path) -> None:
    """Every bad image entry is named, and a wrong image count as well."""
    (tmp_path / "ok.png").write_bytes(PNG)
    row = one_row(tmp_path, image_urls=["ok.png", "a.png", "b.png", "c.png"])
    rule = row.problems["image_urls"]
    assert "entry 2 ('a.png')" in rule and "entry 4 ('c.png')" in rule
    assert "got 4" in rule
    assert row.fields["image_count"] == 4


def test_each_image_file_is_read_once_per_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five rows naming one file three ways open it once (a counting pass-through os.open)."""
    (tmp_path / "a.png").write_bytes(PNG)
    opened: list[str] = []
    original = os.open

    def counting(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting)
    rows = [{"prompt": f"P{n}", "image_urls": ["a.png", "./a.png", "a.png"]} for n in range(5)]
    manifest = read_manifest(write_jsonl(tmp_path, rows))
    assert all(row.valid for row in manifest.rows)
    assert opened.count(str(tmp_path.resolve() / "a.png")) == 1


# --- unreadable manifests ---


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("m.xlsx", b"x", "unsupported manifest format '.xlsx'"),
        ("m.csv", b"", "empty"),
        ("m.csv", b"id,prompt\n", "no rows"),
        ("m.csv", b"id,duration\na,6\n", "no 'prompt' column"),
        ("m.csv", b"prompt,x\nA,1\nB,2,3\n", "line 3"),
        ("m.csv", b"prompt\n\xff\xfe\n", "UTF-8"),
        ("m.csv", b"Prompt,prompt\nA,B\n", "both mean 'prompt'"),
        ("m.csv", b"prompt,x,x\nA,1,2\n", "'x' appears twice"),
        ("m.csv", b"prompt,\nA,1\n", "no name"),
        ("m.parquet", b"PAR1 certainly not parquet", "cannot read Parquet"),
        ("m.jsonl", b'{"prompt": "A"}\n{"prompt": \n', "line 2: not valid JSON"),
        ("m.jsonl", b'{"prompt": "A"}\n\n[1, 2]\n', "line 3: expected a JSON object"),
        ("m.jsonl", b"\n\n", "no rows"),
    ],
)
def test_unreadable_manifests_raise_one_clear_error(
    tmp_path: Path, name: str, content: bytes, fragment: str
) -> None:
    """An unreadable manifest raises one error naming the file and what is wrong."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    """A missing manifest and a folder given as the manifest are refused clearly."""
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path / "absent.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ManifestError, match="not a file"):
        read_manifest(tmp_path / "dir.csv")


def test_nameless_empty_trailing_column_is_ignored(tmp_path: Path) -> None:
    """A trailing empty column without a name (a trailing comma) is ignored."""
    manifest = read_manifest(write_csv(tmp_path, "prompt,\nA,\n"))
    assert manifest.extra_columns == () and manifest.rows[0].valid


# --- the demo data ---


def test_demo_manifests_are_valid_and_agree() -> None:
    """The demo manifests are valid as shipped: their images sit inside their own folder."""
    csv_manifest = read_manifest(DEMO / "demo.csv")
    parquet_manifest = read_manifest(DEMO / "demo.parquet")
    for manifest in (csv_manifest, parquet_manifest):
        assert isinstance(manifest, Manifest)
        assert len(manifest.rows) == 8
        assert len(manifest.valid_rows) == 8, [row.message for row in manifest.invalid_rows]
        assert manifest.extra_columns == ("campaign",)
    assert [r.request for r in csv_manifest.rows] == [r.request for r in parquet_manifest.rows]
    assert [(r.id, r.fields, r.extra) for r in csv_manifest.rows] == [
        (r.id, r.fields, r.extra) for r in parquet_manifest.rows
    ]

    requests = [row.request for row in csv_manifest.rows if row.request is not None]
    assert {r.duration for r in requests} == set(spec.DURATIONS)
    assert {r.resolution for r in requests} == set(spec.RESOLUTIONS)
    assert {r.aspect_ratio for r in requests} == set(spec.ASPECT_RATIOS)
    assert sorted(len(r.image_urls) for r in requests)[-2:] == [1, 3]
    fours = [r for r in requests if r.resolution == "4k"]
    assert len(fours) == 1 and fours[0].duration == 4


# --- scale and robustness ---


def test_ten_thousand_rows(tmp_path: Path) -> None:
    """Ten thousand rows (some with images) all read valid, extras intact."""
    (tmp_path / "a.png").write_bytes(PNG)
    lines = ["id,prompt,duration,resolution,aspect_ratio,image_urls,campaign"]
    for n in range(10_000):
        image = "a.png" if n % 10 == 0 else ""
        lines.append(f"clip-{n:05d},Scene number {n},{(4, 6, 8, 10)[n % 4]},720p,16:9,{image},c{n}")
    manifest = read_manifest(write_csv(tmp_path, "\n".join(lines) + "\n"))
    assert len(manifest.rows) == 10_000
    assert len(manifest.valid_rows) == 10_000
    assert manifest.rows[-1].extra == {"campaign": "c9999"}


_cell = st.one_of(
    st.none(),
    st.integers(-20, 20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.text(max_size=8), max_size=4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "prompt": _cell,
                "id": _cell,
                "duration": _cell,
                "resolution": _cell,
                "aspect_ratio": _cell,
                "image_urls": _cell,
            }
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_cell_content_gives_rows_never_crashes(rows: list[dict[str, Any]]) -> None:
    """Any cell content gives one row per line, valid exactly when it has no problems."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.jsonl"
        # allow_nan keeps NaN/Infinity cells, which Python's JSON reader accepts.
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        manifest = read_manifest(path)
    assert len(manifest.rows) == len(rows)
    for row in manifest.rows:
        assert row.valid == (not row.problems)
        assert (row.request is None) == bool(row.problems)
        assert set(row.fields) == {
            "prompt",
            "duration",
            "resolution",
            "aspect_ratio",
            "image_count",
        }
