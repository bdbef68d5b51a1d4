"""Ledger backends: URL forms, batches in one database, schemas and their upgrades, and a
database password that never shows."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import psycopg
import pytest
from conftest import LedgerSite
from support.postgres import PostgresServer

from tasks.errors import RunRefused
from tasks.store.ledger import (
    SCHEMA_VERSION,
    Ledger,
    State,
    connect_ledger,
    is_ledger_url,
    open_ledger,
)
from tasks.store.ledger_postgres import (
    PG_SCHEMA_VERSION,
    PostgresLedger,
    list_batches,
    redacted_url,
)

PASSWORD = "s3cr3t-Canary-7f2e"


def _with_password(url: str, user: str = "vbuser") -> str:
    """`url` (postgres@host...) logging in as `user` with PASSWORD."""
    return url.replace("postgres@", f"{user}:{PASSWORD}@", 1)


@pytest.fixture(scope="module")
def password_url(pg_server: PostgresServer, pg_url: str) -> str:
    """The module's database, reached as a role that has a password."""
    with psycopg.connect(pg_server.base_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS vbuser")
        conn.execute(f"CREATE ROLE vbuser LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    return _with_password(pg_url)


def test_a_libpq_url_and_a_driver_url_open_the_same_batch(pg_url: str) -> None:
    """postgresql://, postgres:// and postgresql+psycopg:// name one ledger; rows are shared."""
    assert pg_url.startswith("postgresql://")
    with open_ledger(pg_url, batch="same") as ledger:
        ledger.ensure("a", 0)
    for url in (
        pg_url.replace("postgresql://", "postgres://", 1),
        pg_url.replace("postgresql://", "postgresql+psycopg://", 1),
    ):
        assert is_ledger_url(url)
        with open_ledger(url, batch="same") as ledger:
            assert isinstance(ledger, PostgresLedger)
            assert list(ledger.all()) == ["a"]


def test_a_url_naming_another_driver_or_no_batch_is_refused(pg_url: str, tmp_path: Path) -> None:
    """An async or unknown driver, a URL without a batch, a folder with one: refused, saying why."""
    with pytest.raises(RunRefused, match="synchronous"):
        connect_ledger(pg_url.replace("postgresql://", "postgresql+asyncpg://", 1), batch="b")
    with pytest.raises(RunRefused, match="say which one"), open_ledger(pg_url):
        pass
    with pytest.raises(RunRefused, match="one batch"), open_ledger(tmp_path, batch="b"):
        pass
    assert not is_ledger_url(str(tmp_path)) and not is_ledger_url(tmp_path)


def test_batches_in_one_database_are_separate(site: LedgerSite) -> None:
    """Rows, meta, money, events and idempotency keys of one batch are not another's."""
    with site.run("first") as one, site.run("second") as two:
        one.ensure("row", 0)
        two.ensure("row", 0)
        one.set_meta("manifest", "a.csv")
        one.update("row", "paid", state=State.DOWNLOADED, cost=0.3)
        assert two.get("row").state == State.PENDING  # type: ignore[union-attr]
        assert two.meta("manifest") is None and two.committed_cost() == 0
        assert [e["kind"] for e in two.events()] == []
        assert one.idempotency_key("row", "h", 1) != two.idempotency_key("row", "h", 1)
        assert one.counts() == {State.DOWNLOADED: 1} and two.counts() == {State.PENDING: 1}
    if site.url is not None:
        assert {f"{site.tag}/first", f"{site.tag}/second"} <= set(list_batches(site.url))


def test_postgres_schema_is_versioned_and_a_newer_one_refused(pg_url: str) -> None:
    """The version table holds the schema version; a database newer than the code is refused."""
    with open_ledger(pg_url, batch="v"):
        pass
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM videobatch_schema").fetchall() == [
            (PG_SCHEMA_VERSION,)
        ]
        conn.execute("UPDATE videobatch_schema SET version = version + 1")
    try:
        with pytest.raises(RunRefused, match="newer than this videobatch"):
            connect_ledger(pg_url, batch="v")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE videobatch_schema SET version = version - 1")


def test_a_readonly_postgres_ledger_cannot_write(pg_url: str) -> None:
    """A read-only batch reads rows but any write fails in the database itself."""
    with open_ledger(pg_url, batch="ro") as ledger:
        ledger.ensure("a", 0)
    with connect_ledger(pg_url, batch="ro", readonly=True) as ledger:
        assert ledger.counts() == {State.PENDING: 1}
        with pytest.raises(Exception, match="read-only"):
            ledger.ensure("b", 1)


def _schema_2_ledger(folder: Path) -> None:
    """A ledger.sqlite as schema 2 wrote it: one paid row, one doubtful row."""
    from test_ledger import _SCHEMA_1_COLUMNS

    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / "ledger.sqlite")
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute(f"CREATE TABLE rows ({_SCHEMA_1_COLUMNS}, earlier_posts_cost REAL)")
        db.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "at REAL, row_id TEXT, kind TEXT, detail TEXT)"
        )
        db.execute("INSERT INTO meta VALUES ('schema', '2'), ('salt', 'feedbeef')")
        db.execute(
            "INSERT INTO rows (row_id, idx, state, attempt, idempotency_key, estimated_cost, "
            "cost, polls, earlier_posts_cost) VALUES "
            "('paid', 0, 'downloaded', 1, 'vb-paid-a1-x', 0.2, 0.25, 3, 0.1), "
            "('doubt', 1, 'intent', 1, 'vb-doubt-a1-y', 0.4, NULL, 0, NULL)"
        )
    db.close()


def test_a_schema_2_sqlite_ledger_reads_as_is_and_migrates_on_write(tmp_path: Path) -> None:
    """A schema-2 file opens read-only unchanged, and for a run gains schema 3, keys and money
    kept, its doubtful row turned unknown and claimable no further."""
    _schema_2_ledger(tmp_path)
    with Ledger(tmp_path, readonly=True) as ledger:
        assert ledger.committed_cost() == pytest.approx(0.25 + 0.1 + 0.4)
        assert ledger.meta("schema") == "2"
    with open_ledger(tmp_path) as ledger:
        assert ledger.meta("schema") == str(SCHEMA_VERSION)
        assert ledger.meta("salt") == "feedbeef"
        assert ledger.get("doubt").state == State.UNKNOWN  # type: ignore[union-attr]
        assert ledger.committed_cost() == pytest.approx(0.25 + 0.1 + 0.4)
        assert ledger.get("paid").earlier_posts_cost == pytest.approx(0.1)  # type: ignore[union-attr]
    columns = {
        r[1] for r in sqlite3.connect(tmp_path / "ledger.sqlite").execute("PRAGMA table_info(rows)")
    }
    assert {"lease_owner", "lease_until", "reserved_cost", "reserved_until"} <= columns


def test_redacted_url_hides_every_form_of_the_password() -> None:
    """The password in the authority or in ?password= never shows in the redacted URL."""
    for url in (
        f"postgresql://u:{PASSWORD}@db.example:5432/vb",
        f"postgresql+psycopg://u:{PASSWORD}@db.example/vb?sslmode=require",
        f"postgresql://u@db.example/vb?password={PASSWORD}",
        f"postgresql://u:{PASSWORD}@db.example:bad/vb",
    ):
        shown = redacted_url(url)
        assert (
            PASSWORD not in shown and "***" in shown and "db.example" in shown
        ) or "[bad" in shown


def test_a_database_password_never_reaches_a_repr_an_error_or_a_log(
    password_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With DEBUG logging, the password is in no repr, no log record and no refusal message."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with open_ledger(password_url, batch="secret") as ledger:
        ledger.ensure("a", 0)
        texts += [repr(ledger), str(ledger.__dict__), ledger.url]
    wrong = password_url.replace("vbuser:", "nobody:", 1)
    # The server trusts loopback, so a refusal is provoked by a database that does not exist.
    missing = password_url.rsplit("/", 1)[0] + "/no_such_db"
    for bad in (wrong.replace("vb_", "none_", 1), missing):
        with pytest.raises(RunRefused) as refused:
            connect_ledger(bad, batch="secret")
        texts += [str(refused.value), repr(refused.value)]
        assert "***" in str(refused.value)
    texts += [r.getMessage() for r in caplog.records]
    assert texts and not [t for t in texts if PASSWORD in t]


def test_a_mistyped_ledger_scheme_is_refused_without_quoting_it(tmp_path: Path) -> None:
    """A ledger URL whose scheme is mistyped is refused with a message that never quotes it,
    since a password may follow the typo."""
    with (
        pytest.raises(RunRefused) as caught,
        open_ledger("postgresq://vb:s3cret-pw@db/vb", batch="s3://b/x"),
    ):
        pass
    assert "s3cret-pw" not in str(caught.value)
    assert "postgresql://" in str(caught.value)
