"""A retry storm through the real flow: every query of every row answers 503.

The `generate-videos` flow runs against a real Prefect API and the sandbox. Each row must end
`timeout` at its own deadline (never before it) with its task id kept, and the number of
queries stays bounded per row (failed polls back off; nothing stacks Prefect retries on the
client's retries).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.sandbox import FaultRule, Faults, SandboxConfig, run_in_thread
from flows.generate import generate_videos
from tasks.run.options import RunOptions
from tasks.store.ledger import open_ledger

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

KEY = "sk-poll-storm-canary-94ce"
ROWS = 8
POLL_TIMEOUT = 2.0
POLL_INTERVAL = 0.1
# One query of the client is up to this many tries (its default policy).
TRIES_PER_QUERY = retry.RetryPolicy().attempts


async def test_a_retry_storm_ends_every_row_timeout_on_time_without_hammering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a storm of 503s each row ends timeout, never early, its queries within back-off."""
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    faults = Faults(query_5xx=FaultRule(rate=1.0))
    out = tmp_path / "out"
    with (
        run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002, faults=faults)) as sb,
        retry.no_waits(),  # the client retries as fast as it can: the worst case for the API
    ):
        options = RunOptions(
            manifest=str(
                write_manifest(
                    tmp_path / "m.csv",
                    prompt_rows([f"storm row {i}" for i in range(ROWS)], prefix="s"),
                )
            ),
            out=str(out),
            base_url=sb.url,
            concurrency=ROWS,
            submit_rate=500,
            poll_initial_delay=POLL_INTERVAL,
            poll_interval=POLL_INTERVAL,
            poll_timeout=POLL_TIMEOUT,
            report=False,
        )
        outcome = await generate_videos(options=options)
        per_task = sb.state.stats()["queries_by_task"]

    assert outcome["statuses"] == {"timeout": ROWS}
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert all(r["task_id"] and r["error_code"] == "poll_timeout" for r in table)
    assert all("503" in r["error_message"] for r in table)

    polls = math.floor(math.log2(POLL_TIMEOUT / POLL_INTERVAL + 1)) + 2
    bound = polls * TRIES_PER_QUERY
    assert len(per_task) == ROWS
    assert max(per_task.values()) <= bound, per_task
    assert sum(per_task.values()) <= ROWS * bound

    with open_ledger(out) as ledger:
        records = ledger.all()
        ended = {e["row_id"]: e["at"] for e in ledger.events() if e["kind"] == "poll-timeout"}
        kinds = Counter(e["kind"] for e in ledger.events())
    assert kinds["poll-timeout"] == ROWS  # once per row: no retry polled it again
    # Never before its deadline: a fixed schedule ends when the next wait would pass the
    # deadline, and failed waits double, so the last wait is at most the time already spent.
    # No upper bound on the wall clock: a loaded machine only stretches it; the query
    # bound above is what proves the deadline stopped the row.
    earliest = (POLL_TIMEOUT - POLL_INTERVAL) / 2
    for row_id, record in records.items():
        assert record.submitted_at is not None
        took = ended[row_id] - record.submitted_at
        assert took >= earliest, (row_id, took)
