"""A run resending unknown rows (`--resubmit-unknown`) on a shared PostgreSQL batch resends only
the rows that were unknown when it started, never one it saw turn unknown mid-run: the person's
decision was about the rows they saw. In process, on the sandbox, against a real Prefect API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from flowkit import API_KEY, fast_options, in_process_flow, in_process_sandbox, write_manifest
from support.postgres import PostgresServer

from apimart.sandbox import Faults
from tasks.run.lifecycle import batch_name
from tasks.store.ledger import State, connect_ledger, request_hash
from tasks.store.manifest import read_manifest

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

DEAD = "dead-run"


@pytest.fixture
def ledger_url(pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database, named by VIDEOBATCH_LEDGER_URL as a run reads it."""
    url = pg_server.create_database()
    monkeypatch.setenv("VIDEOBATCH_LEDGER_URL", url)
    monkeypatch.setenv("APIMART_API_KEY", API_KEY)
    yield url
    pg_server.drop_database(url)


async def test_a_resending_run_never_resends_a_row_it_saw_turn_unknown(
    tmp_path: Path, ledger_url: str
) -> None:
    """r1 is mid-POST in another run (intent, live lease) when a --resubmit-unknown run
    starts; that run's lease runs out while the resending run works, so one of its claims
    turns r1 unknown. Its later claims still ask for unknown rows, yet r1 is never handed out
    again: no task is made for it and it ends `unknown`, while every other row completes."""
    rows = [{"id": f"r{i}", "prompt": f"unknown-before clip {i}", "duration": 4} for i in range(7)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    batch = batch_name(str(out))
    doubtful = read_manifest(manifest).rows[1].request
    assert doubtful is not None
    with connect_ledger(ledger_url, batch=batch) as ledger:
        for i, row in enumerate(rows):
            ledger.ensure(row["id"], i)
        # The other run holds r1 alone and has written its intent under the lease.
        held = {r.row_id for r in ledger.claim(DEAD, 2, lease_s=600).rows}
        assert held == {"r0", "r1"}
        ledger.release(DEAD, ["r0"])
        ledger.record_intent(
            "r1",
            attempt=1,
            req_hash=request_hash(doubtful),
            key="k-r1",
            estimated_cost=0.1,
            run_id=DEAD,
            owner=DEAD,
        )

    # Concurrency 1 and tasks held: the run claims r0 (sent, holding the one slot) and the
    # four chunks its lookahead allows (r2-r5), then claims nothing more until r0's task ends.
    sandbox = in_process_sandbox(Faults(hold_tasks=True))
    options = fast_options(
        manifest, out, sandbox.url, concurrency=1, resubmit_unknown=True, max_cost=10.0
    )
    flow = in_process_flow(sandbox)

    def leased_by_the_run() -> set[str]:
        with connect_ledger(ledger_url, batch=batch, readonly=True) as ledger:
            leases = {row_id: ledger.lease(row_id) for row_id in ledger.all()}
        return {r for r, lease in leases.items() if lease is not None and lease.owner != DEAD}

    async def the_other_run_dies_mid_run() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while not (
            sandbox.state.counters.snapshot()["tasks_created"] == 1
            and leased_by_the_run() == {"r0", "r2", "r3", "r4", "r5"}
        ):
            assert loop.time() < deadline, (
                f"the run did not claim as expected: {leased_by_the_run()}"
            )
            await asyncio.sleep(0.05)
        with connect_ledger(ledger_url, batch=batch) as ledger:
            assert ledger.get("r1").state == State.INTENT  # type: ignore[union-attr]
            ledger.renew_lease(DEAD, lease_s=0)  # its last renewal: its lease ends now
        sandbox.config.faults.hold_tasks = False

    outcome, _ = await asyncio.gather(flow(options=options), the_other_run_dies_mid_run())

    assert outcome["statuses"] == {"completed": 6, "unknown": 1}
    prompts = sandbox.state.counters.snapshot()["tasks_created_by_prompt"]
    assert "unknown-before clip 1" not in prompts
    assert sorted(prompts.values()) == [1] * 6
    with connect_ledger(ledger_url, batch=batch, readonly=True) as ledger:
        record = ledger.get("r1")
        assert record is not None and record.state == State.UNKNOWN
        assert record.attempt == 1 and record.run_id == DEAD
        assert [e["kind"] for e in ledger.events("r1")][-1] == "lease-expired"
