"""Ids cannot fool validation: whole-string rules, and every accepted id names a file in OUT."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apimart.calls import check_idempotency_key
from tasks.steps.download import video_relpath
from tasks.store.ledger import Ledger
from tasks.store.manifest import ManifestRow, read_manifest

# Ids that once slipped through, or that a file system treats as something else.
TRAPS = [
    "a\n",  # `$` matches before a final newline
    "a\r\n",
    "\na",
    "a\x00",
    "a\t",
    "a ",
    "a/b",
    "a\\b",
    "..",
    ".",
    "../../etc/passwd",
    "٣",  # Arabic-Indic digit: `\d` would match it
    "７",  # fullwidth digit
    "Ａb",  # fullwidth letter
    "\u212a",  # Kelvin sign: casefolds to an ASCII "k"
    "e\u0301",
    "CON",
    "con",
    "nul.txt",
    "Com1",
    "LPT9.x",
    "x" * 101,
]


def _row_for(folder: Path, row_id: str, fmt: str) -> ManifestRow:
    """Write a one-row manifest holding this id in the given format and read it back."""
    if fmt == "jsonl":
        # ensure_ascii writes every code point (NUL, lone surrogates) as an escape.
        path = folder / "m.jsonl"
        path.write_text(json.dumps({"id": row_id, "prompt": "A fox"}) + "\n", encoding="utf-8")
    elif fmt == "parquet":
        path = folder / "m.parquet"
        pq.write_table(pa.table({"id": [row_id], "prompt": ["A fox"]}), path)
    else:
        path = folder / "m.csv"
        text = io.StringIO()
        csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(
            [["id", "prompt"], [row_id, "A fox"]]
        )
        path.write_text(text.getvalue(), encoding="utf-8")
    (row,) = read_manifest(path).rows
    return row


def _assert_refused_or_inside(row: ManifestRow, written: str, out: Path) -> None:
    """Refused with a message naming the row and the id rule, or a path inside OUT/videos
    and an idempotency key the client will send (a trailing newline once failed there)."""
    if not row.valid:
        assert "id" in row.problems, row.message
        name = f"id {row.id!r}" if row.id else "no id"
        assert row.message.startswith(f"row 1 ({name}): id: "), row.message
        rule = row.problems["id"]
        assert "file name" in rule or "is empty" in rule, rule
        return
    # Accepted ids are never rewritten: the id in the ledger is the id the user wrote.
    assert row.id == written
    target = (out / video_relpath(row.id)).resolve()
    assert target.is_relative_to(out.resolve())
    assert target.parent == (out / "videos").resolve()
    assert target.name == f"{row.id}.mp4"
    with Ledger(out) as ledger:
        check_idempotency_key(ledger.idempotency_key(row.id, "request-hash", 1))


_ANY_TEXT = st.text(st.characters(codec=None), max_size=110)
_ID_LIKE = st.text(st.sampled_from("aZ09._-/\\\n\r\t \x00.é٣Ａ"), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_id=st.one_of(_ANY_TEXT, _ID_LIKE, st.sampled_from(TRAPS)))
@example(row_id="a\n")
@example(row_id="..")
def test_any_id_is_refused_or_its_video_lands_inside_out_jsonl(row_id: str) -> None:
    """Any text id (controls, `/`, `..`, unicode, surrogates) is refused or writes inside OUT."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        out.mkdir()
        row = _row_for(Path(folder), row_id, "jsonl")
        _assert_refused_or_inside(row, row_id, out)


_UTF8_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=110)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    row_id=st.one_of(_UTF8_TEXT, _ID_LIKE.filter(lambda s: "\x00" not in s)),
    fmt=st.sampled_from(["csv", "parquet"]),
)
@example(row_id="a\n", fmt="csv")
@example(row_id="a\n", fmt="parquet")
def test_any_id_is_refused_or_its_video_lands_inside_out_csv_parquet(row_id: str, fmt: str) -> None:
    """The same holds for ids that went through a CSV or a Parquet file."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        out.mkdir()
        row = _row_for(Path(folder), row_id, fmt)
        _assert_refused_or_inside(row, row_id, out)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_trailing_newline_id_is_refused_with_a_clear_message(tmp_path: Path, fmt: str) -> None:
    """`clip-1\\n` is refused at validation (naming row, column and rule), not at submit."""
    row = _row_for(tmp_path, "clip-1\n", fmt)
    assert not row.valid and row.request is None
    assert row.id == "clip-1\n"
    assert row.message == (
        "row 1 (id 'clip-1\\n'): id: must be 1 to 100 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit (it becomes a file name), got 'clip-1\\n'"
    )


@pytest.mark.parametrize("bad", TRAPS)
def test_whole_string_traps_are_refused(tmp_path: Path, bad: str) -> None:
    """Each known trap (newlines, unicode digits, `..`, reserved device names) is refused."""
    row = _row_for(tmp_path, bad, "jsonl")
    assert not row.valid, row.message
    assert "file name" in row.problems["id"]


@pytest.mark.parametrize("reserved", ["CON", "aux", "Nul.final", "com7", "lpt1"])
def test_windows_device_names_are_refused_naming_the_rule(tmp_path: Path, reserved: str) -> None:
    """An id a Windows file system cannot hold as a file (CON.mp4) says so."""
    row = _row_for(tmp_path, reserved, "jsonl")
    assert "reserved" in row.problems["id"], row.problems


@pytest.mark.parametrize("fine", ["console", "con-1", "com10", "lpt", "a.", "a..b", "nul_"])
def test_names_near_device_names_are_fine(tmp_path: Path, fine: str) -> None:
    """Only the device names themselves are refused, not ids that merely start like them."""
    row = _row_for(tmp_path, fine, "jsonl")
    assert row.valid, row.message


def test_ids_differing_only_in_case_are_duplicates_in_every_format(tmp_path: Path) -> None:
    """`Clip` after `clip` would overwrite videos/clip.mp4 on macOS: refused as a duplicate."""
    pq.write_table(
        pa.table({"id": ["clip", "CLIP", "Clip", "other"], "prompt": ["A", "B", "C", "D"]}),
        tmp_path / "m.parquet",
    )
    rows = read_manifest(tmp_path / "m.parquet").rows
    assert [row.valid for row in rows] == [True, False, False, True]
    assert rows[1].problems["id"].startswith("duplicate of row 1 (id 'clip'; ")
    assert "case" in rows[2].problems["id"]


@pytest.mark.parametrize("value", ["٦", "６", "1\u0660"])
def test_duration_refuses_non_ascii_digits(tmp_path: Path, value: str) -> None:
    """`\\d` matches Arabic-Indic and fullwidth digits; a duration is written in 0-9 only."""
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "d", "prompt": "A", "duration": value}) + "\n")
    (row,) = read_manifest(path).rows
    assert not row.valid
    assert row.problems["duration"].startswith("must be one of [4, 6, 8, 10] seconds, got ")
