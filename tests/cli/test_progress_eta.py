"""The command line's progress line shows the run's ETA, computed as the progress artifact's
is (`tasks.run.polling.eta_seconds`: the duration model kept in the ledger, the rows left, the
concurrency cap), whether or not a model is stored yet, on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clikit import Cli, MakeSandbox, clip_rows, write_manifest
from support.postgres import PostgresServer
from support.waiting import wait_for

from apimart.sandbox import Faults
from tasks.run import environment
from tasks.run.duration import DurationModel
from tasks.run.lifecycle import batch_name
from tasks.run.options import RunOptions
from tasks.run.polling import eta_seconds
from tasks.store.ledger import State, open_ledger
from videobatch.console import _Watcher


def eta_of(line: str) -> float:
    """The seconds an `eta 12m35s` (or `eta 45s`, `eta 1h05m`) in `line` says."""
    found = re.search(r"eta (\d+h)?(\d+m)?(\d+s)?", line)
    assert found and any(found.groups()), line
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in found.groups())
    return hours * 3600 + minutes * 60 + seconds


@pytest.mark.slow
def test_the_plain_progress_line_shows_the_models_eta(
    cli: Cli, make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """A run held still by the sandbox (stderr not a terminal) prints `progress:` lines with
    an ETA from the configured prior (10-15 min) before anything has finished or been
    learned: the model's estimate, not one from throughput (nothing has finished)."""
    sb = make_sandbox(faults=Faults(hold_tasks=True))
    manifest = write_manifest(tmp_path / "m.csv", clip_rows(2, "eta"))
    out = cli.cwd / "out"
    running = cli.start(
        "run",
        manifest,
        "--out",
        out,
        "--no-report",
        "--poll-duration-low",
        "600",
        "--poll-duration-high",
        "900",
        sb=sb,
    )
    try:

        def progress_line() -> str | None:
            assert running.alive(), running.wait()
            lines = re.findall(r"progress: (.*submitted 2.*)", running.output()[1])
            return lines[-1] if lines else None

        line = wait_for(
            progress_line, timeout=90, what="a progress line with two submitted", not_yet=()
        )
    finally:
        sb.config.faults.hold_tasks = False
    done = running.wait()
    assert done.code == 0, done
    # Two rows in flight for seconds, concurrency 8: each ends at the prior's mean (750 s)
    # less its age, plus the detection lag.
    assert 600 <= eta_of(line) <= 900, line


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_out(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An output location whose ledger is a folder's SQLite file or, through
    VIDEOBATCH_LEDGER_URL, a batch of a shared PostgreSQL ledger."""
    out = str(tmp_path / f"out-{uuid.uuid4().hex[:6]}")
    if request.param == "sqlite":
        yield out
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    url = server.create_database()
    monkeypatch.setenv(environment.LEDGER_URL, url)
    try:
        yield out
    finally:
        server.drop_database(url)


def fill(out: str, *, running_for: float, stored: DurationModel | None) -> None:
    """Three rows: one downloaded, one submitted `running_for` seconds ago, one pending."""
    url = environment.ledger_url()
    target, batch = (url, batch_name(out)) if url else (out, None)
    with open_ledger(target, batch, shared=url is not None) as ledger:
        for idx, row_id in enumerate(("done", "flying", "waiting")):
            ledger.ensure(row_id, idx)
        ledger.update("done", state=State.DOWNLOADED, task_id="t-done")
        ledger.update(
            "flying",
            state=State.SUBMITTED,
            task_id="t-flying",
            submitted_at=time.time() - running_for,
        )
        if stored is not None:
            ledger.set_meta(DurationModel.META_KEY, stored.to_json())


@pytest.mark.parametrize("learned", [False, True])
def test_the_progress_line_eta_is_the_models_from_the_ledger(
    ledger_out: str, learned: bool
) -> None:
    """The watcher's line says `eta ...` as `eta_seconds` computes it from the model stored
    in the ledger (or, none stored yet, the run's prior), the row in flight by its age, and
    the row left at the concurrency cap."""
    stored = None
    if learned:
        stored = DurationModel()
        stored.learn_many([60.0 + (i % 20) for i in range(300)])
    fill(ledger_out, running_for=40.0, stored=stored)
    options = RunOptions(
        manifest="m.csv",
        out=ledger_out,
        concurrency=1,
        poll_duration_low=400,
        poll_duration_high=500,
    )
    watcher = _Watcher(ledger_out, 3, options=options)
    line = watcher._line(watcher._counts())
    assert line.startswith("downloaded 1, pending 1, submitted 1, eta "), line
    model = DurationModel.load(stored.to_json() if stored else None, low=400, high=500)
    expected = eta_seconds(model, unfinished=2, running=[40.0], concurrency=1)
    assert eta_of(line) == pytest.approx(expected, abs=3), line
    # One slot: the flying row's rest, then a whole row: the learned ~70 s, or the prior's.
    assert (expected < 200) is learned
    if watcher._ledger is not None:
        watcher._ledger.close()
