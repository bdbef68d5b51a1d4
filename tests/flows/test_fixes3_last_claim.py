"""A member of a shared batch claims once more before it ends: a row another run held while
it worked, whose lease ran out meanwhile, is taken over rather than left undone. In process,
on the sandbox over real HTTP, the folder's real SQLite ledger, a real Prefect API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.manifests import prompt_rows, write_manifest
from support.runs import fast_options

from apimart import retry
from apimart.sandbox import Faults, SandboxConfig, run_in_thread
from flows.generate import generate
from tasks.store.ledger import Ledger, open_ledger

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

KEY = "sk-fixes3-last-claim-canary-2f9d"
HELD_S = 8.0


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    monkeypatch.delenv("VIDEOBATCH_LEDGER_URL", raising=False)
    with retry.no_waits():
        yield


async def test_a_row_whose_other_holder_stopped_while_the_run_worked_is_taken_over(
    tmp_path: Path,
) -> None:
    """Another run holds r1 (never sent) when the member starts, so the member claims only
    r0; that run stops renewing while r0's task runs. When r0 is done r1 is held by nobody:
    the member claims and sends it before ending, instead of leaving it to do."""
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.csv", prompt_rows(["first row", "other's row"]))
    with open_ledger(out, shared=True) as other:
        other.ensure("r0", 0)
        other.ensure("r1", 1)
        claim = other.claim("other-run", 2, lease_s=HELD_S)
        other.release("other-run", ["r0"])
    sandbox_config = SandboxConfig(api_key=KEY, time_scale=0.004, faults=Faults(hold_tasks=True))
    with run_in_thread(sandbox_config) as sb:
        options = fast_options(manifest, out, sb.url)

        async def release_once_the_other_lease_ran_out() -> None:
            deadline = time.monotonic() + 120
            while sb.state.stats()["tasks_created"] < 1:
                assert time.monotonic() < deadline, "the member never sent r0"
                await asyncio.sleep(0.05)
            with Ledger(out, readonly=True) as reader:
                lease = reader.lease("r1")
            assert lease is not None and lease.owner == "other-run", (
                "the other run's lease on r1 ran out before the member's first claim"
            )
            while time.time() <= claim.until:
                await asyncio.sleep(0.05)
            sb.config.faults.hold_tasks = False

        outcome, _ = await asyncio.gather(
            generate(options, share_batch="folder"), release_once_the_other_lease_ran_out()
        )
        created = sb.state.stats()["tasks_created_by_prompt"]
    assert created == {"first row": 1, "other's row": 1}
    assert outcome["statuses"] == {"completed": 2}
