"""Ledger backends for the tests of tasks/: `site` opens ledgers on SQLite and on PostgreSQL.

The PostgreSQL server is the session's `pg_server` (tests/conftest.py);
each test module gets its own database and each test its own batches, so nothing one test
writes is seen by another.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.postgres import PostgresServer

from tasks.store.ledger import Ledger, connect_ledger, open_ledger


@pytest.fixture(scope="module")
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """The libpq URL of a fresh database of this module's own."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@dataclass
class LedgerSite:
    """Where a test's ledgers live: folders under `tmp` (SQLite) or batches at `url`."""

    kind: str
    tmp: Path
    url: str | None
    tag: str

    def target(self, name: str = "one") -> tuple[str | Path, str | None]:
        """What `open_ledger` takes for the ledger called `name`: a folder, or URL and batch."""
        if self.url is None:
            return self.tmp / name, None
        return self.url, f"{self.tag}/{name}"

    def ledger(self, name: str = "one", *, readonly: bool = False) -> Ledger:
        """Ledger `name`, opened without a lock (as `Ledger(folder)` is)."""
        target, batch = self.target(name)
        return connect_ledger(target, batch=batch, readonly=readonly)

    def run(self, name: str = "one") -> AbstractContextManager[Ledger]:
        """Ledger `name` opened as a run opens it (`open_ledger`)."""
        target, batch = self.target(name)
        return open_ledger(target, batch)


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerSite:
    """Each backend in turn; a test using it proves the rule on both."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return LedgerSite(request.param, tmp_path, url, uuid.uuid4().hex[:10])
