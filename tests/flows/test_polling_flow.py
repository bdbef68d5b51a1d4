"""The run's one poll scheduler in the real `generate-videos` flow: real Prefect API, sandbox
over real HTTP. Runs that must stay "still going" are held with the sandbox's `hold_tasks`
fault and released by the test; nothing here waits on a task finishing by chance."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flowkit import fast_options, write_manifest

from apimart.sandbox import Faults
from flows.generate import generate_videos
from tasks.present.artifacts import artifact_key, eta_text
from tasks.run.duration import DurationModel
from tasks.run.gate import RunStopped
from tasks.run.options import RunOptions
from tasks.store.ledger import Ledger, State

MakeSandbox = Any

pytestmark = [pytest.mark.usefixtures("prefect_api")]


def rows(n: int, prefix: str) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i}", "prompt": f"{prefix} polling clip {i}"} for i in range(n)]


async def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    """Wait for `condition` (checked every 10 ms); the monotonic time it was first seen."""
    ends = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > ends:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


def queries(sb: Any) -> int:
    return sum(sb.state.stats()["queries_by_task"].values())


async def progress_description(out: Path) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{artifact_key(str(out))}-progress"])
            )
        )
    assert found, "no progress artifact"
    return str(found[-1].description)


async def test_a_held_run_keeps_the_global_query_cap_and_shows_the_models_eta(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """Ten rows polled every 0.05 s share one cap of 5 queries/s (not 200/s); the progress
    artifact shows the duration model's ETA; each row's `polls` is what the API answered."""
    n, rate = 10, 5.0
    sb = make_sandbox(Faults(hold_tasks=True))
    out = tmp_path / "out"
    options = fast_options(
        write_manifest(tmp_path / "m.csv", rows(n, "capped")),
        out,
        sb.url,
        concurrency=n,
        poll_interval=0.05,
        poll_initial_delay=0.05,
        max_queries_per_s=rate,
        poll_duration_low=40,
        poll_duration_high=80,
    )
    run = asyncio.create_task(generate_videos(options=options))
    try:
        first = await until(lambda: queries(sb) >= 1, "the first query")
        later = await until(lambda: queries(sb) >= 11, "eleven queries")
        # Ten gaps of at least 1/rate each (seen up to 10 ms late at either end).
        assert later - first >= 10 / rate - 0.05
        await until(lambda: len(sb.state.stats()["queries_by_task"]) == n, "every row polled")
        spread = await until(lambda: queries(sb) >= 31, "thirty-one queries")
        assert spread - first >= 30 / rate - 0.05
        # Nothing in flight when the run started: the model's ETA for n rows at the cap.
        expected = DurationModel(low=40, high=80).eta(n, n)
        description = await progress_description(out)
        assert f"ETA {eta_text(expected)}" in description, description
    finally:
        sb.config.faults.hold_tasks = False
    outcome = await asyncio.wait_for(run, timeout=120)

    assert outcome["statuses"] == {"completed": n}
    by_task = sb.state.stats()["queries_by_task"]
    with Ledger(out, readonly=True) as ledger:
        records = ledger.all()
    for record in records.values():
        assert record.task_id is not None
        assert record.polls == by_task[record.task_id], record.row_id


async def test_what_one_run_learned_is_restored_by_the_next(
    make_sandbox: MakeSandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run stores the durations of its completed tasks in the ledger; the next run on the
    folder starts from them (its log says so) and adds its own."""
    sb = make_sandbox(time_scale=0.01)  # 1.8-3 s tasks: durations of whole seconds >= 1
    out = tmp_path / "out"
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, rows(3, "learn"))
    await generate_videos(options=fast_options(manifest, out, sb.url, concurrency=3))

    with Ledger(out, readonly=True) as ledger:
        stored = DurationModel.load(ledger.meta(DurationModel.META_KEY))
        spans = [r.api_completed - r.api_created for r in ledger.all().values()]  # type: ignore[operator]
    assert stored.observations == pytest.approx(3)
    assert sorted(stored.counts) == sorted({int(s // 2) for s in spans})

    write_manifest(manifest, [*rows(3, "learn"), *rows(2, "more")])
    caplog.clear()
    await generate_videos(options=fast_options(manifest, out, sb.url, concurrency=2))
    said = [r.getMessage() for r in caplog.records]
    assert any("learned from 3 tasks" in line for line in said), said
    with Ledger(out, readonly=True) as ledger:
        again = DurationModel.load(ledger.meta(DurationModel.META_KEY))
    assert again.observations == pytest.approx(5)


async def test_a_401_on_a_status_query_stops_the_run(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """Tasks submitted and held, then the key is refused on a query: the run stops saying
    401 and every row keeps its task id (still `submitted`) for the next run."""
    n = 3
    sb = make_sandbox(Faults(hold_tasks=True))
    out = tmp_path / "out"
    options = fast_options(
        write_manifest(tmp_path / "m.csv", rows(n, "refused")),
        out,
        sb.url,
        concurrency=n,
        max_queries_per_s=50,
    )
    run = asyncio.create_task(generate_videos(options=options))
    await until(lambda: len(sb.state.stats()["queries_by_task"]) == n, "every row polled")
    sb.config.api_key = "sk-another-key"  # every request from now on answers 401
    with pytest.raises(RunStopped, match="401"):
        await asyncio.wait_for(run, timeout=60)
    with Ledger(out, readonly=True) as ledger:
        records = ledger.all()
    assert all(r.task_id and r.state == State.SUBMITTED for r in records.values())


@pytest.mark.slow
async def test_adaptive_polling_makes_far_fewer_queries_than_a_fixed_8_s(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """At the default (adaptive) pace, tasks of 18-30 s (the vendor's 3-5 min at time scale
    0.1, with the prior scaled alike) cost about one query each, under half of what polling
    every 8 s would have made on the same tasks."""
    n = 6
    sb = make_sandbox(time_scale=0.1)
    out = tmp_path / "out"
    options = RunOptions(
        manifest=str(write_manifest(tmp_path / "m.csv", rows(n, "adaptive"))),
        out=str(out),
        base_url=sb.url,
        concurrency=n,
        submit_rate=200,
        report=False,
        poll_duration_low=18,
        poll_duration_high=30,
    )
    assert options.poll_interval is None and options.poll_initial_delay is None
    outcome = await generate_videos(options=options)

    assert outcome["statuses"] == {"completed": n}
    by_task = sb.state.stats()["queries_by_task"]
    with Ledger(out, readonly=True) as ledger:
        records = list(ledger.all().values())
    # Polling every 8 s from submission sees a task of d seconds at query ceil(d / 8).
    fixed_8 = sum(math.ceil((r.api_completed - r.api_created) / 8) for r in records)  # type: ignore[operator]
    adaptive = sum(by_task[r.task_id] for r in records if r.task_id)
    assert adaptive == sum(r.polls for r in records)
    assert adaptive <= 2 * n, by_task
    assert adaptive <= 0.5 * fixed_8, (adaptive, fixed_8)
