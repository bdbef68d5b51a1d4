"""How the run's poller is built from the options and keeps what it learned: real open_run,
sandbox over real HTTP, real SQLite ledger. Tasks are held still with `hold_tasks`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.manifests import prompt_rows, write_manifest

from apimart.sandbox import SandboxConfig, run_in_thread
from tasks.run.duration import DurationModel
from tasks.run.lifecycle import open_run
from tasks.run.options import RunOptions
from tasks.run.polling import fixed_schedule, open_poller
from tasks.run.scheduler import FixedSchedule
from tasks.steps.poll import poll_row
from tasks.steps.submit import submit_row
from tasks.store.ledger import Ledger, State

KEY = "sk-polling-wiring-canary-5d1a"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMART_API_KEY", KEY)


def options(tmp_path: Path, base_url: str, **extra: Any) -> RunOptions:
    manifest = write_manifest(tmp_path / "m.csv", prompt_rows(["wiring row"]))
    return RunOptions(manifest=str(manifest), out=str(tmp_path / "out"), base_url=base_url, **extra)


def test_the_options_pick_the_schedule() -> None:
    """Neither pace given: adaptive; the interval alone also sets the first delay; the delay
    alone polls every 8 s after it; both are honoured exactly, below 5 s too."""
    base = {"manifest": "m.csv"}
    assert fixed_schedule(RunOptions(**base)) is None
    assert fixed_schedule(RunOptions(**base, poll_interval=0.3)) == FixedSchedule(0.3, 0.3)
    assert fixed_schedule(RunOptions(**base, poll_initial_delay=2)) == FixedSchedule(2, 8)
    both = RunOptions(**base, poll_interval=1.5, poll_initial_delay=0)
    assert fixed_schedule(both) == FixedSchedule(0, 1.5)


@pytest.mark.parametrize(("interval", "expected"), [(0.5, (3, 4)), (None, (1, 1))])
async def test_an_explicit_interval_is_honoured_and_the_default_is_adaptive(
    tmp_path: Path, interval: float | None, expected: tuple[int, int]
) -> None:
    """A held task under a 2.25 s deadline: --poll-interval 0.5 queries it every 0.5 s (3-4
    times, never clamped to 5 s); the adaptive default, whose plan starts minutes in, asks
    once, at the deadline."""
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002)) as sb:
        sb.config.faults.hold_tasks = True
        opts = options(tmp_path, sb.url, poll_interval=interval, poll_timeout=2.25)
        async with open_run(opts) as rt, open_poller(rt) as poller:
            assert (poller.fixed is None) is (interval is None)
            assert await submit_row(rt, "r0") == State.SUBMITTED
            assert await poll_row(rt, "r0") == State.TIMEOUT
            record = rt.ledger.get("r0")
        asked = sum(sb.state.stats()["queries_by_task"].values())
    low, high = expected
    assert low <= asked <= high
    assert record is not None and record.polls == asked and record.task_id


async def test_the_model_is_stored_when_the_run_is_cancelled(tmp_path: Path) -> None:
    """A run cancelled while a row is still polled keeps what its finished task taught, and
    the cancelled row leaves the scheduler."""
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.01)) as sb:
        manifest = write_manifest(tmp_path / "m.csv", prompt_rows(["quick one", "held one"]))
        opts = RunOptions(
            manifest=str(manifest),
            out=str(tmp_path / "out"),
            base_url=sb.url,
            poll_interval=0.1,
            submit_rate=100,
        )
        async with open_run(opts) as rt:
            seen: dict[str, Any] = {}

            async def run_rows() -> None:
                async with open_poller(rt) as poller:
                    seen["poller"] = poller
                    assert await submit_row(rt, "r0") == State.SUBMITTED
                    assert await poll_row(rt, "r0") == State.COMPLETED
                    sb.config.faults.hold_tasks = True
                    assert await submit_row(rt, "r1") == State.SUBMITTED
                    await poll_row(rt, "r1")  # held: runs until cancelled

            job = asyncio.create_task(run_rows())
            for _ in range(3000):
                r0 = rt.ledger.get("r0")
                polling_r1 = "r1" in rt.poll_deadlines and seen["poller"].in_flight == 1
                if r0 is not None and r0.state == State.COMPLETED and polling_r1:
                    break
                await asyncio.sleep(0.01)
            assert seen["poller"].in_flight == 1, "r1 never reached the scheduler"
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            assert rt.poller is None and seen["poller"].in_flight == 0
    with Ledger(tmp_path / "out", readonly=True) as ledger:
        stored = ledger.meta(DurationModel.META_KEY)
    assert stored is not None and DurationModel.from_json(stored).observations == 1
