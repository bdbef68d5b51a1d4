"""A run resending unknown rows on a shared PostgreSQL batch never resends a row a dead run
of the batch left mid-POST: that doubt arose during the batch, after the person's decision,
even when it is this run's own open of the ledger that turns the row unknown. In process, on
the sandbox over real HTTP, the session's PostgreSQL server, a real Prefect API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.manifests import prompt_rows, write_manifest
from support.postgres import PostgresServer
from support.runs import fast_options

from apimart import retry
from apimart.sandbox import SandboxConfig, run_in_thread
from flows.generate import generate
from tasks.run.lifecycle import batch_name
from tasks.store.ledger import State, connect_ledger, request_hash
from tasks.store.manifest import read_manifest

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

KEY = "sk-fixes3-unknown-pg-canary-3b8e"


@pytest.fixture
def ledger_url(pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database, named by VIDEOBATCH_LEDGER_URL as a run reads it."""
    url = pg_server.create_database()
    monkeypatch.setenv("VIDEOBATCH_LEDGER_URL", url)
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    with retry.no_waits():
        yield url
    pg_server.drop_database(url)


@pytest.mark.parametrize("share", [None, "database"], ids=["plain", "member"])
async def test_a_resending_run_on_a_database_batch_never_resends_a_dead_runs_mid_post_row(
    tmp_path: Path, ledger_url: str, share: str | None
) -> None:
    """A dead run left r0 in intent (its lease ran out before anyone looked); a run with
    --resubmit-unknown then opens the batch (a plain run or a member): r0 turns unknown and
    stays so, no task is made for it, the other row is sent."""
    manifest = write_manifest(
        tmp_path / "m.csv", prompt_rows(["the dead run's row", "a row nobody sent"])
    )
    out = tmp_path / "out"
    request = read_manifest(str(manifest)).valid_rows[0].request
    assert request is not None
    with connect_ledger(ledger_url, batch=batch_name(str(out))) as sibling:
        sibling.ensure("r0", 0)
        sibling.ensure("r1", 1)
        claim = sibling.claim("dead-run", 1, lease_s=0.5)
        assert [r.row_id for r in claim.rows] == ["r0"]
        req_hash = request_hash(request)
        sibling.record_intent(
            "r0",
            attempt=1,
            req_hash=req_hash,
            key=sibling.idempotency_key("r0", req_hash, 1),
            estimated_cost=0.1,
            run_id="dead-run",
            owner="dead-run",
        )
        # The run's process is killed here, its POST under way.
    while time.time() <= claim.until:  # its lease must run out for anyone to see the row
        await asyncio.sleep(0.05)
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.004)) as sb:
        options = fast_options(manifest, out, sb.url, resubmit_unknown=True)
        await generate(options, share_batch=share)  # type: ignore[arg-type]
        created = sb.state.stats()["tasks_created_by_prompt"]
    assert created.get("a row nobody sent") == 1
    assert created.get("the dead run's row", 0) == 0, "the dead run's doubtful row was resent"
    with connect_ledger(ledger_url, batch=batch_name(str(out)), readonly=True) as ledger:
        record = ledger.get("r0")
        assert record is not None and record.state == State.UNKNOWN
