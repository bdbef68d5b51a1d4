"""The built-in sandbox speeds up polling only where the user chose no pace: a value given as
a flag or a VIDEOBATCH_ variable is kept (a pinned, fixed schedule), even 8 s, the old
default."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from clikit import Cli, clip_rows, results, write_manifest
from typer.testing import CliRunner

from videobatch import cli as cli_module
from videobatch import console


def _flow_run_options(out: str, since: float) -> dict[str, Any]:
    """The `options` parameter the Prefect API recorded for the flow run into `out`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

    after = datetime.fromtimestamp(since, tz=UTC)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=after)),
            limit=200,
        )
    found = [r.parameters["options"] for r in runs if r.parameters["options"]["out"] == out]
    assert len(found) == 1, f"expected one flow run into {out}, found {len(found)}"
    return dict(found[0])


@pytest.mark.slow
def test_an_explicit_poll_interval_equal_to_the_default_is_kept_in_sandbox_mode(
    cli: Cli,
) -> None:
    """`--poll-interval 8` with the built-in sandbox reaches the flow run as 8, not the
    sandbox's 1 s pace."""
    manifest = write_manifest(cli.cwd / "clips.csv", clip_rows(1, "paced"))
    out = cli.cwd / "out"
    since = time.time()

    done = cli.run("run", manifest, "--out", out, "--no-report", "--poll-interval", "8", sb=None)

    assert done.code == 0, done
    assert "SANDBOX" in done.stdout, done
    options = _flow_run_options(str(out), since)
    assert options["poll_interval"] == 8.0
    assert options["base_url"] and options["base_url"].startswith("http://127.0.0.1:")
    # A 7-12 s sandbox task polled every 8 s is seen finished by the third query at the latest.
    assert results(out)["paced-0"]["polls"] <= 3


def _effective_options(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str
) -> dict[str, Any]:
    """What the built-in sandbox makes of the options `run` builds from these flags and env."""
    for name in ("APIMART_API_KEY", "APIMART_BASE_URL", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    for var in [v for v in os.environ if v.startswith("VIDEOBATCH_")]:
        monkeypatch.delenv(var)
    seen: dict[str, Any] = {}

    def run_in_sandbox(options: Any, *, sandbox: bool) -> int:
        with console._sandbox_if_needed(options, sandbox) as (effective, emulated):
            seen.update(effective.model_dump(), emulated=emulated)
        return 0

    monkeypatch.setattr(console, "run", run_in_sandbox)
    result = CliRunner().invoke(cli_module.app, ["run", "m.csv", *args], env=env)
    assert result.exit_code == 0, result.output
    return seen


def test_a_pace_set_through_the_environment_is_kept_and_an_unset_one_is_sped_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """VIDEOBATCH_POLL_INTERVAL=8 (the old default's value) is kept in sandbox mode; the initial
    delay nobody set takes the sandbox's pace."""
    seen = _effective_options(monkeypatch, {"VIDEOBATCH_POLL_INTERVAL": "8"})
    assert seen["emulated"]
    assert seen["poll_interval"] == 8.0
    assert seen["poll_initial_delay"] == console.SANDBOX_POLL_S

    flagged = _effective_options(monkeypatch, {}, "--poll-initial-delay", "8")
    assert flagged["poll_initial_delay"] == 8.0
    assert flagged["poll_interval"] == console.SANDBOX_POLL_S
