"""A shared batch's budget (`LedgerBudget`) across a 429: two runs of one batch, on SQLite and
PostgreSQL, each with its own ledger connection, against the sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LedgerSite
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.client import AsyncAPIMartClient
from apimart.sandbox import FaultRule, Faults, RunningSandbox, SandboxConfig, run_in_thread
from tasks.run.gate import LedgerBudget, SubmitGate
from tasks.run.options import RunOptions
from tasks.run.runtime import Runtime
from tasks.steps.submit import submit_row
from tasks.store.ledger import Ledger, State, connect_ledger
from tasks.store.manifest import read_manifest

KEY = "sk-fixes-budget-canary-71c3"
# A 4 s 720p clip is estimated at 0.10 (apimart.spec prices): the cap admits one row.
CAP = 0.1


@pytest.fixture(autouse=True)
def _no_waits() -> Iterator[None]:
    with retry.no_waits():
        yield


def _runtime(
    run_id: str, ledger: Ledger, client: AsyncAPIMartClient, options: RunOptions
) -> Runtime:
    return Runtime(
        options=options,
        manifest=read_manifest(options.manifest),
        ledger=ledger,
        client=client,
        run_id=run_id,
        gate=SubmitGate(rate=1000),
        budget=LedgerBudget(cap=CAP, ledger=ledger, hold_s=600),
        out=Path(options.out),
    )


def _claim(ledger: Ledger, owner: str, row_id: str) -> None:
    if ledger.batch:  # a shared batch sends only rows its run holds
        assert [r.row_id for r in ledger.claim(owner, 1, lease_s=600).rows] == [row_id]


async def _wait_for(ledger: Ledger, row_id: str, error_code: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        found = ledger.get(row_id)
        if found is not None and found.error_code == error_code:
            return
        assert time.monotonic() < deadline, f"row {row_id} never got {error_code}"
        await asyncio.sleep(0.01)


def _run_b(site: LedgerSite, sb: RunningSandbox, options: RunOptions, out: list[str]) -> None:
    async def main() -> None:
        with site.ledger() as ledger:
            _claim(ledger, "B", "r1")
            async with AsyncAPIMartClient(base_url=sb.url, api_key=KEY) as client:
                out.append(await submit_row(_runtime("B", ledger, client, options), "r1"))

    asyncio.run(main())


async def test_a_row_throttled_by_a_429_reserves_again_before_its_next_post(
    site: LedgerSite, tmp_path: Path
) -> None:
    """A row paused by a 429 does not keep money it no longer reserves: when another run of
    the batch spends the cap during the pause, the row is skipped for budget, not sent."""
    manifest = write_manifest(
        tmp_path / "m.csv", prompt_rows(["THROTTLE a red fox", "a blue bird"], resolution="720p")
    )
    options = RunOptions(
        manifest=str(manifest), out=str(tmp_path / "out"), max_cost=CAP, submit_rate=1000
    )
    faults = Faults(submit_429=FaultRule(rate=1.0, prompt_contains="THROTTLE"), retry_after_s=0.2)
    config = SandboxConfig(api_key=KEY, time_scale=0.002, faults=faults)
    with run_in_thread(config) as sb, site.ledger() as ledger:
        for row in read_manifest(options.manifest).valid_rows:
            ledger.ensure(row.id, row.index)
        _claim(ledger, "A", "r0")
        async with AsyncAPIMartClient(base_url=sb.url, api_key=KEY) as client:
            run_a = asyncio.create_task(submit_row(_runtime("A", ledger, client, options), "r0"))
            await _wait_for(ledger, "r0", "rate_limited")
            # Run B sends while A pauses; A's loop is held until B is done, so the order is fixed.
            b_state: list[str] = []
            thread = threading.Thread(target=_run_b, args=(site, sb, options, b_state))
            thread.start()
            thread.join(timeout=60)
            assert b_state == [State.SUBMITTED]
            sb.config.faults.submit_429 = FaultRule()
            assert await asyncio.wait_for(run_a, timeout=60) == State.SKIPPED_BUDGET
        assert ledger.committed_cost() == pytest.approx(CAP)
        assert ledger.reserved_cost() == 0
        assert sorted(sb.state.counters.snapshot()["tasks_created_by_prompt"]) == ["a blue bird"]


def test_a_run_that_lost_the_row_cannot_release_the_new_owners_reservation(
    site: LedgerSite,
) -> None:
    """`release_budget(owner=)` drops a reservation only while the row is leased to that
    owner: the run whose lease ran out leaves the reservation of the run that took over."""
    with site.ledger() as ledger:
        ledger.ensure("r0", 0)
        assert [r.row_id for r in ledger.claim("A", 1, lease_s=0).rows] == ["r0"]
        assert ledger.reserve_budget("r0", 0.1, cap=CAP, hold_s=600)
        assert [r.row_id for r in ledger.claim("B", 1, lease_s=600).rows] == ["r0"]
        assert ledger.reserve_budget("r0", 0.1, cap=CAP, hold_s=600)
        ledger.release_budget("r0", owner="A")
        assert ledger.reserved_cost() == pytest.approx(0.1)
        ledger.release_budget("r0", owner="B")
        assert ledger.reserved_cost() == 0


async def test_a_send_refused_for_a_lost_lease_keeps_the_new_owners_reservation(
    pg_url: str, tmp_path: Path
) -> None:
    """A run whose lease ran out between reserving and its intent sends nothing and gives
    back only its own reservation, not the one the run that took the row over made."""
    manifest = write_manifest(tmp_path / "m.csv", prompt_rows(["a red fox"], resolution="720p"))
    options = RunOptions(
        manifest=str(manifest), out=str(tmp_path / "out"), max_cost=CAP, submit_rate=1000
    )
    config = SandboxConfig(api_key=KEY, time_scale=0.002)
    batch = f"lost-{uuid.uuid4().hex[:8]}"
    with (
        run_in_thread(config) as sb,
        connect_ledger(pg_url, batch=batch) as ledger,
        connect_ledger(pg_url, batch=batch) as heir,
    ):
        ledger.ensure("r0", 0)
        assert [r.row_id for r in ledger.claim("A", 1, lease_s=0).rows] == ["r0"]
        async with AsyncAPIMartClient(base_url=sb.url, api_key=KEY) as client:
            runtime = _runtime("A", ledger, client, options)
            # The first POST of a run goes through this lock: holding it stops A after its
            # reservation and before its intent, while its lease (0 s) has run out.
            async with runtime.gate._first_post:
                run_a = asyncio.create_task(submit_row(runtime, "r0"))
                deadline = time.monotonic() + 30
                while ledger.reserved_cost() == 0:
                    assert time.monotonic() < deadline, "run A never reserved"
                    await asyncio.sleep(0.01)
                assert [r.row_id for r in heir.claim("B", 1, lease_s=600).rows] == ["r0"]
                assert heir.reserve_budget("r0", 0.1, cap=CAP, hold_s=600)
            assert await asyncio.wait_for(run_a, timeout=30) == State.PENDING
        assert heir.reserved_cost() == pytest.approx(0.1)
        assert sb.state.counters.snapshot()["submit_requests"] == 0
