"""Two `videobatch run` processes on one PostgreSQL batch (a temporary cluster), one sandbox."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from clikit import (
    CANARY_KEY,
    Cli,
    MakeSandbox,
    clip_rows,
    counters,
    prefect_texts,
    results,
    write_manifest,
)
from support.postgres import PostgresServer
from support.waiting import wait_for

from apimart.sandbox import Faults
from tasks.run.lifecycle import batch_name
from tasks.store.ledger import State, connect_ledger

pytestmark = pytest.mark.slow

PASSWORD = "pw-CANARY-cli-db-93ab17"


@pytest.fixture
def ledger_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database owned by a role with a password: the URL holds a secret."""
    url = pg_server.create_database()
    role = f"vb_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.base_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" OWNER TO {role}')
    yield f"postgresql://{role}:{PASSWORD}@{url.split('@', 1)[1]}"
    pg_server.drop_database(url)


def test_two_processes_share_one_batch_with_one_task_per_row_and_leak_no_secret(
    cli: Cli,
    make_sandbox: MakeSandbox,
    ledger_url: str,
    tmp_path: Path,
) -> None:
    """Two runs started at once on one PostgreSQL batch both end well and share its rows
    (each sends some; one task per row, no folder lock in the way), a rerun makes zero API
    calls, and neither the API key nor the DB password shows in any output, Prefect log,
    ledger row or results file."""
    since = time.time()
    rows = clip_rows(10, prefix="pair")
    manifest = write_manifest(tmp_path / "m.csv", rows)
    sb = make_sandbox(faults=Faults(hold_tasks=True))
    out = tmp_path / "out"
    env = {"VIDEOBATCH_LEDGER_URL": ledger_url}
    args = ("run", manifest, "--out", out, "--concurrency", "2")
    first, second = cli.start(*args, sb=sb, env=env), cli.start(*args, sb=sb, env=env)
    # Two slots each, tasks held: four tasks exist only once both runs are sending.
    wait_for(lambda: counters(sb)["tasks_created"] >= 4, timeout=120, what="both runs sending")
    sb.config.faults.hold_tasks = False
    done = [first.wait(), second.wait()]
    assert [d.code for d in done] == [0, 0], "\n".join(map(str, done))

    snap = counters(sb)
    assert snap["tasks_created"] == 10
    assert set(snap["tasks_created_by_prompt"].values()) == {1}
    table = results(out)
    assert [r["status"] for r in table.values()] == ["completed"] * 10
    assert all((out / r["video_path"]).is_file() for r in table.values())
    assert not (out / "ledger.sqlite").exists()
    with connect_ledger(ledger_url, batch=batch_name(str(out)), readonly=True) as ledger:
        records = ledger.all()
        ledger_text = [str(r) for r in records.values()] + [str(dict(e)) for e in ledger.events()]
    assert {r.state for r in records.values()} == {State.DOWNLOADED}
    assert len({r.run_id for r in records.values()}) == 2, "one run did all the rows"

    before = counters(sb)
    again = cli.run(*args, sb=sb, env=env)
    assert again.code == 0, str(again)
    after = counters(sb)
    assert after["submit_requests"] == before["submit_requests"]
    assert after["queries_by_task"] == before["queries_by_task"]
    assert after["downloads_by_task"] == before["downloads_by_task"]

    texts = [d.output for d in (*done, again)] + prefect_texts(since) + ledger_text
    texts += [(out / name).read_text() for name in ("results.csv", "report.html")]
    texts.append(str(pq.read_table(out / "results.parquet").to_pylist()))
    for secret in (PASSWORD, CANARY_KEY):
        assert not [t for t in texts if secret in t], f"{secret[:6]}... leaked"


def test_ctrl_c_of_a_run_on_a_shared_batch_releases_its_rows_and_writes_results(
    cli: Cli, make_sandbox: MakeSandbox, ledger_url: str, tmp_path: Path
) -> None:
    """Ctrl-C of a run on a PostgreSQL batch: the message names the shared ledger (never its
    URL), the results are written from that ledger with every sent task id, and the run's
    leases are given back, so the next run resumes at once and pays nothing twice."""
    manifest = write_manifest(tmp_path / "m.csv", clip_rows(3, prefix="cut"))
    sb = make_sandbox(faults=Faults(hold_tasks=True))
    out = tmp_path / "out"
    env = {"VIDEOBATCH_LEDGER_URL": ledger_url}
    running = cli.start("run", manifest, "--out", out, "--no-report", sb=sb, env=env)
    batch = batch_name(str(out))

    def all_submitted() -> bool:
        try:
            with connect_ledger(ledger_url, batch=batch, readonly=True) as ledger:
                return ledger.counts().get("submitted", 0) == 3
        except Exception:
            return False  # the run has not created the batch yet

    wait_for(all_submitted, timeout=120, what="three rows submitted", interval=0.1)
    stopped = running.interrupt()
    sb.config.faults.hold_tasks = False
    assert stopped.code == 130, stopped
    assert "the shared ledger (VIDEOBATCH_LEDGER_URL)" in stopped.stderr
    assert PASSWORD not in stopped.output
    table = results(out)
    assert all(r["task_id"] for r in table.values())
    with connect_ledger(ledger_url, batch=batch, readonly=True) as ledger:
        assert [ledger.lease(row_id) for row_id in table] == [None, None, None]

    resumed = cli.run("run", manifest, "--out", out, "--no-report", sb=sb, env=env)
    assert resumed.code == 0, resumed
    assert counters(sb)["tasks_created"] == 3
    assert {r["status"] for r in results(out).values()} == {"completed"}
