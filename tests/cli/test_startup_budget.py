"""The read-only commands import only what they use: no Prefect (and for `status` and `--help`
no pandas either), so they answer at once. Asserted on the set of imported modules, never on
seconds (bench/startup.py prints the times)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clikit import clip_rows, write_manifest

from tasks.store.ledger import Ledger, State, request_hash
from tasks.store.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("prefect", "pandas", "pyarrow")

# Runs the real entry point as `videobatch ARGS` would, then says which heavy modules it
# imported. typer ends every command with SystemExit, which carries the exit code.
PROBE = """
import json, sys
from videobatch.cli import main
sys.argv = ["videobatch", *json.loads(sys.argv[1])]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
print(json.dumps({"code": code, "imported": sorted(m for m in %r if m in sys.modules)}))
"""


def _imported(args: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """Exit code of `videobatch ARGS` in a fresh interpreter, the heavy modules it imported,
    and what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIMART_", "VIDEOBATCH_"))}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,), json.dumps(args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"probe failed:\n{done.stdout}\n{done.stderr}"
    verdict = json.loads(lines[-1])
    return verdict["code"], verdict["imported"], done.stdout + done.stderr


def _run_folder(out: Path, manifest: Path) -> Path:
    """A folder as a run leaves it: a real ledger naming its manifest, rows sent and ended
    unpaid (failed) or never sent."""
    rows = read_manifest(str(manifest)).valid_rows
    with Ledger(out) as ledger:
        ledger.set_meta("manifest", str(manifest))
        ledger.set_meta("assets", "")
        for row in rows:
            ledger.ensure(row.id, row.index)
        for row in rows[::2]:
            assert row.request is not None
            ledger.update(
                row.id,
                "failed",
                state=State.FAILED,
                task_id=f"task-{row.id}",
                request_hash=request_hash(row.request),
                attempt=1,
            )
    return out


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path]:
    manifest = write_manifest(tmp_path / "clips.csv", clip_rows(4, "budget"))
    return manifest, _run_folder(tmp_path / "out", manifest)


def test_status_imports_neither_prefect_nor_pandas(folder: tuple[Path, Path]) -> None:
    """`videobatch status OUT` on a real ledger answers (exit 0) without importing Prefect,
    pandas or pyarrow."""
    _, out = folder
    code, imported, output = _imported(["status", str(out)], out.parent)
    assert code == 0, output
    assert "failed" in output and "pending" in output, output
    assert imported == [], output


def test_status_of_a_sharded_folder_does_not_import_prefect(folder: tuple[Path, Path]) -> None:
    """`videobatch status OUT` on a sharded folder reads every shard's ledger without importing
    Prefect, pandas or pyarrow (the shard code is not needed to find the shard folders)."""
    manifest, _ = folder
    sharded = manifest.parent / "sharded"
    _run_folder(sharded / "shards" / "shard-0", manifest)
    _run_folder(sharded / "shards" / "shard-1", manifest)
    (sharded / "shards.json").write_text("{}", encoding="utf-8")

    code, imported, output = _imported(["status", str(sharded)], sharded.parent)

    assert code == 0, output
    assert "ledger of" in output, output
    assert imported == [], output


def test_help_imports_neither_prefect_nor_pandas(tmp_path: Path) -> None:
    """`videobatch --help` and `videobatch run --help` print help without importing Prefect,
    pandas or pyarrow."""
    for args in (["--help"], ["run", "--help"], ["status", "--help"]):
        code, imported, output = _imported(args, tmp_path)
        assert code == 0 and "Example:" in output, output
        assert imported == [], (args, output)


def test_validate_does_not_import_prefect(folder: tuple[Path, Path]) -> None:
    """`videobatch validate MANIFEST` checks and estimates every row without importing
    Prefect."""
    manifest, _ = folder
    code, imported, output = _imported(["validate", str(manifest)], manifest.parent)
    assert code == 0 and "4 valid" in output and "Nothing was sent" in output, output
    assert "prefect" not in imported, output


def test_results_does_not_import_prefect(folder: tuple[Path, Path]) -> None:
    """`videobatch results OUT` rebuilds results.parquet and results.csv from a real ledger
    without importing Prefect."""
    _, out = folder
    code, imported, output = _imported(["results", str(out)], out.parent)
    assert code == 0 and "(4 rows)" in output, output
    assert (out / "results.parquet").is_file() and (out / "results.csv").is_file()
    assert "prefect" not in imported, output
