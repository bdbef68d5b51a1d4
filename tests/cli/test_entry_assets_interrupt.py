"""`--assets DIR` on run, validate and the results rebuilt later; and the results a Ctrl-C
writes over an edited manifest, which hold a changed paid row just as a finished run does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from clikit import (
    DATA,
    Cli,
    MakeSandbox,
    assert_videos_intact,
    clip_rows,
    counters,
    results,
    statuses,
    wait_for_ledger,
    write_manifest,
)

pytestmark = pytest.mark.slow

PNG = DATA / "manifests" / "images" / "sunrise.png"


def test_images_from_an_assets_folder_are_valid_only_with_assets(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """An image outside the manifest's folder is refused by validate unless --assets names
    its folder; run --assets sends it, and `results` later rebuilds the same table."""
    sb = make_sandbox()
    assets = cli.cwd / "shared-assets"
    assets.mkdir()
    shutil.copy(PNG, assets / "frame.png")
    row = {
        "id": "framed",
        "prompt": "framed: the sun rises over hills",
        "duration": 4,
        "image_urls": "../shared-assets/frame.png",
    }
    manifest = write_manifest(cli.cwd / "manifests" / "m.csv", [row])

    refused = cli.run("validate", manifest, sb=sb)
    assert refused.code == 1, refused
    assert "framed" in refused.stdout and "image_urls" in refused.stdout, refused
    accepted = cli.run("validate", manifest, "--assets", assets, sb=sb)
    assert accepted.code == 0, accepted
    assert "1 valid, 0 invalid" in accepted.stdout, accepted

    out = cli.cwd / "out"
    done = cli.run("run", manifest, "--out", out, "--no-report", "--assets", assets, sb=sb)
    assert done.code == 0, done
    assert results(out)["framed"]["image_count"] == 1
    assert counters(sb)["tasks_created"] == 1
    assert_videos_intact(out)

    before = (out / "results.parquet").read_bytes()
    (out / "results.parquet").unlink()
    rebuilt = cli.run("results", out, sb=sb)
    assert rebuilt.code == 0, rebuilt
    assert statuses(out) == {"framed": "completed"}
    assert results(out)["framed"]["image_count"] == 1
    assert (out / "results.parquet").stat().st_size == len(before)


def test_ctrl_c_over_an_edited_manifest_writes_the_held_row_as_a_conflict(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """Results written on Ctrl-C mark a paid row whose prompt changed as `conflict`, with no
    video under its new prompt, exactly as a finished run would."""
    sb = make_sandbox()
    rows = clip_rows(2, "cut")
    manifest = write_manifest(cli.cwd / "clips.csv", rows)
    out = cli.cwd / "out"
    assert cli.run("run", manifest, "--out", out, "--no-report", sb=sb).code == 0
    paid = results(out)

    rows[1]["prompt"] = "cut-1: an owl blinks on a branch at night"
    rows.append({"id": "cut-new", "prompt": "cut-new: waves on a pebble shore", "duration": 4})
    write_manifest(manifest, rows)
    # The new row's task is held at `processing` until released: the run is still going.
    sb.config.faults.hold_tasks = True
    running = cli.start("run", manifest, "--out", out, "--no-report", sb=sb)
    wait_for_ledger(out, running, lambda c: c.get("submitted", 0) == 1, what="cut-new submitted")

    stopped = running.interrupt()
    sb.config.faults.hold_tasks = False

    assert stopped.code == 130, stopped
    table = results(out)
    assert table["cut-0"]["status"] == "completed"
    held = table["cut-1"]
    assert held["status"] == "conflict", held
    assert held["prompt"] == rows[1]["prompt"] and held["video_path"] is None
    assert held["task_id"] == paid["cut-1"]["task_id"]
    assert table["cut-new"]["task_id"] and table["cut-new"]["status"] == "timeout"
    assert Path(out / "videos" / "cut-1.mp4").is_file(), "the paid video stays on disk"
