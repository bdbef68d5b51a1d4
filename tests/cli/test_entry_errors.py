"""A run the application refuses or stops says so in one line, through the real command line:
no Prefect traceback or engine log before it, exit code 2 (see tasks/errors.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clikit import WRONG_KEY, Cli, Done, MakeSandbox, clip_rows, counters, write_manifest

pytestmark = pytest.mark.slow

# Another process holding OUT's lock, as a second `videobatch run` would: until its stdin closes.
HOLDER = """
import sys
from tasks.store.ledger import FolderLock
with FolderLock(__import__("pathlib").Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def held_folder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """An output folder whose lock a live second process holds; yields it and that pid."""
    out = tmp_path / "work" / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield out, holder.pid
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def _error_lines(done: Done, *marks: str) -> list[str]:
    """The stderr lines that report an error: at ERROR, a traceback, or naming the error by
    one of `marks` (its class, its message). Prefect's own housekeeping at exit (a WARNING that
    its events are still being sent) is no report of the error."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return [
        line
        for line in lines
        if "ERROR" in line or "Traceback" in line or any(mark in line for mark in marks)
    ]


def test_a_wrong_key_prints_one_line_and_no_traceback(cli: Cli, make_sandbox: MakeSandbox) -> None:
    """A key the API answers 401 stops `videobatch run` with exit 2 and one line on stderr
    naming the refusal: no Prefect traceback, no engine log line before it."""
    sb = make_sandbox()
    manifest = write_manifest(cli.cwd / "clips.csv", clip_rows(2, "wrongkey"))

    done = cli.run("run", manifest, "--out", cli.cwd / "out", sb=sb, key=WRONG_KEY)

    assert done.code == 2, done
    assert counters(sb)["submit_requests"] >= 1, "the 401 must come from the API itself"
    assert "Traceback" not in done.output, done
    lines = _error_lines(done, "RunStopped", "AuthenticationError", "401")
    assert len(lines) == 1, done
    assert lines[0].startswith("stopped:") and "authentication" in lines[0].lower(), done
    assert done.stderr.lstrip().startswith(lines[0]), "nothing may be printed before it"


def test_a_locked_folder_prints_one_line_and_no_traceback(
    cli: Cli, make_sandbox: MakeSandbox, held_folder: tuple[Path, int]
) -> None:
    """`videobatch run` into a folder another live process holds exits 2 with one line on
    stderr naming the holder: no Prefect traceback, no engine log line, nothing sent."""
    out, holder_pid = held_folder
    sb = make_sandbox()
    manifest = write_manifest(cli.cwd / "clips.csv", clip_rows(2, "heldout"))

    done = cli.run("run", manifest, "--out", out, sb=sb)

    assert done.code == 2, done
    assert "Traceback" not in done.output, done
    lines = _error_lines(done, "LedgerLocked", "in use by")
    assert len(lines) == 1, done
    assert lines[0].startswith("not started:") and f"pid {holder_pid}" in lines[0], done
    assert done.stderr.lstrip().startswith(lines[0]), "nothing may be printed before it"
    assert counters(sb)["submit_requests"] == 0
    assert not (out / "ledger.sqlite").exists()
