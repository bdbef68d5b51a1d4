"""Two member runs of one batch on one folder's SQLite ledger never pass one --max-cost
together: the budget is one reservation in the ledger, not each member's own count (each
alone would admit rows up to the whole cap, so together twice it). In process, on the
sandbox, against a real Prefect API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from flowkit import API_KEY, fast_options, in_process_sandbox, write_manifest
from prefect import flow

from apimart.sandbox import Faults
from flows.generate import generate
from tasks.run.lifecycle import ShareBatch
from tasks.run.options import RunOptions
from tasks.store.ledger import Ledger, State

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

CAP = 0.6  # six rows of 4 s at 720p (0.10 each) of the twelve


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMART_API_KEY", API_KEY)
    monkeypatch.delenv("VIDEOBATCH_LEDGER_URL", raising=False)


def _member(sandbox: Any) -> Any:
    @flow(name="generate-videos", log_prints=False, validate_parameters=True)
    async def member(options: RunOptions, share_batch: ShareBatch | None = "folder") -> Any:
        return await generate(options, transport=sandbox.transport, share_batch=share_batch)

    return member


async def test_two_members_together_stay_within_one_max_cost(tmp_path: Path) -> None:
    """Both members send (tasks held until four are in flight: two slots each), and together
    the sandbox charged and the ledger committed at most --max-cost; the rows past it are
    skipped_budget, none sent twice."""
    rows = [{"id": f"b{i:02d}", "prompt": f"budget clip {i}", "duration": 4} for i in range(12)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    sandbox = in_process_sandbox(Faults(hold_tasks=True))
    out = tmp_path / "out"
    options = fast_options(manifest, out, sandbox.url, concurrency=2, max_cost=CAP)
    member = _member(sandbox)

    async def release_when_both_send() -> None:
        deadline = asyncio.get_running_loop().time() + 120
        while sandbox.state.counters.snapshot()["tasks_created"] < 4:
            assert asyncio.get_running_loop().time() < deadline, "the members did not both send"
            await asyncio.sleep(0.05)
        sandbox.config.faults.hold_tasks = False

    await asyncio.gather(member(options=options), member(options=options), release_when_both_send())
    snap = sandbox.state.counters.snapshot()
    with Ledger(out, readonly=True) as ledger:
        records = ledger.all()
        committed = ledger.committed_cost()
        senders = {
            json.loads(e["detail"])["run_id"] for e in ledger.events() if e["kind"] == "intent"
        }
    assert len(senders) == 2, "only one member sent: the cap was never shared"
    assert set(snap["tasks_created_by_prompt"].values()) == {1}
    assert snap["cost_billed"] <= CAP + 1e-9
    assert committed <= CAP + 1e-9
    sent = [r for r in records.values() if r.task_id]
    assert len(sent) == snap["tasks_created"] == 6
    assert sorted(r.state for r in records.values()) == sorted(
        [State.DOWNLOADED] * 6 + [State.SKIPPED_BUDGET] * 6
    )
