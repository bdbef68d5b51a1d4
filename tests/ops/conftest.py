"""The operations stack of the slow tests: a real Prefect server, a sandbox and two workers.

Started once for the module, stopped in a `finally` whatever happens: every process by its own
id (workers get their two SIGINTs, then SIGKILL for anything left).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opskit import (
    API_KEY,
    REPO,
    SANDBOX_TIME_SCALE,
    Api,
    Processes,
    Sandbox,
    Stack,
    free_port,
    prefect,
    prefect_env,
    videobatch,
    wait_for,
)


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
    procs = Processes(logs)
    t0 = time.monotonic()
    try:
        port, sandbox_port = free_port(), free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        env = prefect_env(tmp / "prefect-home", api_url)
        server = procs.start(
            "server", prefect("server", "start", "--host", "127.0.0.1", "--port", str(port)), env
        )
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
        api = Api(api_url)
        sandbox = Sandbox(f"http://127.0.0.1:{sandbox_port}")
        stack = Stack(api=api, sandbox=sandbox, env=env, procs=procs, tmp=tmp)
        wait_for(api.healthy, timeout=90, what="the Prefect server", logs=[server.log])
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
        procs.stop_all()
