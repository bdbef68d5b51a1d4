"""A real `prefect server start` (API and UI) for tests that need more than the test harness:
the UI, or workers in other processes.

The session fixture `prefect_api` (tests/conftest.py) is the cheap choice for everything else.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from support.files import tail
from support.net import free_port
from support.processes import clean_env, stop_group
from support.waiting import wait_for

# Every test server's, whatever it is for: batches big enough for a test's bursts.
BASE_SETTINGS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
}


@dataclass(frozen=True)
class PrefectServer:
    """A running server: its address, its home folder, its log and its process id."""

    url: str  # the UI, e.g. http://127.0.0.1:40123
    home: Path
    log: Path
    pid: int

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def healthy(api_url: str) -> bool:
    """The API answers its health check."""
    return httpx.get(f"{api_url}/health", timeout=2).status_code == 200


@contextlib.contextmanager
def prefect_server(
    home: Path,
    *,
    settings: Mapping[str, str] | None = None,
    log: Path | None = None,
    startup_timeout: float = 120.0,
    stop_grace: float = 15.0,
) -> Iterator[PrefectServer]:
    """A real `prefect server start` on a free loopback port with `home` as its PREFECT_HOME;
    `settings` are added to its environment (over BASE_SETTINGS). Its output goes to `log`
    (`home/server.log` by default). Stopped at the end by its process-group id: SIGTERM, then
    SIGKILL after `stop_grace` seconds."""
    home.mkdir(parents=True, exist_ok=True)
    log = log or home / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        # The UI asks this address for data; without it the page calls port 4200.
        PREFECT_UI_API_URL=f"{url}/api",
        **{**BASE_SETTINGS, **(settings or {})},
    )
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            env=env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {process.returncode}:\n{tail(log)}")
            return healthy(f"{url}/api")

        wait_for(
            up,
            timeout=startup_timeout,
            what="the Prefect server",
            interval=0.25,
            logs=[log],
            not_yet=(httpx.HTTPError,),
        )
        yield PrefectServer(url=url, home=home, log=log, pid=process.pid)
    finally:
        stop_group(process, grace_s=stop_grace)
