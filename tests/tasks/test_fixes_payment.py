"""A 402 on a shared PostgreSQL batch whose stop flag cannot be written, against the sandbox
over real HTTP. (A folder's SQLite ledger has no batch stop flag to write.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.client import AsyncAPIMartClient
from apimart.sandbox import Faults, SandboxConfig, run_in_thread
from tasks.run.gate import LedgerBudget, SubmitGate
from tasks.run.options import RunOptions
from tasks.run.runtime import Runtime
from tasks.steps.submit import submit_row
from tasks.store.ledger import State, connect_ledger
from tasks.store.manifest import read_manifest

KEY = "sk-fixes-payment-canary-2b9e"

REFUSE_STOP = """
CREATE FUNCTION refuse_stop() RETURNS trigger AS $$
BEGIN
    IF NEW.key = 'stop' THEN RAISE EXCEPTION 'the stop flag cannot be written'; END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_stop BEFORE INSERT ON videobatch_meta
    FOR EACH ROW EXECUTE FUNCTION refuse_stop();
"""


@pytest.fixture(autouse=True)
def _no_waits() -> Iterator[None]:
    with retry.no_waits():
        yield


async def test_a_402_leaves_the_row_not_sent_even_when_the_stop_flag_cannot_be_written(
    pg_url: str, tmp_path: Path
) -> None:
    """A 402 created nothing: the row is skipped for payment (not `intent`, which reads as
    money at risk) before the batch's stop flag is written, so a failing flag write cannot
    leave it doubtful."""
    manifest = write_manifest(tmp_path / "m.csv", prompt_rows(["a red fox"], resolution="720p"))
    options = RunOptions(manifest=str(manifest), out=str(tmp_path / "out"), submit_rate=1000)
    config = SandboxConfig(api_key=KEY, time_scale=0.002, faults=Faults(payment_after=0))
    with (
        run_in_thread(config) as sb,
        connect_ledger(pg_url, batch=f"pay-{uuid.uuid4().hex[:8]}") as ledger,
    ):
        ledger.ensure("r0", 0)
        assert [r.row_id for r in ledger.claim("A", 1, lease_s=600).rows] == ["r0"]
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(REFUSE_STOP)
        async with AsyncAPIMartClient(base_url=sb.url, api_key=KEY) as client:
            runtime = Runtime(
                options=options,
                manifest=read_manifest(options.manifest),
                ledger=ledger,
                client=client,
                run_id="A",
                gate=SubmitGate(rate=1000),
                budget=LedgerBudget(cap=None, ledger=ledger, hold_s=600),
                out=tmp_path / "out",
            )
            with pytest.raises(Exception, match="the stop flag cannot be written"):
                await submit_row(runtime, "r0")
        found = ledger.get("r0")
        assert found is not None and found.state == State.SKIPPED_PAYMENT
        assert found.error_code == "payment_required"
        assert ledger.committed_cost() == 0 and ledger.reserved_cost() == 0
        assert sb.state.counters.snapshot()["tasks_created_by_prompt"] == {}
