"""A shared batch's budget (`LedgerBudget`) across a 429: two runs of one batch, on SQLite and
PostgreSQL, each with its own ledger connection, against the sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
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
from tasks.store.ledger import Ledger, State
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
