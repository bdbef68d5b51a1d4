"""Resuming over an edited manifest, through real runs: an unpaid row whose request changed is
a new request and is sent once; a paid row whose request changed is held and named while every
other row is polled, downloaded and sent; nothing is ever paid twice."""

from __future__ import annotations

from typing import Any

import pytest
from clikit import (
    Cli,
    MakeSandbox,
    assert_videos_intact,
    clip_rows,
    counters,
    ledger_rows,
    results,
    sha256,
    statuses,
    write_manifest,
)

from apimart.sandbox import FaultRule, Faults

pytestmark = pytest.mark.slow


def _new(before: dict[str, Any], after: dict[str, Any], name: str) -> dict[str, int]:
    """Per-key growth of one of the sandbox's per-task or per-prompt counters."""
    return {
        k: v - before[name].get(k, 0) for k, v in after[name].items() if v != before[name].get(k)
    }


@pytest.mark.parametrize("flag", [["--retry-failed"], []], ids=["retry-failed", "no-flag"])
def test_a_failed_row_with_a_fixed_prompt_is_sent_once_and_nothing_else_is_touched(
    cli: Cli, make_sandbox: MakeSandbox, flag: list[str]
) -> None:
    """A row whose task failed (cost 0) and whose prompt was then fixed is sent once, as a
    new attempt with a new idempotency key, while completed rows cost no request at all."""
    sb = make_sandbox(faults=Faults(task_fail=FaultRule(rate=1.0, prompt_contains="FAILME")))
    rows = [
        *clip_rows(2, "kept"),
        {"id": "fixme", "prompt": "FAILME: a broken prompt", "duration": 4},
    ]
    manifest = write_manifest(cli.cwd / "clips.csv", rows)
    out = cli.cwd / "out"
    first = cli.run("run", manifest, "--out", out, "--no-report", sb=sb)
    assert first.code == 1, first
    assert statuses(out) == {"kept-0": "completed", "kept-1": "completed", "fixme": "failed"}
    old = ledger_rows(out)["fixme"]
    kept_hashes = {r: sha256(out / "videos" / f"{r}.mp4") for r in ("kept-0", "kept-1")}
    before = counters(sb)

    rows[2]["prompt"] = "fixed: a paper boat drifts on a calm pond"
    write_manifest(manifest, rows)
    done = cli.run("run", manifest, "--out", out, "--no-report", *flag, sb=sb)

    assert done.code == 0, done
    after = counters(sb)
    assert after["submit_requests"] - before["submit_requests"] == 1, "sent exactly once"
    assert _new(before, after, "tasks_created_by_prompt") == {rows[2]["prompt"]: 1}
    kept_tasks = {results(out)[r]["task_id"] for r in ("kept-0", "kept-1")}
    assert not set(_new(before, after, "queries_by_task")) & kept_tasks
    assert not set(_new(before, after, "downloads_by_task")) & kept_tasks
    row = results(out)["fixme"]
    assert row["status"] == "completed" and row["attempt"] == old.attempt + 1
    assert row["prompt"] == rows[2]["prompt"] and row["task_id"] != old.task_id
    new = ledger_rows(out)["fixme"]
    assert new.idempotency_key and new.idempotency_key != old.idempotency_key
    assert _new(before, after, "tasks_created_by_key") == {new.idempotency_key: 1}
    assert_videos_intact(out)
    assert {r: sha256(out / "videos" / f"{r}.mp4") for r in kept_hashes} == kept_hashes


def test_a_completed_row_whose_prompt_changed_is_held_while_the_others_proceed(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """A paid row whose prompt changed is not sent, not relabelled and named with the fix,
    while an unchanged row is downloaded again and a new row is sent; exit 1."""
    sb = make_sandbox()
    rows = clip_rows(3, "row")
    manifest = write_manifest(cli.cwd / "clips.csv", rows)
    out = cli.cwd / "out"
    first = cli.run("run", manifest, "--out", out, "--no-report", sb=sb)
    assert first.code == 0, first
    paid = results(out)
    old_video = sha256(out / "videos" / "row-2.mp4")
    (out / "videos" / "row-1.mp4").unlink()  # an unchanged row that still needs work
    before = counters(sb)

    original = rows[2]["prompt"]
    rows[2]["prompt"] = "row-2: now a green kite over a beach"
    rows.append({"id": "row-new", "prompt": "row-new: a snail on a leaf", "duration": 4})
    write_manifest(manifest, rows)
    done = cli.run("run", manifest, "--out", out, "--no-report", sb=sb)

    assert done.code == 1, done
    assert "row-2: the row changed since it was sent" in done.stderr, done
    assert "give the changed row a new id, or restore it" in done.stderr, done
    assert "row-0:" not in done.stderr and "row-1:" not in done.stderr, done
    after = counters(sb)
    assert _new(before, after, "tasks_created_by_prompt") == {"row-new: a snail on a leaf": 1}
    assert after["submit_requests"] - before["submit_requests"] == 1
    assert paid["row-1"]["task_id"] in _new(before, after, "downloads_by_task")
    assert paid["row-2"]["task_id"] not in _new(before, after, "queries_by_task")
    assert paid["row-0"]["task_id"] not in _new(before, after, "downloads_by_task")
    table = results(out)
    assert {r: table[r]["status"] for r in table} == {
        "row-0": "completed",
        "row-1": "completed",
        "row-2": "conflict",
        "row-new": "completed",
    }
    held = table["row-2"]
    assert held["prompt"] == rows[2]["prompt"] and held["video_path"] is None
    assert held["task_id"] == paid["row-2"]["task_id"] and held["cost"] == paid["row-2"]["cost"]
    assert "give the changed row a new id, or restore it" in held["error_message"]
    assert sha256(out / "videos" / "row-2.mp4") == old_video, "a paid video is never touched"
    assert_videos_intact(out, ["row-0", "row-1", "row-new"])

    # Restored, the row is what was paid for again: no request, its video back in the table.
    rows[2]["prompt"] = original
    write_manifest(manifest, rows)
    again = counters(sb)
    restored = cli.run("run", manifest, "--out", out, "--no-report", sb=sb)
    assert restored.code == 0, restored
    assert counters(sb)["submit_requests"] == again["submit_requests"]
    assert results(out)["row-2"]["video_sha256"] == old_video
    assert_videos_intact(out)


def test_a_manifest_that_matches_none_of_the_paid_rows_is_refused_whole(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """When no paid row of OUT is still asked for unchanged, OUT belongs to another manifest:
    the run is refused with exit 2 and sends nothing, not even its new rows."""
    sb = make_sandbox()
    manifest = write_manifest(cli.cwd / "clips.csv", clip_rows(2, "old"))
    out = cli.cwd / "out"
    assert cli.run("run", manifest, "--out", out, "--no-report", sb=sb).code == 0
    before = counters(sb)

    other = write_manifest(cli.cwd / "other.csv", clip_rows(2, "other"))
    done = cli.run("run", other, "--out", out, "--no-report", sb=sb)

    assert done.code == 2, done
    assert "was run with another manifest" in done.stderr, done
    assert "old-0" in done.stderr and "Nothing was sent" in done.stderr, done
    assert "Traceback" not in done.output, done
    assert counters(sb) == before
    assert set(statuses(out)) == {"old-0", "old-1"}, "the folder's results stay its own"
