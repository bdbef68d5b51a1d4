"""Setting a Prefect server up for videobatch: idempotent, so running it twice is harmless.

Creates the process work pool, the global concurrency limit that keeps inbox runs apart, the
Secret block holding the API key (from the environment, never from an argument that would end
up in shell history), and the deployments of prefect.yaml.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tasks.run import environment
from tasks.run.environment import SECRET_BLOCK
from tasks.run.inbox import INBOX_LIMIT

WORK_POOL = "videobatch"
# What `prefect deploy --all` creates from prefect.yaml (flow name/deployment name).
DEPLOYMENTS = (
    "generate-videos/generate-videos",
    "generate-sharded/generate-sharded",
    "inbox/inbox",
)

# The server settings measured to keep up with thousands of task runs (prefect-notes.md).
SERVER_ENV = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


@dataclass
class SetupReport:
    done: list[str] = field(default_factory=list)


async def ensure_prefect_objects(api_key: str | None, *, pool: str = WORK_POOL) -> SetupReport:
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
        WorkPoolCreate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    report = SetupReport()
    async with get_client() as client:
        try:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            report.done.append(f"work pool {pool!r} created")
        except ObjectAlreadyExists:
            report.done.append(f"work pool {pool!r} already there")
        try:
            limit = await client.read_global_concurrency_limit_by_name(INBOX_LIMIT)
            if limit.limit != 1 or not limit.active:
                await client.update_global_concurrency_limit(
                    INBOX_LIMIT, GlobalConcurrencyLimitUpdate(limit=1, active=True)
                )
                report.done.append(f"concurrency limit {INBOX_LIMIT!r} set back to 1")
            else:
                report.done.append(f"concurrency limit {INBOX_LIMIT!r} already there")
        except ObjectNotFound:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=INBOX_LIMIT, limit=1)
            )
            report.done.append(f"concurrency limit {INBOX_LIMIT!r} created (limit 1)")
    if api_key:
        await Secret(value=api_key).save(SECRET_BLOCK, overwrite=True)
        report.done.append(f"secret block {SECRET_BLOCK!r} saved from APIMART_API_KEY")
    else:
        try:
            await Secret.load(SECRET_BLOCK)
            report.done.append(f"no APIMART_API_KEY: secret block {SECRET_BLOCK!r} kept as it is")
        except ValueError:
            report.done.append(
                f"no APIMART_API_KEY and no secret block {SECRET_BLOCK!r}: runs will stop with "
                "'no API key' unless workers have APIMART_API_KEY (run deploy again with it)"
            )
    return report


def deploy_all(project: Path) -> subprocess.CompletedProcess[str]:
    """`prefect --no-prompt deploy --all` from prefect.yaml, pinned to this project folder."""
    env = environment.for_subprocess(drop=[environment.API_KEY])  # not needed there
    env[environment.PROJECT_DIR] = str(project.resolve())
    return subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=project,
        env=env,
        text=True,
        capture_output=True,
        check=False,
    )


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def public_api_url(host: str, port: int) -> str:
    """The API address other machines use: the host name when listening on every interface."""
    name = socket.gethostname() if host in WILDCARD_HOSTS else host
    return f"http://{name}:{port}/api"


def server_command(host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a local Prefect server tuned for many task runs.

    Listening on every interface (`--host 0.0.0.0`), the UI is told to call the API by this
    machine's name (else browsers elsewhere would call 0.0.0.0); PREFECT_UI_API_URL overrides.
    """
    env = environment.for_subprocess(defaults=SERVER_ENV)
    if host in WILDCARD_HOSTS:
        env.setdefault("PREFECT_UI_API_URL", public_api_url(host, port))
    return [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        host,
        "--port",
        str(port),
    ], env
