"""Helpers of the browser tests: a real `prefect server start`, a run against it, Chromium.

A plain module (tests/ is not a package). Every process started here is started in its own
session and stopped by its own process-group id, so nothing survives a test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import ViewportSize

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

SERVER_STARTUP_S = 120.0
RUN_TIMEOUT_S = 150.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:])


def _bin(name: str) -> str:
    """A console script of this virtual environment (beside the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _stop(process: subprocess.Popen[bytes], *, grace_s: float = 15.0) -> None:
    """Stop a process started with `start_new_session=True`, and its children, by group id."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "APIMART_", "VIDEOBATCH_"))
    }
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class PrefectServer:
    url: str  # the UI, e.g. http://127.0.0.1:40123
    home: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[PrefectServer]:
    """A real `prefect server start` (API and UI) on a free loopback port, with its own home."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _clean_env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        # The UI asks this address for data; without it the page calls port 4200.
        PREFECT_UI_API_URL=f"{url}/api",
        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE="200",
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE="500",
        # Batches are flushed every 5 s by default: the page would wait for the last ones.
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL="0.5",
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="0.5",
    )
    log = home / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_STARTUP_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {process.returncode}:\n{tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server not healthy in {SERVER_STARTUP_S}s:\n{tail(log)}"
                )
            time.sleep(0.25)
        yield PrefectServer(url=url, home=home)
    finally:
        _stop(process)


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
    run_env = _clean_env(
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
            _stop(process, grace_s=5)
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
