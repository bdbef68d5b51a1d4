"""One output folder, one layout: plain, sharded or empty, and never both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.run import shards
from tasks.store import layout, ledger
from tasks.store.layout import LayoutMismatch, folder_layout, require_layout


def test_names_match_the_modules_that_write_them() -> None:
    """The file names the layout rule looks for are the ones the ledger and shards write."""
    assert layout.LEDGER_FILE == ledger.LEDGER_FILE
    assert layout.PLAN_FILE == shards.PLAN_FILE
    assert layout.SHARDS_DIR == shards.SHARDS_DIR


def test_missing_and_empty_folders_are_empty(tmp_path: Path) -> None:
    """A folder that does not exist, or holds none of our files, is "empty" and fits both."""
    assert folder_layout(tmp_path / "nope") == "empty"
    (tmp_path / "videos").mkdir()
    assert folder_layout(tmp_path) == "empty"
    assert require_layout(tmp_path, "plain") == "empty"
    assert require_layout(tmp_path, "sharded") == "empty"


def test_plain_folder_refuses_a_sharded_run(tmp_path: Path) -> None:
    """A ledger at OUT makes it plain; asking for sharded says what it holds and what to do."""
    (tmp_path / "ledger.sqlite").write_bytes(b"")
    assert folder_layout(tmp_path) == "plain"
    assert require_layout(tmp_path, "plain") == "plain"
    with pytest.raises(LayoutMismatch) as err:
        require_layout(tmp_path, "sharded")
    text = str(err.value)
    assert "plain run (ledger.sqlite)" in text and "Nothing was sent" in text
    assert err.value.holds == "plain" and err.value.want == "sharded"


@pytest.mark.parametrize("mark", ["shards.json", "shards"])
def test_sharded_folder_refuses_a_plain_run(tmp_path: Path, mark: str) -> None:
    """shards.json or shards/ makes a folder sharded; a plain run there is refused."""
    if mark == "shards":
        (tmp_path / mark).mkdir()
    else:
        (tmp_path / mark).write_text("{}")
    assert folder_layout(tmp_path) == "sharded"
    assert require_layout(tmp_path, "sharded") == "sharded"
    with pytest.raises(LayoutMismatch) as err:
        require_layout(tmp_path, "plain")
    text = str(err.value)
    assert "sharded run" in text and "generate-sharded" in text and "Nothing was sent" in text


def test_both_layouts_is_an_error_not_a_guess(tmp_path: Path) -> None:
    """A folder holding a ledger and a shard plan is reported, for either kind of run."""
    (tmp_path / "ledger.sqlite").write_bytes(b"")
    (tmp_path / "shards.json").write_text("{}")
    with pytest.raises(LayoutMismatch, match="both a plain run"):
        folder_layout(tmp_path)
    for want in ("plain", "sharded"):
        with pytest.raises(LayoutMismatch, match="both a plain run"):
            require_layout(tmp_path, want)  # type: ignore[arg-type]


def test_layout_imports_stay_light() -> None:
    """Importing the layout rule pulls in neither Prefect, pandas nor pyarrow."""
    code = (
        "import sys, tasks.store.layout; "
        "heavy = [m for m in ('prefect', 'pandas', 'pyarrow') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
