"""Member runs of one batch on one output folder's SQLite ledger, in process, on the sandbox.

Two members share the folder (its lock taken shared) and claim rows with leases, so no row is
ever sent by both; a member that died mid-POST leaves its rows to the others once its lease
runs out, its doubtful row `unknown`, never resent.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from flowkit import API_KEY, fast_options, in_process_sandbox, write_manifest
from prefect import flow

from flows.generate import generate
from tasks.errors import LedgerLocked
from tasks.run.lifecycle import ShareBatch
from tasks.run.options import RunOptions
from tasks.store.ledger import Ledger, State, open_ledger, request_hash
from tasks.store.manifest import read_manifest

pytestmark = [pytest.mark.usefixtures("prefect_api")]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMART_API_KEY", API_KEY)
    monkeypatch.delenv("VIDEOBATCH_LEDGER_URL", raising=False)


def member_flow(sandbox: Any) -> Any:
    """`generate-videos`' body as a member run whose client talks to `sandbox` in process."""

    @flow(name="generate-videos", log_prints=False, validate_parameters=True)
    async def member(options: RunOptions, share_batch: ShareBatch | None = "folder") -> Any:
        return await generate(options, transport=sandbox.transport, share_batch=share_batch)

    return member


def _rows(n: int, word: str) -> list[dict[str, Any]]:
    return [{"id": f"m{i:02d}", "prompt": f"{word} clip {i}", "duration": 4} for i in range(n)]


@pytest.mark.slow
async def test_two_members_on_one_folder_never_both_send_a_row(tmp_path: Path) -> None:
    """Two members at once on one folder's ledger: both work, every row ends downloaded with
    exactly one task (sandbox counters), and no lease or heartbeat is left behind."""
    sandbox = in_process_sandbox()
    manifest = write_manifest(tmp_path / "m.csv", _rows(10, "shared folder"))
    out = tmp_path / "out"
    options = fast_options(manifest, out, sandbox.url, concurrency=1, lease_seconds=10)
    member = member_flow(sandbox)
    states = await asyncio.gather(
        member(options=options, return_state=True), member(options=options, return_state=True)
    )
    assert [s.type.value for s in states] == ["COMPLETED", "COMPLETED"]
    created = sandbox.state.counters.snapshot()["tasks_created_by_prompt"]
    assert created == {f"shared folder clip {i}": 1 for i in range(10)}
    with Ledger(out, readonly=True) as ledger:
        records = ledger.all()
        assert {r.state for r in records.values()} == {State.DOWNLOADED}
        senders = {
            json.loads(e["detail"])["run_id"] for e in ledger.events() if e["kind"] == "intent"
        }
        assert len(senders) == 2  # both members sent rows
        assert all(ledger.lease(row_id) is None for row_id in records)
        assert ledger.members() == {}


async def test_a_dead_members_rows_are_finished_by_a_live_one_and_its_doubtful_row_is_not_resent(
    tmp_path: Path,
) -> None:
    """A member that died holding rows (one mid-POST) leaves them: once its lease ran out a
    live member takes them over, sends the never-sent ones once, and turns the mid-POST one
    unknown without sending it."""
    sandbox = in_process_sandbox()
    manifest = write_manifest(tmp_path / "m.csv", _rows(4, "taken over"))
    out = tmp_path / "out"
    sent = read_manifest(manifest).rows[0].request
    assert sent is not None
    with open_ledger(out, shared=True) as dead:
        for i in range(4):
            dead.ensure(f"m{i:02d}", i)
        dead.claim("dead-member", 3, lease_s=1.0)
        dead.record_intent(
            "m00",
            attempt=1,
            req_hash=request_hash(sent),
            key="k-m00",
            estimated_cost=0.1,
            run_id="dead-member",
            owner="dead-member",
        )
        dead.beat("dead-member")
    # Its lease runs out before the live member starts. (Should it run out while the live
    # member waits, chunk.py's wait ends without claiming the freed rows: see the report.)
    time.sleep(1.2)
    options = fast_options(manifest, out, sandbox.url, lease_seconds=10)
    state = await member_flow(sandbox)(options=options, return_state=True)
    created = sandbox.state.counters.snapshot()["tasks_created_by_prompt"]
    assert created == {f"taken over clip {i}": 1 for i in (1, 2, 3)}
    with Ledger(out, readonly=True) as ledger:
        records = ledger.all()
    assert records["m00"].state == State.UNKNOWN
    assert records["m00"].error_code == "submit_outcome_unknown"
    assert {records[f"m{i:02d}"].state for i in (1, 2, 3)} == {State.DOWNLOADED}
    assert state.type.value == "COMPLETED"


async def test_a_plain_run_is_refused_on_a_folder_members_hold_and_a_member_on_a_plain_one(
    tmp_path: Path,
) -> None:
    """`generate-videos` without share_batch on a member-held folder is refused with
    LedgerLocked, as is a member on a folder a plain run holds; nothing is sent."""
    sandbox = in_process_sandbox()
    manifest = write_manifest(tmp_path / "m.csv", _rows(2, "refused"))
    out = tmp_path / "out"
    options = fast_options(manifest, out, sandbox.url)
    member = member_flow(sandbox)
    members_hold = open_ledger(out, shared=True)
    with members_hold, pytest.raises(LedgerLocked, match="member of a shared batch"):
        await member(options=options, share_batch=None)
    with open_ledger(out), pytest.raises(LedgerLocked, match="plain run"):
        await member(options=options, share_batch="folder")
    assert sandbox.state.counters.snapshot()["submit_requests"] == 0
