"""Helpers of the operations tests: real processes on loopback (a Prefect server on PostgreSQL,
a sandbox, three workers) beside a PostgreSQL ledger and an S3 server.

A plain module (tests/ is not a package); what other kits share comes from tests/support/
(the Prefect server, PostgreSQL and moto among it). Every process is started in its own
session, its output goes to a log file, and `Processes.stop_all` ends each one by its own id.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import support.manifests
from support.files import tail as tail
from support.net import free_port as free_port
from support.s3 import AWS_ENV as AWS_ENV
from support.s3 import REGION, S3Server
from support.waiting import wait_for as wait_for

from apimart.redact import secret_forms

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-CANARY-ops-5d1f0c2a9e"
# The password of the ledger database's role: the ledger URL is a secret like the key.
DB_PASSWORD = "pw-CANARY-ops-ledger-7c3e91"
# Every form the canary can take in text; the sandbox alone is told the key.
CANARY_FORMS = tuple(secret_forms(API_KEY))
KNOWS_THE_KEY = ("sandbox",)


def leaks_in(data: bytes | str, secrets: tuple[str, ...] = CANARY_FORMS) -> list[str]:
    """Which of `secrets` appear in `data`."""
    raw = data.encode() if isinstance(data, str) else data
    return [secret for secret in secrets if secret.encode() in raw]


def canary_leaks(path: Path, secrets: tuple[str, ...] = CANARY_FORMS) -> list[str]:
    """Which of `secrets` (the canary key's forms by default) appear in the file at `path`
    (none if there is no file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return leaks_in(data, secrets)


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (flow-run processes run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_tree(self) -> list[int]:
        """SIGKILL the process, its process group and every descendant, as a crash would."""
        tree = [self.pid, *descendants(self.pid)]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # its session/group, if it leads one
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        return tree

    def stop(self, *, sigints: int, grace: float) -> None:
        """SIGINT (`sigints` times, a worker needs two), then SIGKILL whatever is left."""
        tree = [self.pid, *descendants(self.pid)]
        for _ in range(sigints):
            if not self.alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


@dataclass
class Processes:
    """The processes a test started; `stop_all` ends each of them by its own id."""

    logs: Path
    # Besides the key's forms, what no log may hold (the database password, the bucket's secret).
    secrets: tuple[str, ...] = ()
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log = self.logs / f"{name}.log"
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                args,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stop every process, then check each one's log for every secret (the sandbox's log
        for all but the key it was given)."""
        # Workers first (two SIGINTs), then the sandbox, the server last.
        for proc in reversed(self.started):
            if proc.alive():
                is_worker = proc.name.startswith("worker")
                proc.stop(sigints=2 if is_worker else 1, grace=3.0 if is_worker else 10.0)
        leaks = {}
        for proc in self.started:
            secrets = self.secrets if proc.name in KNOWS_THE_KEY else CANARY_FORMS + self.secrets
            if found := canary_leaks(proc.log, secrets):
                leaks[proc.log.name] = [f"{s[:6]}..." for s in found]
        assert not leaks, f"secrets leaked into process logs: {leaks}"


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    """The environment of every process of the test but the server (deploy, sandbox, workers):
    the server's home, its API, workers that look for runs every 2 s."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "APIMART_", "VIDEOBATCH_")) and k not in AWS_ENV
    }
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        # The readiness check reads "Worker '...' started" (INFO) from a worker's log.
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


def server_settings(database_url: str) -> dict[str, str]:
    """The test server's settings: on PostgreSQL (`database_url`, a libpq URL), since on SQLite
    it stalls under several polling workers ("database is locked" for a minute)."""
    return {
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url.replace(
            "postgresql://", "postgresql+asyncpg://", 1
        ),
        # Nothing here reads stored events, and they are most of the server's writes.
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO",
    }


def prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def videobatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "videobatch.cli", *args]


def write_manifest(path: Path, name: str, rows: int) -> Path:
    """`rows` cheap rows named `NAME-000`, ... in three campaigns, as a CSV manifest."""
    return support.manifests.write_manifest(
        path,
        [
            {
                "id": f"{name}-{i:03d}",
                "prompt": prompt_of(name, i),
                "duration": 4,
                "resolution": "720p",
                "campaign": f"batch-{i % 3}",
            }
            for i in range(rows)
        ],
    )


def prompt_of(name: str, i: int) -> str:
    return f"{name} clip {i}: a paper boat drifts down a rainy street at dusk"


class Api:
    """The few Prefect REST calls the tests need, without the Prefect client's settings."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def healthy(self) -> bool:
        return self.http.get("/health").status_code == 200

    def run_deployment(self, name: str, parameters: dict[str, Any]) -> str:
        deployment = self.http.get(f"/deployments/name/{name}")
        deployment.raise_for_status()
        # A busy SQLite server answers 503; the idempotency key makes the retry safe.
        key = uuid.uuid4().hex
        for attempt in range(5):
            created = self.http.post(
                f"/deployments/{deployment.json()['id']}/create_flow_run",
                json={"parameters": parameters, "idempotency_key": key},
            )
            if created.status_code != 503:
                break
            time.sleep(2.0 * (attempt + 1))
        created.raise_for_status()
        return str(created.json()["id"])

    def flow_run(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"/flow_runs/{run_id}")
        response.raise_for_status()
        return dict(response.json())

    def state(self, run_id: str) -> str:
        state = self.flow_run(run_id).get("state") or {}
        return str(state.get("name", ""))

    def final_state(self, run_id: str) -> str | None:
        state = self.flow_run(run_id).get("state") or {}
        if state.get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return str(state["name"])
        return None

    def flow_runs(self, *, tag: str | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"limit": 200, "sort": "EXPECTED_START_TIME_ASC"}
        if tag:
            body["flow_runs"] = {"tags": {"all_": [tag]}}
        response = self.http.post("/flow_runs/filter", json=body)
        response.raise_for_status()
        return list(response.json())

    def logs(self, run_id: str) -> list[str]:
        response = self.http.post(
            "/logs/filter",
            json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200},
        )
        response.raise_for_status()
        return [str(entry["message"]) for entry in response.json()]


class Sandbox:
    """The sandbox process, through its HTTP side door (`/_sandbox/...`)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_sandbox/stats", timeout=10).json())

    def created_by_prompt(self) -> dict[str, int]:
        return dict(self.stats()["tasks_created_by_prompt"])

    def set_faults(self, **faults: Any) -> None:
        """Replace the sandbox's faults (e.g. `hold_tasks=True`); unnamed ones go off."""
        httpx.put(f"{self.url}/_sandbox/faults", json=faults, timeout=10).raise_for_status()


def submitted_by(worker_log: Path) -> set[str]:
    """Flow run ids a worker's own log says it submitted, less those it then gave up because
    another worker had taken them ("Aborted submission of flow run '...'")."""
    ids, aborted = set(), set()
    for line in worker_log.read_text(errors="replace").splitlines():
        if "submitting flow run '" in line:
            ids.add(line.split("submitting flow run '", 1)[1].split("'", 1)[0])
        elif "Aborted submission of flow run '" in line:
            aborted.add(line.split("Aborted submission of flow run '", 1)[1].split("'", 1)[0])
    return ids - aborted


# A 3-5 minute task takes 2-3 s: long enough to kill a worker in the middle of a run.
SANDBOX_TIME_SCALE = 0.01
SANDBOX_CONFIG = {
    "time_scale": SANDBOX_TIME_SCALE,
    # One render per size and length, not per task: thousands of videos cost one encode.
    "shared_videos": True,
}
# Two runs per worker: a worker cannot take a sharded run and all three of its members, so a
# worker killed mid-run always leaves members working elsewhere.
WORKER_LIMIT = "2"
WORKERS = ("worker-a", "worker-b", "worker-c")


def sandbox_command(port: int) -> list[str]:
    script = REPO / "tests" / "ops" / "sandbox_main.py"
    return [sys.executable, str(script), str(port), json.dumps(SANDBOX_CONFIG)]


@dataclass
class Stack:
    """Everything the ops tests run against, started once for the module (conftest.py)."""

    api: Api
    sandbox: Sandbox
    env: dict[str, str]  # of every worker: Prefect, the ledger URL, the bucket's credentials
    procs: Processes
    tmp: Path
    server_log: Path
    s3: S3Server
    ledger_url: str  # with the role's password: a secret like the key
    workers: dict[str, Proc] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret of the stack: the key's forms, the database password, the bucket's."""
        return (*CANARY_FORMS, DB_PASSWORD, self.s3.secret_key)

    def start_worker(self, name: str) -> Proc:
        """A process worker of the pool with a home of its own, as on a machine of its own
        (staging folders of bucket outputs live under it)."""
        home = self.tmp / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        proc = self.procs.start(
            name,
            prefect(
                "worker", "start", "--pool", "videobatch", "--name", name, "--limit", WORKER_LIMIT
            ),
            dict(self.env, HOME=str(home)),
        )
        self.workers[name] = proc
        return proc

    def wait_worker_ready(self, proc: Proc, timeout: float = 60) -> None:
        wait_for(
            lambda: f"Worker '{proc.name}' started" in proc.log.read_text(errors="replace"),
            timeout=timeout,
            what=f"{proc.name} to start",
            logs=[proc.log],
        )

    def logs(self) -> list[Path]:
        return [self.server_log, *(p.log for p in self.procs.started)]

    def s3_env(self) -> dict[str, str]:
        """The standard AWS variables of the bucket (and nothing of the machine's own)."""
        return s3_env(self.s3)


def s3_env(server: S3Server) -> dict[str, str]:
    """The standard AWS variables pointing at `server`, with no profile or metadata lookup."""
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
        "AWS_CONFIG_FILE": "/nonexistent/config",
    }
