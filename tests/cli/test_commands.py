"""The other commands and the command line's surface: validate, dry runs, status during a run,
the sandbox server, help texts, the sandbox warning. The options of `run` and their
environment variables: test_options_cli.py."""

from __future__ import annotations

import io
import os
import re
import time

import av
import httpx
import pytest
from clikit import (
    DEMO,
    INVALID,
    Cli,
    Done,
    MakeSandbox,
    assert_no_canary_in_files,
    assert_videos_intact,
    clip_rows,
    counters,
    free_port,
    no_calls,
    statuses,
    wait_for_ledger,
    write_manifest,
)
from typer.testing import CliRunner

from apimart import spec
from videobatch import cli as cli_module
from videobatch import console

# What data/manifests/invalid.csv breaks, row by row (rows numbered from 1).
INVALID_ROWS = {
    2: ("five-seconds", "duration"),
    3: ("too-sharp", "resolution"),
    4: ("two-images", "image_urls"),
    5: ("no-prompt", "prompt"),
    6: ("ok-first", "id"),
    7: ("bad id!", "id"),
}


def _assert_reports_invalid_manifest(done: Done) -> None:
    problems = [line for line in done.stdout.splitlines() if re.match(r"✗ row \d+ ", line)]
    found = {}
    for line in problems:
        match = re.match(r"✗ row (\d+) \(id '(.*?)'\): (\w+): ", line)
        assert match, line
        found[int(match[1])] = (match[2], match[3])
    assert found == INVALID_ROWS, done
    assert len(problems) == len(INVALID_ROWS), done
    cost = spec.estimate_cost("720p", 6)
    assert "7 rows: 1 valid, 6 invalid." in done.stdout, done
    assert f"1 video, estimated cost {cost:.2f}" in done.stdout, done
    assert "Nothing was sent." in done.stdout
    assert done.code == 1, done


def test_validate_prints_every_problem_and_sends_nothing(
    cli: Cli, make_sandbox: MakeSandbox
) -> None:
    """validate names every broken row by row, column and rule, exits 1 and sends nothing;
    an unreadable manifest exits 2."""
    sb = make_sandbox()
    done = cli.run("validate", INVALID, sb=sb)
    _assert_reports_invalid_manifest(done)
    assert no_calls(counters(sb))

    missing = cli.run("validate", cli.cwd / "missing.csv")
    assert missing.code == 2, missing
    assert "cannot read the manifest" in missing.stderr, missing


@pytest.mark.parametrize("how", ["flag", "env"])
def test_dry_run_prints_every_problem_and_sends_nothing(
    cli: Cli, make_sandbox: MakeSandbox, how: str
) -> None:
    """--dry-run (or VIDEOBATCH_DRY_RUN) reports every broken row and sends and writes nothing."""
    sb = make_sandbox()
    out = cli.cwd / "out"
    if how == "flag":
        done = cli.run("run", INVALID, "--out", out, "--dry-run", sb=sb)
    else:
        done = cli.run("run", INVALID, "--out", out, sb=sb, env={"VIDEOBATCH_DRY_RUN": "1"})
    _assert_reports_invalid_manifest(done)
    assert no_calls(counters(sb))
    assert not out.exists(), "a dry run writes nothing"


def test_dry_run_of_a_valid_manifest_exits_0(cli: Cli, make_sandbox: MakeSandbox) -> None:
    """A dry run of a valid manifest exits 0 with its estimate at the concurrency given."""
    sb = make_sandbox()
    done = cli.run("run", DEMO, "--dry-run", "--concurrency", "4", sb=sb)
    assert done.code == 0, done
    assert "8 rows: 8 valid, 0 invalid. 8 videos" in done.stdout, done
    assert "at concurrency 4" in done.stdout
    assert no_calls(counters(sb))


@pytest.mark.slow
def test_status_while_a_run_is_going_and_after(cli: Cli, make_sandbox: MakeSandbox) -> None:
    """`status` shows a run's submitted rows while the sandbox holds them, then the downloads."""
    sb = make_sandbox(time_scale=0.015)
    # The sandbox holds every task at `processing` until released: the run stays "going" for
    # as long as `status` takes to start, however loaded the machine is.
    sb.config.faults.hold_tasks = True
    manifest = write_manifest(cli.cwd / "clips.csv", clip_rows(2, "watched"))
    out = cli.cwd / "out"
    running = cli.start("run", manifest, "--out", out, "--no-report", sb=sb)
    wait_for_ledger(out, running, lambda c: c.get("submitted", 0) == 2, what="two submitted rows")

    during = cli.run("status", out)
    sb.config.faults.hold_tasks = False

    assert during.code == 0, during
    assert re.search(r"submitted\s*│\s*2\b", during.stdout), during
    assert f"last run: pid {running.pid}" in during.stdout, during
    finished = running.wait()
    assert finished.code == 0, finished

    after = cli.run("status", out)
    assert after.code == 0, after
    assert re.search(r"downloaded\s*│\s*2\b", after.stdout), after
    assert "0 rows with an unknown POST outcome" in after.stdout


# --- help -----------------------------------------------------------------------------------


def _commands() -> list[str]:
    commands = cli_module.app.registered_commands
    return [c.name or (c.callback.__name__ if c.callback else "") for c in commands]


def test_help_lists_every_command() -> None:
    """The command line has exactly the documented commands."""
    assert sorted(_commands()) == sorted(
        ["run", "validate", "status", "results", "report", "sandbox", "deploy", "server"]
    )


@pytest.mark.parametrize("command", ["", *_commands()])
def test_every_help_ends_with_an_example(command: str) -> None:
    """`videobatch [COMMAND] --help` ends with a paragraph `Example: videobatch COMMAND ...`."""
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(cli_module.app, args, prog_name="videobatch")
    assert result.exit_code == 0, result.output
    paragraphs = [p for p in re.split(r"\n\s*\n", result.output) if p.strip()]
    last = " ".join(line.strip() for line in paragraphs[-1].splitlines())
    assert last.startswith("Example: "), f"help of {command or 'videobatch'} ends with {last!r}"
    assert f"videobatch {command}".strip() in last, last


def test_help_of_the_installed_command(cli: Cli) -> None:
    """`videobatch --help` as a real process (the entry point, not typer's runner) names every
    command and ends with its example."""
    done = cli.run("--help", timeout=60)
    assert done.code == 0, done
    for command in _commands():
        assert command in done.stdout, command
    assert "Example: videobatch run" in " ".join(done.stdout.split()), done


# --- the sandbox server ---------------------------------------------------------------------


@pytest.mark.slow
def test_sandbox_command_serves_real_mp4s(cli: Cli) -> None:
    """`videobatch sandbox` serves the API: a task completes, its video is an MP4 PyAV decodes."""
    port = free_port()
    server = cli.start("sandbox", "--port", str(port), "--time-scale", "0.001")
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer sk-sandbox"}
    with httpx.Client(base_url=base, timeout=10) as http:
        deadline = time.monotonic() + 30
        while True:
            try:
                http.get("/v1/tasks/none", headers=headers)
                break
            except httpx.TransportError:
                assert server.alive(), server.wait()
                assert time.monotonic() < deadline, "the sandbox did not start in 30 s"
                time.sleep(0.1)
        submitted = http.post(
            "/v1/videos/generations",
            headers=headers,
            json={
                "model": spec.MODEL,
                "prompt": "sandbox-command: a paper boat on a puddle",
                "duration": 4,
                "resolution": "720p",
            },
        )
        assert submitted.status_code == 200, submitted.text
        data = submitted.json()["data"]
        item = data[0] if isinstance(data, list) else data
        task_id = item.get("task_id") or item.get("id")
        deadline = time.monotonic() + 30
        while True:
            task = http.get(f"/v1/tasks/{task_id}", headers=headers).json()["data"]
            if task["status"] == "completed":
                break
            assert task["status"] not in ("failed", "cancelled"), task
            assert time.monotonic() < deadline, task
            time.sleep(0.2)
        url = task["result"]["videos"][0]["url"]
        url = url[0] if isinstance(url, list) else url
        video = httpx.get(url, timeout=30)
    assert video.status_code == 200
    assert video.content[4:8] == b"ftyp", "not an MP4"
    with av.open(io.BytesIO(video.content)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (1280, 720)
        assert sum(1 for _ in container.decode(stream)) > 0

    stopped = server.interrupt()
    assert stopped.code == 0, stopped
    assert "sandbox stopped" in stopped.stderr, stopped
    # Access logs are off: the signed download link is a credential.
    assert url.split("?")[-1] not in stopped.output


# --- no key and no endpoint: the built-in sandbox, loudly -----------------------------------


@pytest.mark.slow
def test_run_without_key_or_endpoint_uses_the_sandbox_and_says_so(cli: Cli) -> None:
    """With no key and no endpoint, run uses the built-in sandbox and says so, on stderr first
    and on stdout."""
    manifest = write_manifest(cli.cwd / "clips.csv", clip_rows(1, "offline"))
    out = cli.cwd / "out"
    done = cli.run("run", manifest, "--out", out, "--no-report", sb=None)
    assert done.code == 0, done
    assert "SANDBOX" in done.stdout, done
    assert "nothing is paid" in done.stdout, done
    assert "SANDBOX" in done.stderr, "the warning comes first, before any progress"
    assert set(statuses(out).values()) == {"completed"}
    assert_videos_intact(out)
    assert_no_canary_in_files(out)


def test_sandbox_rejects_bad_faults(cli: Cli) -> None:
    """An unknown sandbox fault stops `videobatch sandbox` with exit 2 naming the fault."""
    done = cli.run("sandbox", "--port", str(free_port()), "--faults", '{"no_such_fault": 1}')
    assert done.code == 2, done
    assert "bad sandbox options" in done.stderr and "no_such_fault" in done.stderr, done


def test_built_in_sandbox_keeps_a_chosen_poll_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in sandbox speeds up only the polling pace nobody chose, and puts the key back."""
    from tasks.run.options import RunOptions

    monkeypatch.delenv("APIMART_API_KEY", raising=False)
    monkeypatch.delenv("APIMART_BASE_URL", raising=False)
    chosen = RunOptions(manifest="m.csv", poll_interval=0.2)
    with console._sandbox_if_needed(chosen, forced=False) as (effective, emulated):
        assert emulated
        assert effective.base_url and effective.base_url.startswith("http://127.0.0.1:")
        assert effective.poll_interval == 0.2, "an explicit pace is the user's choice"
        assert effective.poll_initial_delay == console.SANDBOX_POLL_S
        assert os.environ["APIMART_API_KEY"] == "sk-sandbox-local"
    assert "APIMART_API_KEY" not in os.environ
