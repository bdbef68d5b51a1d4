"""The progress artifact's money, on a real Prefect API and a real SQLite ledger: read from the
ledger seldom (it sums every row), and the ledger's own at the end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tasks.present.artifacts import SPENT_EVERY_S, Progress
from tasks.store.ledger import Ledger
from tasks.store.states import State

pytestmark = [pytest.mark.usefixtures("prefect_api")]

ROWS = 40


async def progress_description(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{key}-progress"]))
        )
    assert found, "no progress artifact"
    return str(found[-1].description)


async def test_spent_is_read_seldom_and_is_the_ledgers_at_the_end(tmp_path: Path) -> None:
    """40 rows, each updating the artifact: the ledger's sum is read a few times, not 40, and
    the last description shows exactly what the ledger says was spent."""
    reads = 0
    with Ledger(tmp_path) as ledger:
        for i in range(ROWS):
            ledger.ensure(f"r{i}", i)

        def spent() -> float:
            nonlocal reads
            reads += 1
            return ledger.spent()

        key = f"videobatch-perf-{tmp_path.name.lower().replace('_', '-')}"
        # every_s=0: every row updates the artifact, as the last rows of any run do.
        progress = Progress(ROWS, key=key, every_s=0.0, spent=spent)
        started = time.monotonic()
        await progress.start()
        for i in range(ROWS):
            ledger.update(f"r{i}", "downloaded", state=State.DOWNLOADED, cost=0.25 + i / 100)
            await progress.row_done(State.DOWNLOADED)
        elapsed = time.monotonic() - started
        total = ledger.spent()
    # start, the first update, the last row's update, plus one per SPENT_EVERY_S of the test.
    assert reads <= 3 + int(elapsed // SPENT_EVERY_S), reads
    assert total == pytest.approx(0.25 * ROWS + sum(range(ROWS)) / 100)
    description = await progress_description(key)
    assert f"spent {total:.2f}" in description, description
    assert f"{State.DOWNLOADED}: {ROWS}" in description, description
