"""The operations stack of the slow tests, one for the whole module: a Prefect server on
PostgreSQL, a sandbox, three process workers, a PostgreSQL ledger and an S3 bucket.

PostgreSQL is the session's cluster (`pg_server`, tests/conftest.py): one database for the
Prefect server, one for the ledger, owned by a role with a password (so the ledger URL every
worker has in `VIDEOBATCH_LEDGER_URL` holds a secret to look for). The bucket is moto's server
(`s3_server`, tests/support/s3.py); every worker has its standard AWS variables. Everything is
stopped in a `finally` whatever happens, each process by its own id (workers get their two
SIGINTs, then SIGKILL for anything left; the Prefect server, from tests/support/, last).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from opskit import (
    API_KEY,
    CANARY_FORMS,
    DB_PASSWORD,
    REPO,
    WORKERS,
    Api,
    Processes,
    Sandbox,
    Stack,
    canary_leaks,
    prefect_env,
    s3_env,
    sandbox_command,
    server_settings,
    videobatch,
)
from support import s3 as s3kit
from support.net import free_port
from support.postgres import PostgresServer
from support.prefect_server import prefect_server
from support.waiting import wait_for

s3_server = s3kit.s3_server


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


def _ledger_database(pg: PostgresServer) -> tuple[str, str]:
    """A fresh database owned by a role with a password: its URL with and without it."""
    url = pg.create_database()
    role = f"vb_ops_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.base_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{DB_PASSWORD}'")
        conn.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" OWNER TO {role}')
    return f"postgresql://{role}:{DB_PASSWORD}@{url.split('@', 1)[1]}", url


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresServer, s3_server: s3kit.S3Server
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ops")
    logs = tmp / "logs"
    logs.mkdir()
    server_log = logs / "server.log"
    t0 = time.monotonic()
    prefect_db = pg_server.create_database()
    ledger_url, ledger_db = _ledger_database(pg_server)
    secrets = (DB_PASSWORD, s3_server.secret_key)
    try:
        with prefect_server(
            tmp / "prefect-home",
            settings=server_settings(prefect_db),
            log=server_log,
            startup_timeout=120,
        ) as server:
            procs = Processes(logs, secrets=secrets)
            try:
                base = prefect_env(server.home, server.api_url)
                sandbox_port = free_port()
                sandbox_proc = procs.start(
                    "sandbox", sandbox_command(sandbox_port), dict(base, SANDBOX_API_KEY=API_KEY)
                )
                sandbox = Sandbox(f"http://127.0.0.1:{sandbox_port}")
                env = dict(base, VIDEOBATCH_LEDGER_URL=ledger_url, **s3_env(s3_server))
                stack = Stack(
                    api=Api(server.api_url),
                    sandbox=sandbox,
                    env=env,
                    procs=procs,
                    tmp=tmp,
                    server_log=server_log,
                    s3=s3_server,
                    ledger_url=ledger_url,
                )
                wait_for(sandbox.stats, timeout=30, what="the sandbox", logs=[sandbox_proc.log])
                stack.timings["server_up"] = time.monotonic() - t0

                first = _deploy(base, logs / "deploy.log")
                assert first.returncode == 0, first.stdout + first.stderr
                stack.timings["deploy"] = time.monotonic() - t0
                workers = [stack.start_worker(name) for name in WORKERS]
                # Safe to run twice: the second deploy runs while the workers start.
                second = _deploy(base, logs / "deploy.log")
                assert second.returncode == 0, second.stdout + second.stderr
                assert "already there" in second.stdout
                for worker in workers:
                    stack.wait_worker_ready(worker)
                stack.timings["workers_up"] = time.monotonic() - t0
                print(f"\nops stack up in {stack.timings['workers_up']:.1f} s")
                yield stack
            finally:
                # Workers and the sandbox first, while the server they report to is still up.
                procs.stop_all()
        leaked = [f"{s[:6]}..." for s in canary_leaks(server_log, (*CANARY_FORMS, *secrets))]
        assert not leaked, f"secrets leaked into the Prefect server's log: {leaked}"
    finally:
        pg_server.drop_database(ledger_db)
        pg_server.drop_database(prefect_db)
        with psycopg.connect(pg_server.base_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {ledger_url.split('//', 1)[1].split(':', 1)[0]}")
