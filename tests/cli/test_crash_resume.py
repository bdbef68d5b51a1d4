"""`kill -9` a running `videobatch run`, then run the same command again.

The kill moment is chosen by watching the ledger read-only from this process. After each kill
the sandbox's counters prove what was paid: a row is never paid twice, a row whose POST was
under way when the process died (`unknown`) is held until `--resubmit-unknown` (which reuses
its idempotency key), and every paid video ends up on disk, whole and decodable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from clikit import (
    Cli,
    MakeSandbox,
    assert_no_canary_in_files,
    assert_videos_intact,
    clip_rows,
    counters,
    ledger_rows,
    results,
    settled_counters,
    statuses,
    wait_for_ledger,
    write_manifest,
)

from apimart.sandbox import FaultRule, Faults
from tasks.store.ledger import DOUBTFUL, WITH_TASK

pytestmark = pytest.mark.slow

ROWS = 6
CONCURRENCY = "3"
Counts = dict[str, int]


def _busy(counts: Counts, *states: str) -> int:
    return sum(counts.get(s, 0) for s in states)


@dataclass
class KillPoint:
    """When to kill, and how the sandbox behaves until then."""

    until: Callable[[Counts], bool]
    what: str
    time_scale: float
    # And, beside the ledger, something to see in the output folder first.
    on_disk: Callable[[Path], bool] | None = None
    faults: dict[str, Any] = field(default_factory=dict)
    # Some row is certainly left with an unknown POST outcome.
    leaves_unknown: bool = False
    # Some row certainly has a task whose video is not on disk yet.
    leaves_paid_undownloaded: bool = False


KILL_POINTS = {
    # Every first POST is answered 20 s late (the task is created at once): the process dies
    # while POSTs are under way, so those rows' outcome is unknown.
    "first-post-in-flight": KillPoint(
        until=lambda c: _busy(c, "intent", "submitted") >= 1,
        what="a row in intent",
        time_scale=0.01,
        faults={
            "submit_late_after_create": FaultRule(rate=1.0, times=1),
            "late_s": 20.0,
        },
        leaves_unknown=True,
    ),
    "submitted-none-downloaded": KillPoint(
        until=lambda c: (
            c.get("submitted", 0) >= 2
            and _busy(c, "completed", "downloaded", "download_failed") == 0
        ),
        what="two rows submitted and none downloaded",
        time_scale=0.02,
        leaves_paid_undownloaded=True,
    ),
    "after-first-download": KillPoint(
        until=lambda c: c.get("downloaded", 0) >= 1,
        what="the first downloaded row",
        time_scale=0.01,
        leaves_paid_undownloaded=True,
    ),
    # Downloads trickle: the process dies while a paid video is half on disk.
    "mid-download": KillPoint(
        until=lambda c: c.get("completed", 0) >= 1,
        on_disk=lambda out: any((out / "videos").glob(".*.part")),
        what="a row completed and half downloaded",
        time_scale=0.005,
        faults={"trickle_bytes_per_s": 25_000},
        leaves_paid_undownloaded=True,
    ),
}


def _prompts(manifest_rows: list[dict[str, Any]]) -> dict[str, str]:
    return {r["id"]: r["prompt"] for r in manifest_rows}


@pytest.mark.parametrize("point", list(KILL_POINTS), ids=list(KILL_POINTS))
def test_kill_9_then_rerun_never_pays_twice_nor_loses_a_video(
    cli: Cli, make_sandbox: MakeSandbox, point: str
) -> None:
    """A kill -9 at each point, then reruns: no row paid twice, unknown rows held, no video lost."""
    kp = KILL_POINTS[point]
    sb = make_sandbox(time_scale=kp.time_scale, faults=Faults(**kp.faults))
    rows = clip_rows(ROWS, point)
    prompt_of = _prompts(rows)
    manifest = write_manifest(cli.cwd / "clips.csv", rows)
    out = cli.cwd / "out"
    command = ("run", manifest, "--out", out, "--concurrency", CONCURRENCY, "--no-report")

    # 1. Start, watch the ledger, kill -9 at the chosen moment.
    running = cli.start(*command, sb=sb)
    wait_for_ledger(out, running, kp.until, on_disk=kp.on_disk, what=kp.what)
    killed = running.kill9()
    assert killed.code == -9, killed
    at_kill = ledger_rows(out)
    paid_at_kill = settled_counters(sb)
    by_prompt = paid_at_kill["tasks_created_by_prompt"]
    assert all(n == 1 for n in by_prompt.values()), f"paid twice before the kill: {by_prompt}"
    doubtful = sorted(r for r, rec in at_kill.items() if rec.state in DOUBTFUL)
    with_task = {r: rec.task_id for r, rec in at_kill.items() if rec.state in WITH_TASK}
    assert all(with_task.values())
    if kp.leaves_unknown:
        assert doubtful, f"no row was mid-POST at the kill: {_states(at_kill)}"
    if kp.leaves_paid_undownloaded:
        assert any(at_kill[r].state != "downloaded" for r in with_task), _states(at_kill)
    # Faults only shaped the killed run; the resumed runs see a plain API, and fast (tasks
    # created before the kill keep their latency).
    sb.config.faults = Faults()
    sb.config.time_scale = 0.004

    # 2. The same command again: everything finishes except rows whose POST outcome is unknown.
    rerun = cli.run(*command, sb=sb)
    after_rerun = counters(sb)
    final = statuses(out)
    assert {r: s for r, s in final.items() if s != "completed"} == dict.fromkeys(
        doubtful, "unknown"
    ), rerun
    assert rerun.code == (1 if doubtful else 0), rerun
    for row_id in doubtful:
        assert after_rerun["tasks_created_by_prompt"].get(prompt_of[row_id], 0) == by_prompt.get(
            prompt_of[row_id], 0
        ), f"{row_id}: an unknown row was sent again without --resubmit-unknown"
    _assert_each_sent_row_paid_once(after_rerun, rows, skip=doubtful)
    # Tasks known at the kill were polled and downloaded, not bought again.
    table = results(out)
    for row_id, task_id in with_task.items():
        assert table[row_id]["task_id"] == task_id, row_id
    assert_videos_intact(out, [r for r in final if r not in doubtful])

    if doubtful:
        # `status` names the rows that need a decision.
        status = cli.run("status", out)
        assert status.code == 0, status
        assert f"{len(doubtful)} rows with an unknown POST outcome" in status.stdout, status
        assert re.search(rf"unknown\s*│\s*{len(doubtful)}\b", status.stdout), status

        # 3. --resubmit-unknown, against an API that deduplicates on Idempotency-Key.
        keys = {r: at_kill[r].idempotency_key for r in doubtful}
        assert all(keys.values())
        sb.config.honour_idempotency_key = True
        resubmit = cli.run(*command, "--resubmit-unknown", sb=sb)
        assert resubmit.code == 0, resubmit
        after_resubmit = counters(sb)
        ledger = ledger_rows(out)
        for row_id, key in keys.items():
            assert ledger[row_id].idempotency_key == key, f"{row_id}: a new key was used"
            assert after_resubmit["tasks_created_by_key"].get(key, 0) <= 1, row_id
        _assert_each_sent_row_paid_once(after_resubmit, rows, skip=[])

    # 4. Every row completed, every video whole, no key written anywhere.
    assert set(statuses(out).values()) == {"completed"}
    assert_videos_intact(out)
    assert_no_canary_in_files(out)

    if point == "first-post-in-flight":
        # 5. A finished folder costs nothing, however it got there.
        before = counters(sb)
        last = cli.run(*command, sb=sb)
        assert last.code == 0, last
        assert counters(sb) == before

    # A download killed mid-way leaves `.ID.mp4.part`; the rerun's download of that video
    # reuses the name and renames it into place, so nothing partial is left behind.
    leftovers = sorted(p.name for p in (out / "videos").glob(".*.part"))
    assert leftovers == [], leftovers


def _assert_each_sent_row_paid_once(
    snapshot: dict[str, Any], rows: list[dict[str, Any]], *, skip: list[str]
) -> None:
    by_prompt = snapshot["tasks_created_by_prompt"]
    paid = {r["id"]: by_prompt.get(r["prompt"], 0) for r in rows if r["id"] not in skip}
    assert set(paid.values()) == {1}, f"tasks per row: {paid}"
    assert all(n == 1 for n in snapshot["tasks_created_by_key"].values())


def _states(records: dict[str, Any]) -> dict[str, str]:
    return {r: rec.state for r, rec in records.items()}


def test_ctrl_c_says_how_to_resume_and_the_rerun_finishes(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """Ctrl-C exits 130 saying how to resume, writes results so far; the rerun finishes."""
    sb = make_sandbox(time_scale=0.01)
    rows = clip_rows(5, "ctrl-c")
    manifest = write_manifest(cli.cwd / "clips.csv", rows)
    out = cli.cwd / "out"
    command = ("run", manifest, "--out", out, "--concurrency", "3", "--no-report")
    running = cli.start(*command, sb=sb)
    wait_for_ledger(
        out,
        running,
        lambda c: c.get("submitted", 0) >= 3 and c.get("intent", 0) == 0,
        what="three rows submitted and no POST under way",
    )

    stopped = running.interrupt()

    assert stopped.code == 130, stopped
    assert "Run the same command again to resume" in stopped.stderr, stopped
    at_stop = ledger_rows(out)
    with_task = {r: rec.task_id for r, rec in at_stop.items() if rec.state in WITH_TASK}
    doubtful = sorted(r for r, rec in at_stop.items() if rec.state in DOUBTFUL)
    assert len(with_task) >= 3, _states(at_stop)
    if doubtful:
        assert f"{len(doubtful)} rows were cut off mid-POST" in stopped.stderr, stopped
    # The results so far are written from the ledger, task ids included.
    so_far = results(out)
    assert set(so_far) == {r["id"] for r in rows}
    assert all(so_far[r]["task_id"] == t for r, t in with_task.items())

    sb.config.time_scale = 0.004
    again = cli.run(*command, sb=sb)
    assert again.code == (1 if doubtful else 0), again
    final = statuses(out)
    assert {r: s for r, s in final.items() if s != "completed"} == dict.fromkeys(
        doubtful, "unknown"
    ), again
    _assert_each_sent_row_paid_once(counters(sb), rows, skip=doubtful)
    table = results(out)
    assert all(table[r]["task_id"] == t for r, t in with_task.items())
    assert_videos_intact(out, [r for r in final if r not in doubtful])
