"""A real PostgreSQL for tests: a throw-away cluster, or the server named by an env variable.

`VIDEOBATCH_TEST_PG_URL` (a libpq URL of a server where the user may CREATE DATABASE) is used
when set. Otherwise Debian's PostgreSQL binaries (`.ci/system-deps` installs them) make a
cluster in a temporary folder: `initdb` and `pg_ctl` run as the `postgres` user when we are
root (the server refuses to run as root), it listens on a free loopback port only (no unix
socket), trusts local connections, and is stopped by its own `pg_ctl stop` and removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.net import free_port

ENV_URL = "VIDEOBATCH_TEST_PG_URL"


def _start(root: Path) -> list[str]:
    return ["-l", str(root / "log"), "-w", "-t", "60", "start"]


BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _bin(name: str) -> str:
    for folder in BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run .ci/system-deps to install postgresql")
    return found


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class PostgresServer:
    """A server we may create databases on; `url(db)` is a libpq URL of database `db`."""

    base_url: str  # ends with "/" + the maintenance database

    def url(self, database: str) -> str:
        return self.base_url.rsplit("/", 1)[0] + "/" + database

    def create_database(self) -> str:
        """A new, empty database; its libpq URL."""
        import psycopg

        name = f"vb_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def temporary_cluster() -> Iterator[PostgresServer]:
    """initdb + pg_ctl start on a free loopback port; stopped and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="vb-pg-"))
    data = root / "data"
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        subprocess.run(
            _as_server_user(
                [_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories=''"
        subprocess.run(
            _as_server_user([_bin("pg_ctl"), "-D", str(data), "-o", options, *_start(root)]),
            check=True,
            capture_output=True,
            timeout=120,
        )
        try:
            yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/postgres")
        finally:
            subprocess.run(
                _as_server_user([_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                timeout=120,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """The server of `VIDEOBATCH_TEST_PG_URL` if set, else a temporary cluster."""
    external = os.environ.get(ENV_URL)
    if external:
        yield PostgresServer(external)
        return
    with temporary_cluster() as server:
        yield server
