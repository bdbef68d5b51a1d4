"""A run whose lease on a row lapsed never undoes what the run that took the row over has
sent since: its not-sent, over-budget and skipped writes apply only while it holds the row.

Real components: the sandbox over real HTTP, `open_run` and the submit step as two members of
a shared folder batch run them, the folder's real SQLite ledger. The one interleaving that
matters (the second member sends while the first is between its decision and its write) is
made with a profile hook that lets the second member's real run go first, as a slower
process would.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.sandbox import SandboxConfig, run_in_thread
from tasks.run.gate import LedgerBudget
from tasks.run.lifecycle import open_run
from tasks.run.options import RunOptions
from tasks.steps.chunk import claim_states
from tasks.steps.submit import submit_row
from tasks.store.ledger import State

KEY = "sk-fixes3-lease-canary-6e3f"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    monkeypatch.delenv("VIDEOBATCH_LEDGER_URL", raising=False)
    with retry.no_waits():
        yield


async def test_a_run_whose_lease_lapsed_never_marks_a_row_sent_since_as_skipped(
    tmp_path: Path,
) -> None:
    """Member A decides to send r0, its lease lapses, member B takes r0 over and sends it; A,
    now over the budget B's send used, does not write skipped_budget over B's submitted row
    (which would make it sendable again): r0 keeps B's task and is never sent twice."""
    prompt = "a lantern on a quay"
    manifest = write_manifest(tmp_path / "m.csv", prompt_rows([prompt]))
    out = tmp_path / "out"
    sent: dict[str, Any] = {}

    async def member_b(options: RunOptions) -> None:
        async with open_run(options, share_batch="folder") as b:
            claim = b.ledger.claim(b.run_id, 10, lease_s=600, states=claim_states(b))
            assert [r.row_id for r in claim.rows] == ["r0"]
            sent["state"] = await submit_row(b, "r0")
            record = b.ledger.get("r0")
            assert record is not None
            sent["task_id"] = record.task_id

    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.004)) as sb:
        options = RunOptions(
            manifest=str(manifest),
            out=str(out),
            base_url=sb.url,
            submit_rate=1000,
            report=False,
            # Room for one row's estimate, not two.
            max_cost=0.15,
        )
        reserving = LedgerBudget.reserve.__code__
        fired = threading.Event()

        def pause_here(frame: FrameType, event: str, arg: object) -> None:
            # A has decided to send r0 and is about to reserve its estimate: B goes first.
            if event == "call" and frame.f_code is reserving and not fired.is_set():
                fired.set()
                other = threading.Thread(target=lambda: asyncio.run(member_b(options)))
                other.start()
                other.join(timeout=120)

        async with open_run(options, share_batch="folder") as a:
            # A lease that is over at once: the row is free for B's claim.
            claim = a.ledger.claim(a.run_id, 10, lease_s=0, states=claim_states(a))
            assert [r.row_id for r in claim.rows] == ["r0"]
            sys.setprofile(pause_here)
            try:
                state = await submit_row(a, "r0")
            finally:
                sys.setprofile(None)
            assert fired.is_set(), "member A never reserved r0's estimate"
            assert sent.get("state") == State.SUBMITTED, sent
            record = a.ledger.get("r0")
            assert record is not None
            assert (record.state, record.task_id) == (State.SUBMITTED, sent["task_id"]), (
                f"member A's lapsed lease wrote {record.state} over member B's sent row"
            )
            assert state == State.SUBMITTED
        assert sb.state.stats()["tasks_created_by_prompt"] == {prompt: 1}
