"""Helpers of the browser tests: a run against a real `prefect server start`, Chromium.

The server itself is tests/support/prefect_server.py's (this folder is a package, imported as
`browser.browserkit`, so tests/ is on the path). Every process started here is started in its
own session and stopped by its own process-group id, so nothing survives a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import ViewportSize
from support.files import tail as tail
from support.net import free_port as free_port
from support.prefect_server import PrefectServer as PrefectServer
from support.processes import clean_env, stop_group

from apimart.redact import secret_forms

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "manifests" / "demo.csv"
# One row of the demo fails on purpose, so the pages show a failure and a rate below 100 %.
FAILING_ROW = "paper-boat"
FAILING_PROMPT = "paper boat"
API_KEY = "sk-CANARY-browser-51d0c7e2"
# Every form the canary can take in text (raw, repr, JSON, percent-encoded, base64).
CANARY_FORMS = tuple(secret_forms(API_KEY))
# The run sends our loggers' DEBUG records to the Prefect API the pages show; the console (the
# run's log file) keeps WARNING.
DEBUG_LOGGING_ENV = {
    "PREFECT_LOGGING_LEVEL": "DEBUG",
    "PREFECT_LOGGING_ROOT_LEVEL": "DEBUG",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "apimart,videobatch",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def assert_no_canary_under(*paths: Path) -> None:
    """No file at or under `paths` (the run's log, its output folder) holds the key."""
    for root in paths:
        for path in [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]:
            data = path.read_bytes()
            for form in CANARY_FORMS:
                assert form.encode() not in data, f"the API key ({form!r}) is written in {path}"


# Debian's Chromium (`.ci/system-deps` installs it); never a downloaded browser.
CHROMIUM = os.environ.get("VIDEOBATCH_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 860}

RUN_TIMEOUT_S = 150.0


# The UI is what these tests look at: no promotions on it, and the last task runs and events
# on it within a second (batches are flushed every 5 s by default, and the page would wait).
UI_SERVER_SETTINGS = {
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "0.5",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
}


@dataclass(frozen=True)
class FinishedRun:
    """A `videobatch run` of the demo manifest that reported to `server`."""

    server: PrefectServer
    out: Path  # absolute
    out_arg: str  # as given on the command line (relative), which names the artifacts
    returncode: int
    seconds: float
    log: Path
    counters: dict[str, Any] = field(default_factory=dict)


def run_videobatch(
    server: PrefectServer, sandbox_url: str, workdir: Path, *, env: Mapping[str, str] = {}
) -> FinishedRun:
    """`videobatch run DEMO --out out/demo` in a subprocess in `workdir`, against `server`.

    A relative --out keeps artifact keys and titles short (`videobatch-out-demo-...`), as a
    person running it by hand would see them.
    """
    out_arg = "out/demo"
    client_home = workdir / "prefect-client-home"
    client_home.mkdir(parents=True, exist_ok=True)
    log = workdir / "videobatch-run.log"
    run_env = clean_env(
        PREFECT_HOME=str(client_home),
        PREFECT_API_URL=server.api_url,
        APIMART_BASE_URL=sandbox_url,
        APIMART_API_KEY=API_KEY,
        VIDEOBATCH_POLL_INITIAL_DELAY="0.1",
        VIDEOBATCH_POLL_INTERVAL="0.2",
        VIDEOBATCH_SUBMIT_RATE="100",
        VIDEOBATCH_CONCURRENCY="8",
        **{**DEBUG_LOGGING_ENV, **env},
    )
    started = time.monotonic()
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "videobatch.cli", "run", str(DEMO), "--out", out_arg],
            env=run_env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"videobatch run took over {RUN_TIMEOUT_S}s:\n{tail(log)}") from None
        finally:
            stop_group(process, grace_s=5)
    # Every run is checked, so no test can forget it (the pages are checked by the tests).
    assert_no_canary_under(log, workdir / out_arg)
    return FinishedRun(
        server=server,
        out=(workdir / out_arg).resolve(),
        out_arg=out_arg,
        returncode=returncode,
        seconds=time.monotonic() - started,
        log=log,
    )
