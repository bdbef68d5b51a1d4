"""`--lease-seconds` (`VIDEOBATCH_LEASE_SECONDS`): how long a claimed row of a shared batch stays
a run's without renewal. Refused below its floor; a real `videobatch run` on a PostgreSQL
batch leases and renews its rows for that long instead of the built-in 120 s."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clikit import Cli, MakeSandbox, clip_rows, counters, write_manifest
from support.postgres import PostgresServer
from support.waiting import wait_for
from typer.testing import CliRunner

from apimart.sandbox import Faults
from tasks.run.gate import Budget, LedgerBudget
from tasks.run.lifecycle import batch_name
from tasks.run.options import DEFAULT_LEASE_S, MIN_LEASE_S, RunOptions
from tasks.steps.chunk import LEASE_S, renewal_period
from tasks.store.ledger import connect_ledger
from videobatch import cli as cli_module
from videobatch import console


def _refusal(monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str]) -> str:
    """`videobatch run m.csv ARGS` in process; what it said, on one line. Fails if it ran."""
    for var in [v for v in os.environ if v.startswith(("VIDEOBATCH_", "APIMART_"))]:
        monkeypatch.delenv(var)
    ran: list[RunOptions] = []
    monkeypatch.setattr(console, "run", lambda options, *, sandbox: ran.append(options) or 0)
    result = CliRunner().invoke(
        cli_module.app, ["run", "m.csv", *args], env={"COLUMNS": "250", **env}
    )
    assert result.exit_code == 2, result.output
    assert not ran, "the run must not start"
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def test_the_default_lease_is_the_built_in_one_and_too_short_a_lease_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The option defaults to LEASE_S (120 s); a lease below 10 s (flag or variable), which a
    stalled but live run would lose, or an endless one, is refused naming where it came from
    and the rule."""
    assert RunOptions(manifest="m.csv").lease_seconds == LEASE_S == DEFAULT_LEASE_S == 120.0
    floor = f"greater than or equal to {MIN_LEASE_S:g}"
    said = _refusal(monkeypatch, ["--lease-seconds", "5"], {})
    assert "--lease-seconds" in said and floor in said, said
    said = _refusal(monkeypatch, [], {"VIDEOBATCH_LEASE_SECONDS": "9.5"})
    assert "VIDEOBATCH_LEASE_SECONDS" in said and floor in said, said
    said = _refusal(monkeypatch, ["--lease-seconds", "inf"], {})
    assert "--lease-seconds" in said and "less than or equal to" in said, said


def test_renewals_come_before_a_shared_budget_reservation_lapses(tmp_path: Path) -> None:
    """A lease longer than the budget's first hold is renewed within a quarter of that hold,
    so a reservation never lapses (and lets another run spend it) before its first renewal;
    otherwise every quarter lease."""
    with connect_ledger(tmp_path / "ledger") as ledger:
        shared = LedgerBudget(cap=1.0, ledger=ledger, hold_s=120.0)
        assert renewal_period(600.0, shared) == 30.0
        assert renewal_period(20.0, shared) == 5.0
    assert renewal_period(600.0, Budget(cap=1.0)) == 150.0


@pytest.fixture
def ledger_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database of this test's own."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.mark.slow
def test_a_run_on_a_shared_batch_leases_and_renews_its_rows_for_lease_seconds(
    cli: Cli, make_sandbox: MakeSandbox, ledger_url: str, tmp_path: Path
) -> None:
    """`videobatch run --lease-seconds 10` on a PostgreSQL batch: while its tasks are held, its
    rows' leases end within 10 s of now and are pushed on by renewals every 2.5 s (the
    built-in lease would hold them 120 s and renew only after 30 s); the run ends well and
    gives its leases back."""
    manifest = write_manifest(tmp_path / "m.csv", clip_rows(2, prefix="lease"))
    sb = make_sandbox(faults=Faults(hold_tasks=True))
    out = tmp_path / "out"
    env = {"VIDEOBATCH_LEDGER_URL": ledger_url}
    args = ("run", manifest, "--out", out, "--no-report", "--lease-seconds", "10")
    running = cli.start(*args, sb=sb, env=env)
    batch = batch_name(str(out))
    wait_for(lambda: counters(sb)["tasks_created"] >= 2, timeout=120, what="both rows sent")

    def lease_until() -> float:
        with connect_ledger(ledger_url, batch=batch, readonly=True) as ledger:
            lease = ledger.lease("lease-0")
        assert lease is not None, "the running run holds its row"
        return lease.until

    first = lease_until()
    assert first - time.time() <= 10.5, "the row is leased for longer than --lease-seconds"
    # A renewal is what moves the end of the lease; it comes every quarter lease.
    wait_for(lambda: lease_until() > first + 1.0, timeout=60, what="a renewal", interval=0.2)
    assert lease_until() - time.time() <= 10.5
    sb.config.faults.hold_tasks = False
    done = running.wait()
    assert done.code == 0, done
    with connect_ledger(ledger_url, batch=batch, readonly=True) as ledger:
        assert [ledger.lease(r) for r in ("lease-0", "lease-1")] == [None, None]
