"""Runs on one batch of a PostgreSQL ledger (a temporary cluster), in process, on the sandbox."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
from flowkit import (
    API_KEY,
    assert_no_canary,
    fast_options,
    in_process_flow,
    in_process_sandbox,
    write_manifest,
)
from support.postgres import PostgresServer

from apimart.sandbox import Faults
from tasks.run.lifecycle import batch_name
from tasks.store.ledger import State, connect_ledger, request_hash
from tasks.store.manifest import read_manifest

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

PASSWORD = "pw-CANARY-db-5f1e0b"


@pytest.fixture
def ledger_url(pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database owned by a role with a password, named by VIDEOBATCH_LEDGER_URL."""
    url = pg_server.create_database()
    role = f"vb_{uuid.uuid4().hex[:8]}"
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(pg_server.base_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO {role}')
    host = url.split("@", 1)[1]
    with_password = f"postgresql://{role}:{PASSWORD}@{host}"
    monkeypatch.setenv("VIDEOBATCH_LEDGER_URL", with_password)
    monkeypatch.setenv("APIMART_API_KEY", API_KEY)
    yield with_password
    pg_server.drop_database(url)


def _rows(n: int, word: str = "shared") -> list[dict[str, Any]]:
    return [{"id": f"p{i:02d}", "prompt": f"{word} clip {i}", "duration": 4} for i in range(n)]


def _calls(sandbox: Any) -> tuple[int, int, int]:
    snap = sandbox.state.counters.snapshot()
    return (
        snap["submit_requests"],
        sum(snap["queries_by_task"].values()),
        sum(snap["downloads_by_task"].values()),
    )


async def test_a_run_on_a_postgresql_ledger_keeps_its_rows_there_and_never_shows_the_password(
    tmp_path: Path, ledger_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger is the batch of the output location in PostgreSQL (no ledger.sqlite, no
    lock file), every row ends downloaded with one task, no lease is left behind, a rerun
    calls nothing, and the password is in no log line, result or flow parameter."""
    manifest = write_manifest(tmp_path / "m.csv", _rows(3))
    sandbox = in_process_sandbox()
    out = tmp_path / "out"
    options = fast_options(manifest, out, sandbox.url)
    state = await in_process_flow(sandbox)(options=options, return_state=True)
    outcome = await state.result()  # type: ignore[misc]
    assert outcome["statuses"] == {"completed": 3}
    assert not (out / "ledger.sqlite").exists()
    # The folder is marked as a database batch's (so no SQLite run starts on it), by name only.
    marker = (out / ".videobatch-ledger").read_text()
    assert "postgresql" in marker and ledger_url not in marker and "@" not in marker
    with connect_ledger(ledger_url, batch=batch_name(str(out)), readonly=True) as ledger:
        records = ledger.all()
        assert {r.state for r in records.values()} == {State.DOWNLOADED}
        assert all(ledger.lease(row_id) is None for row_id in records)
        events = [str(dict(e)) for e in ledger.events()]
    assert set(sandbox.state.counters.snapshot()["tasks_created_by_prompt"].values()) == {1}

    before = _calls(sandbox)
    again = await in_process_flow(sandbox)(options=options)
    assert again["statuses"] == {"completed": 3}
    assert _calls(sandbox) == before

    from prefect.client.orchestration import get_client

    async with get_client() as client:
        run = await client.read_flow_run(state.state_details.flow_run_id)  # type: ignore[arg-type]
    texts = [r.getMessage() for r in caplog.records] + events + [str(run.parameters)]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in out.rglob("results.*")]
    assert not [t for t in texts if PASSWORD in t]
    assert_no_canary(texts)
    assert pq.read_table(out / "results.parquet").num_rows == 3


async def test_rows_of_a_run_whose_lease_ran_out_are_taken_over_and_mid_post_rows_become_unknown(
    tmp_path: Path, ledger_url: str
) -> None:
    """Rows a dead run had claimed (its lease over) are worked by the next run; the one it
    left between intent and task id is unknown and never sent."""
    rows = _rows(4, "takeover")
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    sent = read_manifest(manifest).rows[1].request
    assert sent is not None
    with connect_ledger(ledger_url, batch=batch_name(str(out))) as ledger:
        for i, row in enumerate(rows):
            ledger.ensure(row["id"], i)
        ledger.claim("dead-run", 4, lease_s=600)
        ledger.record_intent(
            "p01",
            attempt=1,
            req_hash=request_hash(sent),
            key="k-p01",
            estimated_cost=0.1,
            run_id="dead-run",
            owner="dead-run",
        )
        # The dead run stops renewing: its leases end now.
        ledger.claim("nobody", 0, lease_s=0)
        ledger.renew_lease("dead-run", lease_s=0)
    sandbox = in_process_sandbox()
    outcome = await in_process_flow(sandbox)(options=fast_options(manifest, out, sandbox.url))
    assert outcome["statuses"] == {"completed": 3, "unknown": 1}
    prompts = sandbox.state.counters.snapshot()["tasks_created_by_prompt"]
    assert "takeover clip 1" not in prompts
    assert sorted(prompts.values()) == [1, 1, 1]


async def test_two_runs_on_one_batch_share_its_rows_and_its_budget(
    tmp_path: Path, ledger_url: str
) -> None:
    """Two runs at once on one batch each claim rows: every row gets exactly one task, both
    runs send some (the sandbox holds tasks until four are in flight: two slots each), and
    together they stay within one --max-cost."""
    rows = _rows(12, "pair")
    manifest = write_manifest(tmp_path / "m.csv", rows)
    sandbox = in_process_sandbox(Faults(hold_tasks=True))
    out = tmp_path / "out"
    options = fast_options(manifest, out, sandbox.url, concurrency=2, max_cost=1.0)
    flow = in_process_flow(sandbox)

    async def release_when_both_send() -> None:
        deadline = asyncio.get_running_loop().time() + 120
        while sandbox.state.counters.snapshot()["tasks_created"] < 4:
            assert asyncio.get_running_loop().time() < deadline, "the runs did not both send"
            await asyncio.sleep(0.05)
        sandbox.config.faults.hold_tasks = False

    first, second, _ = await asyncio.gather(
        flow(options=options), flow(options=options), release_when_both_send()
    )
    snap = sandbox.state.counters.snapshot()
    with connect_ledger(ledger_url, batch=batch_name(str(out)), readonly=True) as ledger:
        records = ledger.all()
        committed = ledger.committed_cost()
    sent = [r for r in records.values() if r.task_id]
    assert set(snap["tasks_created_by_prompt"].values()) == {1}
    assert snap["tasks_created"] == len(sent) == 10
    assert committed == pytest.approx(1.0)
    assert (
        sorted(r.state for r in records.values())
        == [State.DOWNLOADED] * 10 + [State.SKIPPED_BUDGET] * 2
    )
    assert len({r.run_id for r in sent}) == 2
    assert first["statuses"] == second["statuses"] == {"completed": 10, "skipped_budget": 2}


async def test_a_402_stops_every_run_of_the_batch(tmp_path: Path, ledger_url: str) -> None:
    """A 402 sets the batch's stop flag; a run of the batch started while a run that saw it
    is alive sends nothing, and one started when none is lifts it and sends again."""
    manifest = write_manifest(tmp_path / "m.csv", _rows(3, "broke"))
    out = tmp_path / "out"
    broke = in_process_sandbox(Faults(payment_after=1))
    outcome = await in_process_flow(broke)(options=fast_options(manifest, out, broke.url))
    assert outcome["statuses"] == {"completed": 1, "skipped_payment": 2}
    batch = batch_name(str(out))
    with connect_ledger(ledger_url, batch=batch) as ledger:
        stop = ledger.stopped()
        assert stop is not None and stop.kind == "payment"
        # Another run of the batch is still alive, holding a row it works on.
        ledger.ensure("elsewhere", 99)
        assert ledger.claim("alive-run", 1, lease_s=600, states={State.PENDING}).rows

    topped_up = in_process_sandbox()
    held = await in_process_flow(topped_up)(options=fast_options(manifest, out, topped_up.url))
    assert held["statuses"] == {"completed": 1, "skipped_payment": 2}
    assert topped_up.state.counters.snapshot()["submit_requests"] == 0

    with connect_ledger(ledger_url, batch=batch) as ledger:
        ledger.release("alive-run")
    resumed = await in_process_flow(topped_up)(options=fast_options(manifest, out, topped_up.url))
    assert resumed["statuses"] == {"completed": 3}
    assert topped_up.state.counters.snapshot()["tasks_created"] == 2


async def test_a_working_run_renews_its_leases_so_no_other_run_takes_its_rows(
    tmp_path: Path, ledger_url: str
) -> None:
    """Held past the end of the lease it sent its tasks under, the run has renewed it: another
    run's claim gets none of its rows, and at the end every lease is released."""
    lease_s = 10.0  # the shortest a run accepts (--lease-seconds)
    manifest = write_manifest(tmp_path / "m.csv", _rows(2, "renewed"))
    sandbox = in_process_sandbox(Faults(hold_tasks=True))
    out = tmp_path / "out"
    batch = batch_name(str(out))
    flow = in_process_flow(sandbox)

    async def intrude() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while sandbox.state.counters.snapshot()["tasks_created"] < 2:
            assert loop.time() < deadline, "the run never sent its rows"
            await asyncio.sleep(0.05)
        with connect_ledger(ledger_url, batch=batch) as ledger:
            first = ledger.lease("p00")
            assert first is not None
            # Past the end of the lease it had when its tasks were sent (the database's clock
            # is this machine's), the row is still the run's, under a renewed lease.
            while time.time() < first.until + 1.0:
                assert loop.time() < deadline, "the first lease never ran out"
                await asyncio.sleep(0.1)
            renewed = ledger.lease("p00")
            assert renewed is not None and renewed.until > first.until
            assert ledger.claim("intruder", 10, lease_s=60).rows == []
        sandbox.config.faults.hold_tasks = False

    outcome, _ = await asyncio.gather(
        flow(options=fast_options(manifest, out, sandbox.url, lease_seconds=lease_s)), intrude()
    )
    assert outcome["statuses"] == {"completed": 2}
    with connect_ledger(ledger_url, batch=batch, readonly=True) as ledger:
        assert [ledger.lease(r) for r in ("p00", "p01")] == [None, None]
