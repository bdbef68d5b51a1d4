"""The operations stack of the slow tests: a real Prefect server, a sandbox and two workers.

Started once for the module, stopped in a `finally` whatever happens: every process by its own
id (workers get their two SIGINTs, then SIGKILL for anything left; the server, from
tests/support/, last).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opskit import (
    API_KEY,
    OPS_SERVER_SETTINGS,
    REPO,
    SANDBOX_TIME_SCALE,
    Api,
    Processes,
    Sandbox,
    Stack,
    canary_leaks,
    prefect_env,
    videobatch,
)
from support.net import free_port
from support.prefect_server import prefect_server
from support.waiting import wait_for


def _deploy(env: dict[str, str], log: Path) -> subprocess.CompletedProcess[str]:
    deploy_env = dict(env, APIMART_API_KEY=API_KEY, VIDEOBATCH_PROJECT_DIR=str(REPO))
    result = subprocess.run(
        videobatch("deploy"),
        cwd=REPO,
        env=deploy_env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    with log.open("a") as handle:
        handle.write(result.stdout + result.stderr)
    return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ops")
    logs = tmp / "logs"
    logs.mkdir()
    server_log = logs / "server.log"
    t0 = time.monotonic()
    with prefect_server(
        tmp / "prefect-home", settings=OPS_SERVER_SETTINGS, log=server_log, startup_timeout=90
    ) as server:
        procs = Processes(logs)
        try:
            sandbox_port = free_port()
            env = prefect_env(server.home, server.api_url)
            sandbox_proc = procs.start(
                "sandbox",
                videobatch(
                    "sandbox",
                    "--port",
                    str(sandbox_port),
                    "--api-key",
                    API_KEY,
                    "--time-scale",
                    SANDBOX_TIME_SCALE,
                ),
                env,
            )
            sandbox = Sandbox(f"http://127.0.0.1:{sandbox_port}")
            stack = Stack(
                api=Api(server.api_url),
                sandbox=sandbox,
                env=env,
                procs=procs,
                tmp=tmp,
                server_log=server_log,
            )
            wait_for(sandbox.stats, timeout=30, what="the sandbox", logs=[sandbox_proc.log])
            stack.timings["server_up"] = time.monotonic() - t0

            first = _deploy(env, logs / "deploy.log")
            assert first.returncode == 0, first.stdout + first.stderr
            stack.timings["deploy"] = time.monotonic() - t0
            workers = [stack.start_worker("worker-a"), stack.start_worker("worker-b")]
            # Safe to run twice: the second deploy runs while the workers start.
            second = _deploy(env, logs / "deploy.log")
            assert second.returncode == 0, second.stdout + second.stderr
            assert "already there" in second.stdout
            for worker in workers:
                stack.wait_worker_ready(worker)
            stack.timings["workers_up"] = time.monotonic() - t0
            yield stack
        finally:
            # Workers and the sandbox first, while the server they report to is still up.
            procs.stop_all()
    leaked = canary_leaks(server_log)
    assert not leaked, f"the API key leaked into the Prefect server's log: {leaked}"
