"""The poll step's log lines: every row's end is named with its task id, but past a run's first
completions many rows share one line (real sandbox over HTTP, real SQLite ledger)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.manifests import prompt_rows, write_manifest

import tasks.steps.poll as poll
from apimart.sandbox import FaultRule, Faults, SandboxConfig, run_in_thread
from tasks.run.lifecycle import open_run
from tasks.run.options import RunOptions
from tasks.steps.poll import poll_row
from tasks.steps.submit import submit_row
from tasks.store.ledger import State

KEY = "sk-perf-poll-log-canary-0b7e"
ROWS = 10


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMART_API_KEY", KEY)


async def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > ends:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_rows_past_the_first_completions_are_named_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """10 rows ending while the others are polled: the first 3 completions a line each, the
    next 6 at most 4 to a line, the failed one a line of its own; every row named exactly once
    with its task id."""
    monkeypatch.setattr(poll, "ONE_LINE_EACH", 3, raising=False)
    monkeypatch.setattr(poll, "BATCH", 4, raising=False)
    monkeypatch.setattr(poll, "BATCH_AGE_S", 3600.0, raising=False)
    faults = Faults(hold_tasks=True, task_fail=FaultRule(rate=1.0, prompt_contains="clip 9"))
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002, faults=faults)) as sb:
        manifest = write_manifest(
            tmp_path / "m.csv", prompt_rows([f"a heron, clip {i}" for i in range(ROWS)])
        )
        options = RunOptions(
            manifest=str(manifest),
            out=str(tmp_path / "out"),
            base_url=sb.url,
            poll_initial_delay=0.02,
            poll_interval=0.02,
            submit_rate=1000,
        )
        async with open_run(options) as runtime:
            ids = [f"r{i}" for i in range(ROWS)]
            for row_id in ids:
                assert await submit_row(runtime, row_id) == State.SUBMITTED
            with caplog.at_level(logging.INFO, logger="videobatch"):
                polls = asyncio.gather(*(poll_row(runtime, r) for r in ids))
                # Every task is held running until all are watched: none ends alone.
                await until(lambda: len(runtime.polling_rows) == ROWS, "every row watched")
                sb.config.faults.hold_tasks = False
                states = await polls
            tasks = {r: runtime.ledger.get(r).task_id for r in ids}  # type: ignore[union-attr]
    assert sorted(states) == sorted([State.COMPLETED] * (ROWS - 1) + [State.FAILED])
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "videobatch" and r.levelno == logging.INFO
    ]
    for row_id, task_id in tasks.items():
        naming = [m for m in lines if f"row {row_id}:" in m or f"row {row_id} (" in m]
        assert len(naming) == 1, (row_id, lines)
        assert task_id is not None and task_id in naming[0], (row_id, naming)
    failed = [m for m in lines if "row r9:" in m]
    assert failed and "failed" in failed[0], lines
    # 3 completions a line each, 6 in lines of at most 4, the failure on its own.
    assert len(lines) == 3 + 2 + 1, lines
