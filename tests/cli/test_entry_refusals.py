"""What the commands refuse, through the real command line: a folder of the other layout, a
key that cannot be sent, and a results table that would pair a new prompt with an old task."""

from __future__ import annotations

from pathlib import Path

import pytest
from clikit import (
    Cli,
    MakeSandbox,
    clip_rows,
    counters,
    no_calls,
    results,
    write_manifest,
)

pytestmark = pytest.mark.slow


def _sharded_folder(out: Path) -> Path:
    (out / "shards" / "shard-0").mkdir(parents=True)
    (out / "shards.json").write_text("{}", encoding="utf-8")
    return out


def test_a_plain_run_into_a_sharded_folder_exits_2_and_sends_nothing(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """`videobatch run --out OUT` where OUT holds shards.json and shards/ is refused with exit
    2 and a message, before any request and before OUT/ledger.sqlite exists."""
    sb = make_sandbox()
    manifest = write_manifest(cli.cwd / "clips.csv", clip_rows(2, "sharded"))
    out = _sharded_folder(cli.cwd / "out")

    done = cli.run("run", manifest, "--out", out, sb=sb)

    assert done.code == 2, done
    assert "holds a sharded run" in done.stderr and "Nothing was sent" in done.stderr, done
    assert "Traceback" not in done.output, done
    assert no_calls(counters(sb))
    assert not (out / "ledger.sqlite").exists()
    assert sorted(p.name for p in out.iterdir()) == ["shards", "shards.json"]


@pytest.mark.parametrize("command", ["status", "results", "report"])
def test_read_commands_refuse_a_folder_holding_both_layouts(cli: Cli, command: str) -> None:
    """status, results and report refuse (exit 2, saying why) a folder holding both a plain
    ledger and a sharded run, rather than show half of what it spent."""
    out = _sharded_folder(cli.cwd / "both")
    (out / "ledger.sqlite").write_bytes(b"")

    done = cli.run(command, out)

    assert done.code == 2, done
    assert "holds both a plain run" in done.stderr, done
    assert "Traceback" not in done.output, done


def test_a_key_that_cannot_be_sent_exits_2_and_leaks_no_part_of_it(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """APIMART_API_KEY holding a line break stops `run` with exit 2 and a message naming the
    rule; no request is made and no part of the key is printed or written."""
    sb = make_sandbox()
    manifest = write_manifest(cli.cwd / "clips.csv", clip_rows(2, "badkey"))
    out = cli.cwd / "out"

    done = cli.run("run", manifest, "--out", out, sb=sb, key="sk-a\nsk-SECRET")

    assert done.code == 2, done
    assert "cannot be sent in an HTTP header" in done.stderr, done
    assert "Traceback" not in done.output, done
    assert no_calls(counters(sb)) and counters(sb)["queries_by_task"] == {}
    for part in ("sk-SECRET", "sk-a\\nsk-SECRET", "sk-a\nsk-SECRET"):
        assert part not in done.stdout and part not in done.stderr, part
    assert not (out / "ledger.sqlite").exists()
    for path in out.rglob("*") if out.exists() else ():
        if path.is_file():
            assert b"sk-SECRET" not in path.read_bytes(), path


def test_results_refuses_to_label_an_old_video_with_a_changed_prompt(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """`videobatch results` after a paid row's prompt changed exits 2 naming the row, and
    leaves the results the run wrote as they were."""
    sb = make_sandbox()
    rows = clip_rows(2, "label")
    manifest = write_manifest(cli.cwd / "clips.csv", rows)
    out = cli.cwd / "out"
    first = cli.run("run", manifest, "--out", out, "--no-report", sb=sb)
    assert first.code == 0, first
    parquet = (out / "results.parquet").read_bytes()

    rows[1]["prompt"] = "label-1: a completely different scene of a blue kite"
    write_manifest(manifest, rows)
    done = cli.run("results", out)

    assert done.code == 2, done
    assert "label-1: the row changed since it was sent" in done.stderr, done
    assert "label-0:" not in done.stderr, "an unchanged row is not a conflict"
    assert "give the changed row a new id, or restore it" in done.stderr, done
    assert (out / "results.parquet").read_bytes() == parquet, "nothing may be rewritten"
    assert results(out)["label-1"]["prompt"] == clip_rows(2, "label")[1]["prompt"]
