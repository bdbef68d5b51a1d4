"""The submit step's money paths, through `.fn()` against the sandbox over real HTTP.

Each "run" below is a real `open_run` on the same output folder (so its budget is seeded from
the ledger, as every later run's is); no Prefect server is involved.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.errors import PermissionDeniedError
from apimart.sandbox import FaultRule, Faults, RunningSandbox, SandboxConfig, run_in_thread
from tasks.run.gate import MAX_PAUSE_S, RunStopped, SubmitGate
from tasks.run.lifecycle import open_run
from tasks.run.options import RunOptions
from tasks.run.runtime import Runtime
from tasks.steps.chunk import chunk_task
from tasks.steps.download import download_row
from tasks.steps.poll import poll_row
from tasks.steps.submit import TaskNotRecorded, submit_row
from tasks.store.ledger import State, open_ledger

KEY = "sk-submit-money-canary-5d1e"
# A 4 s 720p clip is estimated at 0.10 (apimart.spec prices).
ESTIMATE = 0.1


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    with retry.no_waits():
        yield


@contextmanager
def sandbox(faults: Faults | None = None) -> Iterator[RunningSandbox]:
    config = SandboxConfig(api_key=KEY, time_scale=0.002, faults=faults or Faults())
    with run_in_thread(config) as sb:
        yield sb


@asynccontextmanager
async def a_run(
    tmp_path: Path, sb: RunningSandbox, prompts: list[str], **options: Any
) -> AsyncIterator[Runtime]:
    """One run into `tmp_path/out` (the same folder every time), as the flow opens it."""
    values: dict[str, Any] = {
        "manifest": str(
            write_manifest(tmp_path / "m.csv", prompt_rows(prompts, resolution="720p"))
        ),
        "out": str(tmp_path / "out"),
        "base_url": sb.url,
        "poll_initial_delay": 0.05,
        "poll_interval": 0.05,
        "submit_rate": 1000,
    }
    values.update(options)
    async with open_run(RunOptions(**values)) as runtime:
        yield runtime


def counters(sb: RunningSandbox) -> dict[str, Any]:
    return sb.state.counters.snapshot()


def record(rt: Runtime, row_id: str) -> Any:
    found = rt.ledger.get(row_id)
    assert found is not None
    return found


@contextmanager
def refusing_gateway(
    status: int = 403, kind: str = "forbidden", message: str = "blocked by policy"
) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server standing in for what cannot run here (a WAF, the vendor's own refusal):
    it answers every POST with `status` and an error body of the vendor's shape."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            seen.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"error": {"type": kind, "message": message}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


# --- item 4: a resend of a doubtful row under --max-cost ---------------------------------


async def _doubtful_row(tmp_path: Path, sb: RunningSandbox) -> None:
    """r0's POST creates and bills a task, then the connection drops: r0 is `unknown`."""
    sb.config.faults.submit_drop_after_create = FaultRule(rate=1.0)
    async with a_run(tmp_path, sb, ["a doubtful clip"]) as rt:
        assert await submit_row(rt, "r0") == State.UNKNOWN
        assert rt.ledger.committed_cost() == pytest.approx(ESTIMATE)
    sb.config.faults.submit_drop_after_create = FaultRule()  # a resend would now get through
    assert counters(sb)["tasks_created"] == 1


async def test_a_resend_is_skipped_when_the_cap_admits_one_estimate_but_not_two(
    tmp_path: Path,
) -> None:
    """Under --max-cost a doubtful row is resent only if both its POSTs fit under the cap."""
    with sandbox() as sb:
        await _doubtful_row(tmp_path, sb)
        cap = 1.5 * ESTIMATE
        async with a_run(
            tmp_path, sb, ["a doubtful clip"], resubmit_unknown=True, max_cost=cap
        ) as rt:
            assert await submit_row(rt, "r0") == State.UNKNOWN
            held = record(rt, "r0")
            assert held.state == State.UNKNOWN
            assert "not resent" in held.error_message and "cap" in held.error_message
            assert rt.ledger.committed_cost() == pytest.approx(ESTIMATE)
        assert counters(sb)["submit_requests"] == 1  # the resend never left


async def test_a_cap_that_admits_two_resends_and_counts_both_posts(tmp_path: Path) -> None:
    """A resent doubtful row counts both POSTs, before and after its real cost is known."""
    with sandbox() as sb:
        await _doubtful_row(tmp_path, sb)
        prompts = ["a doubtful clip", "a later row"]
        cap = 2.5 * ESTIMATE
        async with a_run(tmp_path, sb, prompts, resubmit_unknown=True, max_cost=cap) as rt:
            assert await submit_row(rt, "r0") == State.SUBMITTED
            assert rt.ledger.committed_cost() == pytest.approx(2 * ESTIMATE)
            assert rt.budget.committed == pytest.approx(2 * ESTIMATE)
            assert await poll_row(rt, "r0") == State.COMPLETED
            assert await download_row(rt, "r0") == State.DOWNLOADED
            cost = record(rt, "r0").cost
            assert cost is not None and cost > 0
            # The first POST may have been billed too: it stays counted beside the real cost.
            assert rt.ledger.committed_cost() == pytest.approx(cost + ESTIMATE)
        assert counters(sb)["tasks_created"] == 2  # this sandbox ignores idempotency keys
        # The next run's budget starts from both: a third estimate no longer fits.
        async with a_run(tmp_path, sb, prompts, max_cost=cap) as rt:
            assert rt.budget.committed == pytest.approx(cost + ESTIMATE)
            assert await submit_row(rt, "r1") == State.SKIPPED_BUDGET
        assert counters(sb)["submit_requests"] == 2


async def test_a_resend_that_never_got_through_leaves_one_post_counted(tmp_path: Path) -> None:
    """A resend refused with 402 created nothing: the row is unknown with one estimate."""
    with sandbox() as sb:
        await _doubtful_row(tmp_path, sb)
        sb.config.faults.payment_after = 0
        async with a_run(tmp_path, sb, ["a doubtful clip"], resubmit_unknown=True) as rt:
            assert await submit_row(rt, "r0") == State.UNKNOWN
            held = record(rt, "r0")
            assert held.estimated_cost == pytest.approx(ESTIMATE)
            assert not held.earlier_posts_cost
            assert rt.ledger.committed_cost() == pytest.approx(ESTIMATE)
            assert rt.budget.committed == pytest.approx(ESTIMATE)
        assert counters(sb)["submit_requests"] == 2


async def test_only_a_plain_400_to_the_resend_settles_the_doubt(tmp_path: Path) -> None:
    """A plain 400 to the same body clears both POSTs' money; a 409 keeps the first counted."""
    with sandbox() as sb:
        await _doubtful_row(tmp_path, sb)
        with refusing_gateway(409, "conflict", "idempotency key in use") as (url, _):
            async with a_run(
                tmp_path, sb, ["a doubtful clip"], resubmit_unknown=True, base_url=url
            ) as rt:
                assert await submit_row(rt, "r0") == State.UNKNOWN
                assert rt.ledger.committed_cost() == pytest.approx(ESTIMATE)
                assert rt.budget.committed == pytest.approx(ESTIMATE)
        with refusing_gateway(400, "invalid_request_error", "bad prompt") as (url, _):
            async with a_run(
                tmp_path, sb, ["a doubtful clip"], resubmit_unknown=True, base_url=url
            ) as rt:
                assert await submit_row(rt, "r0") == State.REJECTED
                assert not record(rt, "r0").earlier_posts_cost
                assert rt.ledger.committed_cost() == 0
                assert rt.budget.committed == pytest.approx(0)


# --- item 10: what the client raised, and what was raised after the task existed ----------


async def test_a_client_failure_before_sending_leaves_the_row_never_sent(tmp_path: Path) -> None:
    """An exception from client.submit other than SubmitOutcomeUnknown: row pending, money back."""
    with sandbox() as sb:
        async with a_run(tmp_path, sb, ["never leaves"]) as rt:
            await rt.client.aclose()  # the client now refuses to send anything
            with pytest.raises(RuntimeError, match="closed"):
                await submit_row(rt, "r0")
            row = record(rt, "r0")
            assert row.state == State.PENDING
            assert row.error_code == "submit_error" and "closed" in row.error_message
            assert rt.budget.committed == 0
            assert rt.ledger.committed_cost() == 0
        assert counters(sb)["submit_requests"] == 0
        async with a_run(tmp_path, sb, ["never leaves"]) as rt:
            assert await submit_row(rt, "r0") == State.SUBMITTED  # sent by the next run
        assert counters(sb)["tasks_created"] == 1


def _refuse_task_ids(out: Path) -> None:
    """Make the ledger's own database refuse every write of a task id (a failing disk write)."""
    db = sqlite3.connect(out / "ledger.sqlite")
    with db:
        db.execute(
            "CREATE TRIGGER refuse_task_ids BEFORE UPDATE OF task_id ON rows "
            "WHEN NEW.task_id IS NOT NULL BEGIN SELECT RAISE(ABORT, 'write refused'); END"
        )
    db.close()


def _accept_task_ids(out: Path) -> None:
    db = sqlite3.connect(out / "ledger.sqlite")
    with db:
        db.execute("DROP TRIGGER refuse_task_ids")
    db.close()


async def test_a_task_the_ledger_would_not_record_is_never_taken_for_not_sent(
    tmp_path: Path,
) -> None:
    """A failure after the POST returned a task stops the run; the row is doubtful, not pending."""
    with sandbox() as sb:
        async with a_run(tmp_path, sb, ["paid, unrecorded", "second"]) as rt:
            _refuse_task_ids(rt.out)
            with pytest.raises(TaskNotRecorded) as caught:
                await submit_row(rt, "r0")
            task_id = caught.value.task_id
            assert task_id.startswith("task_")
            assert rt.gate.stop_reason is not None and task_id in rt.gate.stop_reason
            with pytest.raises(RunStopped):
                await submit_row(rt, "r1")  # nothing else is paid while the ledger fails
            assert record(rt, "r0").state == State.INTENT
            assert rt.budget.committed == pytest.approx(ESTIMATE)  # paid money stays counted
            _accept_task_ids(rt.out)
        assert counters(sb)["tasks_created"] == 1
        with open_ledger(tmp_path / "out") as ledger:  # the next run holds it as unknown
            held = ledger.get("r0")
            assert held is not None and held.state == State.UNKNOWN
            assert ledger.committed_cost() == pytest.approx(ESTIMATE)
        async with a_run(tmp_path, sb, ["paid, unrecorded", "second"]) as rt:
            assert await submit_row(rt, "r0") == State.UNKNOWN
        assert counters(sb)["submit_requests"] == 1  # never sent again unasked


async def test_a_post_to_a_route_that_does_not_exist_stops_the_run(tmp_path: Path) -> None:
    """404 on the POST: the run stops naming the URL, and every row stays never-sent."""
    with sandbox() as sb:
        prompts = ["one", "two", "three"]
        async with a_run(tmp_path, sb, prompts, base_url=sb.url + "/v1") as rt:
            with pytest.raises(Exception, match="404"):
                await submit_row(rt, "r0")
            assert rt.gate.stop_reason is not None
            assert f"{sb.url}/v1/v1/videos/generations" in rt.gate.stop_reason
            for row_id in ("r1", "r2"):
                with pytest.raises(RunStopped):
                    await submit_row(rt, row_id)
            states = {r.row_id: r.state for r in rt.ledger.all().values()}
            assert states == dict.fromkeys(("r0", "r1", "r2"), State.PENDING)
            assert record(rt, "r0").error_code == "endpoint_not_found"
            assert rt.ledger.committed_cost() == 0
            assert [e["kind"] for e in rt.ledger.events() if e["kind"] == "intent"] == ["intent"]
        async with a_run(tmp_path, sb, prompts) as rt:
            for row_id in ("r0", "r1", "r2"):
                assert await submit_row(rt, row_id) == State.SUBMITTED
        assert set(counters(sb)["tasks_created_by_prompt"].values()) == {1}


async def test_a_403_stops_the_run_as_permission_denied_with_rows_never_sent(
    tmp_path: Path,
) -> None:
    """403 on the POST stops the run saying 403 (not 401); the row stays never-sent."""
    with sandbox() as sb, refusing_gateway() as (url, seen):
        async with a_run(tmp_path, sb, ["one", "two"], base_url=url) as rt:
            with pytest.raises(PermissionDeniedError):
                await submit_row(rt, "r0")
            assert rt.gate.stop_reason is not None and "403" in rt.gate.stop_reason
            assert "401" not in rt.gate.stop_reason
            with pytest.raises(RunStopped):
                await submit_row(rt, "r1")
            assert record(rt, "r0").state == State.PENDING
            assert record(rt, "r0").error_code == "permission_denied"
            assert rt.budget.committed == 0
        assert seen == ["/v1/videos/generations"]


# --- item 12: a Retry-After longer than a run waits, and recovery after a 429 --------------


async def test_an_hour_long_retry_after_closes_submitting_in_seconds(tmp_path: Path) -> None:
    """Retry-After: 3600 stops new submissions at once; rows stay pending; in-flight finish."""
    faults = Faults(submit_429=FaultRule(rate=1.0, prompt_contains="THROTTLE"), retry_after_s=3600)
    prompts = ["in flight", "THROTTLE me", "after the 429"]
    with sandbox(faults) as sb:
        started = time.monotonic()
        async with a_run(tmp_path, sb, prompts) as rt:

            async def steps() -> None:
                assert await submit_row(rt, "r0") == State.SUBMITTED
                assert await submit_row(rt, "r1") == State.PENDING
                assert await submit_row(rt, "r2") == State.PENDING
                assert await poll_row(rt, "r0") == State.COMPLETED
                assert await download_row(rt, "r0") == State.DOWNLOADED

            await asyncio.wait_for(steps(), timeout=60)
            for row_id in ("r1", "r2"):
                left = record(rt, row_id)
                assert left.state == State.PENDING and left.error_code == "rate_limited"
                assert "3600s" in left.error_message and "run again after" in left.error_message
            assert rt.budget.committed == pytest.approx(record(rt, "r0").cost)
        assert time.monotonic() - started < 60
        assert counters(sb)["submit_requests"] == 2  # r2 was never tried
        sb.config.faults.submit_429 = FaultRule()
        async with a_run(tmp_path, sb, prompts) as rt:
            assert await submit_row(rt, "r1") == State.SUBMITTED
            assert await submit_row(rt, "r2") == State.SUBMITTED
        assert set(counters(sb)["tasks_created_by_prompt"].values()) == {1}


async def test_the_submit_rate_climbs_back_after_a_429(tmp_path: Path) -> None:
    """After throttling, successful submissions bring the rate back up to the configured one."""
    faults = Faults(
        submit_429=FaultRule(rate=1.0, prompt_contains="THROTTLE", times=5), retry_after_s=0.01
    )
    prompts = ["THROTTLE once", *(f"then fine {i}" for i in range(5))]
    with sandbox(faults) as sb:
        async with a_run(tmp_path, sb, prompts, submit_rate=1000) as rt:
            assert await submit_row(rt, "r0") == State.SUBMITTED
            assert rt.gate.rate < 1000
            for i in range(1, 6):
                assert await submit_row(rt, f"r{i}") == State.SUBMITTED
            assert rt.gate.rate == pytest.approx(1000)


async def test_gate_halves_then_adds_back_a_fixed_step_up_to_the_configured_rate() -> None:
    """AIMD: each 429 halves the rate, each submission adds a tenth back, never past the cap."""
    gate = SubmitGate(rate=10)
    gate.throttled(0)
    gate.throttled(0)
    assert gate.rate == pytest.approx(2.5)
    rates = []
    for _ in range(10):
        gate.submitted()
        rates.append(gate.rate)
    assert rates == pytest.approx([3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10, 10, 10])


async def test_gate_waits_out_a_short_hint_on_its_clock_and_refuses_a_long_one() -> None:
    """A hint up to max_pause_s pauses everyone (on the injected clock); a longer one closes."""
    now = [1000.0]
    gate = SubmitGate(rate=10, clock=lambda: now[0])
    assert gate.throttled(30) == 30
    assert gate.throttled_out is None
    with pytest.raises(TimeoutError):  # 30 s of pause left on the gate's clock
        await asyncio.wait_for(gate.wait_turn(), timeout=0.2)
    now[0] = 1031.0
    await asyncio.wait_for(gate.wait_turn(), timeout=5)
    gate.throttled(MAX_PAUSE_S + 1)
    assert gate.throttled_out is not None and "run again after" in gate.throttled_out
    await asyncio.wait_for(gate.wait_turn(), timeout=5)  # no hour-long pause was taken


# --- the guard ------------------------------------------------------------------------------


def test_the_task_around_paid_posts_has_no_prefect_retries_and_no_cache() -> None:
    """A retried or cached submit could pay twice or skip a POST: neither may ever be added."""
    from prefect.cache_policies import NO_CACHE

    assert chunk_task.retries == 0
    assert chunk_task.retry_condition_fn is None
    assert not chunk_task.retry_delay_seconds
    assert chunk_task.cache_policy is NO_CACHE
    assert chunk_task.cache_expiration is None
    assert not chunk_task.refresh_cache
