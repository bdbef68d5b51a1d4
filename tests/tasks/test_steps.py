"""The submit, poll and download steps, called as the plain functions they are.

No Prefect server is involved: each step takes the run's runtime as its first argument.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support.manifests import prompt_rows, write_manifest
from support.net import free_port

from apimart import retry
from apimart.sandbox import FaultRule, Faults, SandboxConfig, run_in_thread
from tasks.run.gate import Budget, RunStopped, SubmitGate
from tasks.run.lifecycle import open_run, rows_needing_work
from tasks.run.options import RunOptions
from tasks.run.runtime import Runtime
from tasks.steps.download import download_row
from tasks.steps.poll import poll_row
from tasks.steps.submit import submit_decision, submit_row
from tasks.store.ledger import State

KEY = "sk-steps-canary-31f9"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    with retry.no_waits():
        yield


@asynccontextmanager
async def runtime_for(
    tmp_path: Path, prompts: list[str], faults: Faults | None = None, **options: Any
) -> AsyncIterator[tuple[Runtime, Any]]:
    config = SandboxConfig(api_key=KEY, time_scale=0.002, faults=faults or Faults())
    with run_in_thread(config) as sb:
        opts = RunOptions(
            manifest=str(write_manifest(tmp_path / "m.csv", prompt_rows(prompts))),
            out=str(tmp_path / "out"),
            base_url=sb.url,
            poll_initial_delay=0.05,
            poll_interval=0.05,
            submit_rate=1000,
            **options,
        )
        async with open_run(opts) as runtime:
            yield runtime, sb


async def test_one_row_through_all_three_steps(tmp_path: Path) -> None:
    """One row is submitted, polled and downloaded intact; a second submit pays nothing."""
    async with runtime_for(tmp_path, ["a calm lake"]) as (rt, sb):
        assert await submit_row(rt, "r0") == State.SUBMITTED
        assert await poll_row(rt, "r0") == State.COMPLETED
        assert await download_row(rt, "r0") == State.DOWNLOADED
        record = rt.ledger.get("r0")
        assert record is not None and record.video_sha256
        data = (rt.out / "videos" / "r0.mp4").read_bytes()
        assert hashlib.sha256(data).hexdigest() == record.video_sha256
        assert rows_needing_work(rt) == []
        # A second submit of a row with a task never pays again.
        assert await submit_row(rt, "r0") == State.DOWNLOADED
        assert sb.state.counters.snapshot()["tasks_created"] == 1


async def test_throttled_submit_is_requeued_not_lost(tmp_path: Path) -> None:
    """A submit throttled past the client's retries is sent again, once, and slows the gate."""
    faults = Faults(submit_429=FaultRule(rate=1.0, times=6), retry_after_s=0.01)
    async with runtime_for(tmp_path, ["throttled"], faults) as (rt, sb):
        # The client gives up after 5 tries; the step re-queues the row and sends it again.
        assert await submit_row(rt, "r0") == State.SUBMITTED
        assert sb.state.counters.snapshot()["tasks_created"] == 1
        assert rt.gate.rate < 1000  # the gate slowed down for everyone


async def test_unknown_outcome_is_held_and_budget_counts_it(tmp_path: Path) -> None:
    """A POST whose outcome is unknown is held (never sent again) and its cost at risk."""
    faults = Faults(submit_5xx=FaultRule(rate=1.0))
    async with runtime_for(tmp_path, ["doubtful"], faults) as (rt, sb):
        assert await submit_row(rt, "r0") == State.UNKNOWN
        assert sb.state.counters.snapshot()["tasks_created"] == 1
        assert submit_decision(rt, "r0") == State.UNKNOWN
        assert rt.ledger.committed_cost() == pytest.approx(0.1)
        assert await submit_row(rt, "r0") == State.UNKNOWN  # held: no second POST
        assert sb.state.counters.snapshot()["submit_requests"] == 1


async def test_payment_required_stops_new_submissions(tmp_path: Path) -> None:
    """After a 402 no later row is sent at all."""
    async with runtime_for(tmp_path, ["one", "two"], Faults(payment_after=0)) as (rt, sb):
        assert await submit_row(rt, "r0") == State.SKIPPED_PAYMENT
        assert rt.gate.payment_exhausted
        assert await submit_row(rt, "r1") == State.SKIPPED_PAYMENT
        assert sb.state.counters.snapshot()["submit_requests"] == 1  # the second never left


async def test_wrong_key_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused key (401) stops the run; the row stays pending and nothing is created."""
    async with runtime_for(tmp_path, ["one", "two"]) as (rt, sb):
        sb.config.api_key = "sk-someone-else"
        with pytest.raises(Exception, match="401"):
            await submit_row(rt, "r0")
        with pytest.raises(RunStopped):
            await submit_row(rt, "r1")
        assert rt.ledger.get("r0").state == State.PENDING  # type: ignore[union-attr]
        assert sb.state.counters.snapshot()["tasks_created"] == 0


async def test_expired_link_is_renewed_once_then_reported(tmp_path: Path) -> None:
    """A video link that stays expired is renewed once, then the row is download_failed."""
    faults = Faults(expired_urls=FaultRule(rate=1.0))
    async with runtime_for(tmp_path, ["always expired"], faults) as (rt, _sb):
        await submit_row(rt, "r0")
        assert await poll_row(rt, "r0") == State.COMPLETED
        assert await download_row(rt, "r0") == State.DOWNLOAD_FAILED
        record = rt.ledger.get("r0")
        assert record is not None and record.task_id and record.error_code == "download_failed"
        assert not (rt.out / "videos" / "r0.mp4").exists()


def test_budget_never_passes_the_cap() -> None:
    """The budget admits a cost only within its cap, and real costs free what they saved."""
    budget = Budget(cap=1.0, committed=0.5)
    assert budget.reserve(0.3)
    assert not budget.reserve(0.3)
    budget.settle(0.3, 0.1)  # the real cost was lower: room for one more
    assert budget.reserve(0.3)
    assert budget.committed == pytest.approx(0.9)
    assert Budget(cap=None).reserve(1e9)


async def test_gate_spaces_submissions_and_pauses_after_429() -> None:
    """The gate spaces submissions by its rate, pauses after a 429 and halves its rate."""
    import time

    gate = SubmitGate(rate=50)
    start = time.monotonic()
    for _ in range(5):
        await gate.wait_turn()
    assert time.monotonic() - start >= 4 / 50 * 0.9
    gate.throttled(0.2)
    start = time.monotonic()
    await gate.wait_turn()
    assert time.monotonic() - start >= 0.15
    assert gate.rate == 25


async def test_a_doubtful_row_stays_unknown_when_its_resend_gets_nowhere(tmp_path: Path) -> None:
    """A resend of an unknown row refused with 402 leaves it unknown and at risk."""
    faults = Faults(submit_5xx=FaultRule(rate=1.0))
    async with runtime_for(tmp_path, ["doubtful"], faults) as (rt, sb):
        assert await submit_row(rt, "r0") == State.UNKNOWN
        committed = rt.budget.committed
        rt.options.resubmit_unknown = True
        sb.config.faults.submit_5xx = FaultRule()
        sb.config.faults.payment_after = 0
        # The resend is refused with 402: that says nothing of the first POST.
        assert await submit_row(rt, "r0") == State.UNKNOWN
        record = rt.ledger.get("r0")
        assert record is not None and record.state == State.UNKNOWN
        assert rt.budget.committed == pytest.approx(committed)  # still at risk
        assert sb.state.counters.snapshot()["tasks_created"] == 1


async def test_an_unreachable_api_is_given_up_on_after_a_few_rows(tmp_path: Path) -> None:
    """An API nothing answers on is given up on after three rows; none is left at risk."""
    closed = free_port()  # nothing listens on it
    options = RunOptions(
        manifest=str(
            write_manifest(tmp_path / "m.csv", prompt_rows([f"row {i}" for i in range(6)]))
        ),
        out=str(tmp_path / "out"),
        base_url=f"http://127.0.0.1:{closed}",
        submit_rate=1000,
    )
    async with open_run(options) as rt:
        states = [await submit_row(rt, f"r{i}") for i in range(6)]
        assert states == [State.PENDING] * 6
        assert rt.gate.unreachable
        records = [rt.ledger.get(f"r{i}") for i in range(6)]
        tried = [r for r in records if r is not None and "not tried" not in (r.error_message or "")]
        assert len(tried) == 3  # the rest were not even attempted
        assert rt.budget.committed == 0


async def test_a_cancelled_run_still_records_the_task_its_post_created(tmp_path: Path) -> None:
    """Cancelled while its POST's answer is on the way, the step still records the task."""
    import asyncio

    faults = Faults(submit_late_after_create=FaultRule(rate=1.0), late_s=1.0)
    async with runtime_for(tmp_path, ["slow answer"], faults) as (rt, sb):
        step = asyncio.ensure_future(submit_row(rt, "r0"))
        while not sb.state.counters.snapshot()["tasks_created"]:
            await asyncio.sleep(0.05)
        step.cancel()  # Ctrl-C while the answer is on its way
        with pytest.raises(asyncio.CancelledError):
            await step
        record = rt.ledger.get("r0")
        assert record is not None and record.state == State.SUBMITTED
        assert record.task_id is not None and record.task_id.startswith("task_")


def test_a_nan_anywhere_refuses_rather_than_admits() -> None:
    """A NaN in the budget refuses new costs rather than admitting them."""
    assert not Budget(cap=1.0, committed=float("nan")).reserve(0.1)


def test_non_finite_costs_are_not_numbers() -> None:
    """A NaN or infinite cost from the API reads as no cost."""
    from apimart.models import Task

    for cost in ("NaN", "Infinity", float("inf"), "-inf"):
        task = Task.from_body({"data": {"id": "t", "status": "completed", "cost": cost}})
        assert task.cost is None
