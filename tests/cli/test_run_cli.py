"""`videobatch run` end to end: exit codes, what a finished folder costs, results, status, keys.

Exit codes: 0 every row completed; 1 the run finished but some rows did not complete (results
still written); 2 the run could not start or was stopped.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from clikit import (
    CANARIES,
    WRONG_KEY,
    Cli,
    Done,
    MakeSandbox,
    assert_no_canary_in_files,
    assert_videos_intact,
    clip_rows,
    counters,
    ledger_rows,
    no_calls,
    prefect_texts,
    results,
    results_table,
    sandbox,
    statuses,
    write_manifest,
)

from apimart.sandbox import FaultRule, Faults, RunningSandbox
from tasks.store.ledger import FolderLock

pytestmark = pytest.mark.slow


# --- a folder where every row completed ---------------------------------------------------


@dataclass
class Finished:
    cli: Cli
    sb: RunningSandbox
    manifest: Path
    out: Path
    first: Done
    after_first: dict[str, Any]
    started_at: float


@pytest.fixture(scope="module")
def finished(
    cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Finished]:
    """One complete run of 4 rows (report on), shared by the tests of the finished folder."""
    root = tmp_path_factory.mktemp("finished")
    (root / "work").mkdir()
    cli = Cli(cli_env, cwd=root / "work", logs=root / "logs")
    manifest = write_manifest(root / "clips.csv", clip_rows(4, "done"))
    out = root / "out"
    with sandbox() as sb:
        started_at = time.time()
        first = cli.run("run", manifest, "--out", out, "--concurrency", "3", sb=sb)
        try:
            yield Finished(cli, sb, manifest, out, first, counters(sb), started_at)
        finally:
            cli.stop_all()


def test_every_row_completed_exits_0(finished: Finished) -> None:
    """A run where every row completed exits 0 with videos, results and report, one task per row."""
    done, out = finished.first, finished.out
    assert done.code == 0, done
    assert statuses(out) == {f"done-{i}": "completed" for i in range(4)}
    assert_videos_intact(out)
    assert re.search(r"completed\s*│\s*4\b", done.stdout), done
    assert "results.parquet" in done.stdout
    assert (out / "results.csv").is_file() and (out / "report.html").is_file()
    snap = finished.after_first
    assert snap["tasks_created"] == 4
    assert sorted(snap["tasks_created_by_prompt"].values()) == [1, 1, 1, 1]
    table = results(out)
    assert sum(r["cost"] for r in table.values()) == pytest.approx(snap["cost_billed"])


def test_rerun_of_finished_folder_makes_no_api_call(finished: Finished) -> None:
    """Running a finished folder again makes no API call; results and videos stay as they were."""
    before_table = results_table(finished.out)
    before = counters(finished.sb)
    again = finished.cli.run(
        "run", finished.manifest, "--out", finished.out, "--concurrency", "3", sb=finished.sb
    )
    assert again.code == 0, again
    assert counters(finished.sb) == before, "a finished folder must cost no API call at all"
    after_table = results_table(finished.out)
    assert after_table.drop_columns(["run_id"]).equals(before_table.drop_columns(["run_id"]))
    assert_videos_intact(finished.out)


def test_results_command_rebuilds_identical_tables(finished: Finished, tmp_path: Path) -> None:
    """`videobatch results` rebuilds byte-identical tables from the ledger, from any folder."""
    out = finished.out
    parquet_before = pq.read_table(out / "results.parquet")
    csv_before = (out / "results.csv").read_bytes()
    (out / "results.parquet").unlink()
    (out / "results.csv").unlink()
    before = counters(finished.sb)

    # From another folder, without --manifest: the ledger knows its manifest's absolute path.
    done = finished.cli.run("results", out, cwd=tmp_path, sb=finished.sb)

    assert done.code == 0, done
    assert "4 rows" in done.stdout
    assert pq.read_table(out / "results.parquet").equals(parquet_before)
    assert (out / "results.csv").read_bytes() == csv_before
    assert counters(finished.sb) == before


def test_status_after_the_run(finished: Finished) -> None:
    """`videobatch status` after a run shows the downloads and the money spent."""
    done = finished.cli.run("status", finished.out)
    assert done.code == 0, done
    assert re.search(r"downloaded\s*│\s*4\b", done.stdout), done
    spent = sum(r["cost"] for r in results(finished.out).values())
    assert f"spent {spent:.2f}" in done.stdout
    assert "0 rows with an unknown POST outcome" in done.stdout


def test_report_command_writes_the_report(finished: Finished) -> None:
    """`videobatch report` writes report.html again."""
    report = finished.out / "report.html"
    report.unlink(missing_ok=True)
    done = finished.cli.run("report", finished.out)
    assert done.code == 0, done
    assert report.is_file() and report.stat().st_size > 0


def test_api_key_is_written_nowhere(finished: Finished) -> None:
    """The API key is in no output file and in no log the Prefect API received."""
    assert_no_canary_in_files(finished.out)
    texts = prefect_texts(finished.started_at)
    assert any("submitted as task_" in t for t in texts), "the run's logs did not reach Prefect"
    for text in texts:
        for canary in CANARIES:
            assert canary not in text, "the API key reached the Prefect API"


# --- exit 1: the run finished, some rows did not complete -----------------------------------


def test_some_rows_not_completed_exit_1_and_results_written(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """A run with a failed and an invalid row exits 1 with results written; its options come
    from VIDEOBATCH_ variables."""
    sb = make_sandbox(faults=Faults(task_fail=FaultRule(rate=1.0, prompt_contains="FAILME")))
    rows = [
        *clip_rows(2, "good"),
        {"id": "doomed", "prompt": "FAILME: the sandbox fails this task", "duration": 4},
        {"id": "five-seconds", "prompt": "an invalid duration is never sent", "duration": 5},
    ]
    manifest = write_manifest(cli.cwd / "mixed.csv", rows)
    # Every option through the environment: out, concurrency and report.
    env = {"VIDEOBATCH_OUT": "env-out", "VIDEOBATCH_CONCURRENCY": "2", "VIDEOBATCH_REPORT": "0"}

    done = cli.run("run", manifest.name, sb=sb, env=env)

    out = cli.cwd / "env-out"
    assert done.code == 1, done
    assert statuses(out) == {
        "good-0": "completed",
        "good-1": "completed",
        "doomed": "failed",
        "five-seconds": "invalid",
    }
    assert (out / "results.csv").is_file()
    assert not (out / "report.html").exists(), "VIDEOBATCH_REPORT=0 must turn the report off"
    assert "five-seconds" in done.stderr and "duration" in done.stderr
    snap = counters(sb)
    assert snap["tasks_created"] == 3, "the invalid row must never be sent"
    assert "an invalid duration is never sent" not in snap["tasks_created_by_prompt"]
    assert_videos_intact(out, ["good-0", "good-1"])

    assert_no_canary_in_files(out)


# --- exit 2: the run could not start, or was stopped ----------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("id,text\na,hello\n", "no 'prompt' column"),
    ],
    ids=["missing-file", "no-prompt-column"],
)
def test_unreadable_manifest_exits_2(
    cli: Cli, make_sandbox: MakeSandbox, content: str | None, message: str
) -> None:
    """A manifest that cannot be read exits 2, creates nothing and sends nothing."""
    sb = make_sandbox()
    manifest = cli.cwd / "manifest.csv"
    if content is not None:
        manifest.write_text(content, encoding="utf-8")
    out = cli.cwd / "out"

    done = cli.run("run", manifest, "--out", out, sb=sb)

    assert done.code == 2, done
    assert "cannot read the manifest" in done.stderr and message in done.stderr, done
    assert not out.exists(), "nothing may be created for a manifest that cannot be read"
    assert no_calls(counters(sb))


def test_wrong_key_exits_2_creates_nothing_and_leaks_nothing(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """A wrong key exits 2: no task created, every row not_submitted, the key nowhere."""
    sb = make_sandbox()
    manifest = write_manifest(cli.cwd / "clips.csv", clip_rows(3, "denied"))
    out = cli.cwd / "out"
    started_at = time.time()

    done = cli.run("run", manifest, "--out", out, "--concurrency", "3", sb=sb, key=WRONG_KEY)

    assert done.code == 2, done
    assert "authentication" in done.stderr.lower(), done
    snap = counters(sb)
    assert snap["submit_requests"] >= 1 and snap["tasks_created"] == 0
    # Stopped, but accounted for: no row is marked as sent, and the results say so.
    assert set(statuses(out).values()) == {"not_submitted"}
    assert {r.state for r in ledger_rows(out).values()} == {"pending"}
    assert_no_canary_in_files(out)
    texts = prefect_texts(started_at)
    assert any("authentication failed" in t for t in texts), "no 401 in the Prefect logs"
    for text in texts:
        for canary in CANARIES:
            assert canary not in text, "the API key reached the Prefect API"


def test_locked_folder_exits_2_and_sends_nothing(cli: Cli, make_sandbox: MakeSandbox) -> None:
    """A folder locked by another run exits 2 naming its holder, and sends nothing."""
    sb = make_sandbox()
    manifest = write_manifest(cli.cwd / "clips.csv", clip_rows(2, "locked"))
    out = cli.cwd / "out"
    with FolderLock(out):
        done = cli.run("run", manifest, "--out", out, sb=sb)
    assert done.code == 2, done
    assert "in use" in done.stderr and f"pid {os.getpid()}" in done.stderr, done
    assert no_calls(counters(sb))
    assert not (out / "ledger.sqlite").exists()


def test_status_and_results_of_an_empty_folder_exit_2(cli: Cli) -> None:
    """status and results of a folder without a ledger exit 2 saying so."""
    empty = cli.cwd / "nothing-here"
    empty.mkdir()
    for command in ("status", "results"):
        done = cli.run(command, empty)
        assert done.code == 2, done
        assert "no ledger" in done.stderr, done
