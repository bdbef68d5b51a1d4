"""The ledger on PostgreSQL: one database holds many batches, shared by every run of a batch.

`PostgresLedger` is `tasks.store.ledger.Ledger` with another connection: every rule (the
write-ahead order, the idempotency keys, the states, committed cost, claims, the budget, the
stop flag) is the very same SQL, confined to one batch by `batch = :batch`. Open it through
`open_ledger(url, batch=...)`; this module is imported only then, so the SQLite path never
loads SQLAlchemy.

URLs: `postgresql://user:password@host:5432/db` exactly as libpq and every PostgreSQL tool
write it (`postgres://` too) runs on psycopg 3, the driver the project ships;
`postgresql+psycopg://...` names it explicitly. Another driver (`+asyncpg`, `+psycopg2`) is
refused: the ledger is synchronous by design. The password (in the URL or as `?password=`)
never appears in a repr, a log line or an error: see `redacted_url`.

Durability: every connection runs with `synchronous_commit=on` whatever the server's default,
so a committed intent is on disk before the POST leaves; read-only ledgers run with
`default_transaction_read_only=on`, so `videobatch status` cannot write even by mistake.

Schema, created and migrated by the project. `videobatch_schema(version)` holds one row; each
entry of `MIGRATIONS` raises it by one. Opening a ledger for writing takes a transaction-level
advisory lock (so runs starting together migrate once), applies every missing step in that one
transaction (PostgreSQL's DDL is transactional: a failed upgrade leaves the old schema whole)
and commits. Upgrading videobatch is therefore: install the new version, open any batch once
(any run does it). A database whose version is newer than the code is refused, naming both,
rather than written by rules that do not know its columns. Tables (all prefixed `videobatch_`
so the ledger can share a team's database):

* `batches(batch)`: one row per batch; a budget reservation locks it (`FOR UPDATE`), so K runs
  reserve one at a time.
* `meta(batch, key, value)`: the salt of the idempotency keys, the manifest, the stop flag.
* `rows(batch, row_id, ...)`: primary key `(batch, row_id)`, the columns of `RowRecord` plus
  the lease and reservation columns; indexed by `(batch, state, idx)` for claims.
* `events(seq, batch, at, row_id, kind, detail)`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from apimart.redact import scrub
from tasks.errors import RunRefused
from tasks.store.ledger import _ALL_COLUMNS, SCHEMA_VERSION, Ledger, Tx

DRIVER = "postgresql+psycopg"
PREFIX = "videobatch_"
MAX_BATCH = 1000
# pg_advisory_xact_lock key of the schema migration (any constant; "vbschema" in ASCII).
_MIGRATION_LOCK = 0x7662736368656D61


def _pg_type(column: str) -> str:
    from tasks.store.ledger import _column_sql

    kind = _column_sql(column).split(" ", 1)[1]
    if column == "row_id":
        return "TEXT NOT NULL"
    if column == "video_bytes":
        return "BIGINT"
    return {"REAL": "DOUBLE PRECISION"}.get(kind, kind)


def _schema_v1() -> list[str]:
    cols = ", ".join(f"{c} {_pg_type(c)}" for c in _ALL_COLUMNS)
    p = PREFIX
    return [
        f"CREATE TABLE {p}batches (batch TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL)",
        f"CREATE TABLE {p}meta (batch TEXT NOT NULL REFERENCES {p}batches ON DELETE CASCADE, "
        "key TEXT NOT NULL, value TEXT, PRIMARY KEY (batch, key))",
        f"CREATE TABLE {p}rows (batch TEXT NOT NULL REFERENCES {p}batches ON DELETE CASCADE, "
        f"{cols}, PRIMARY KEY (batch, row_id))",
        f"CREATE INDEX {p}rows_claim ON {p}rows (batch, state, idx)",
        f"CREATE TABLE {p}events (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        f"batch TEXT NOT NULL REFERENCES {p}batches ON DELETE CASCADE, "
        "at DOUBLE PRECISION, row_id TEXT, kind TEXT, detail TEXT)",
        f"CREATE INDEX {p}events_row ON {p}events (batch, row_id, seq)",
    ]


# MIGRATIONS[n] takes the schema from version n to n + 1. Append, never edit: a database
# that ran step n must be able to run n + 1 as written. (The PostgreSQL schema has its own
# numbering; it started out with everything SQLite's schema 3 has.)
MIGRATIONS: list[list[str]] = [_schema_v1()]
PG_SCHEMA_VERSION = len(MIGRATIONS)
assert SCHEMA_VERSION == 3, "a new SQLite column needs a PostgreSQL migration step too"


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise RunRefused(
            f"the ledger URL {redacted_url(url)} is not a database URL "
            "(write it as postgresql://user@host:5432/database)"
        ) from None
    name = parsed.drivername.lower()
    if name in {"postgresql", "postgres"}:
        return parsed.set(drivername=DRIVER)
    if name == DRIVER:
        return parsed
    raise RunRefused(
        f"the ledger URL {redacted_url(url)} names the driver {name!r}; the ledger is synchronous "
        f"and runs on psycopg 3: write postgresql://... or {DRIVER}://..."
    )


def redacted_url(url: str | URL) -> str:
    """`url` with its password (in the authority or as `?password=`) shown as `***`."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        # Not parseable: keep only the scheme and host part after any credentials.
        text = str(url)
        scheme, _, rest = text.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}" if "@" in rest else text
    if "password" not in parsed.query:
        return parsed.render_as_string(hide_password=True)
    text = parsed.difference_update_query(["password"]).render_as_string(hide_password=True)
    return text + ("&" if "?" in text else "?") + "password=***"


class _Secrets(tuple[str, ...]):
    """The URL's passwords, kept to scrub driver messages; shown as `<redacted>` anywhere."""

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


def _secrets(url: URL) -> _Secrets:
    query = url.query.get("password")
    found = [url.password, *(query if isinstance(query, tuple) else [query])]
    return _Secrets(str(s) for s in found if s)


class _PgTx:
    def __init__(self, conn: Connection, batch: str) -> None:
        self._conn, self._batch = conn, batch

    def run(self, sql: str, params: Mapping[str, Any]) -> tuple[int, list[Mapping[str, Any]]]:
        result = self._conn.execute(sa.text(sql), {"batch": self._batch, **params})
        rows: list[Mapping[str, Any]] = (
            [dict(r) for r in result.mappings()] if result.returns_rows else []
        )
        return result.rowcount, rows


class PostgresLedger(Ledger):
    """One batch of a PostgreSQL ledger. Thread-safe (a connection pool); every write is its
    own committed transaction, as in SQLite."""

    _SQL_WORDS: Mapping[str, str] = {
        "rows": f"{PREFIX}rows",
        "meta": f"{PREFIX}meta",
        "events": f"{PREFIX}events",
        "scope": "batch = :batch AND",
        "bcol": "batch,",
        "bval": ":batch,",
        "lock": "FOR UPDATE SKIP LOCKED",
        # One clock for every worker of the batch: the database's.
        "now": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
    }
    # Many runs share a batch: a row in `intent` is another live run's POST until its lease
    # runs out (see `Ledger.mark_doubtful_as_unknown`).
    _live_leases_guard_intent = True

    def __init__(self, url: str, *, batch: str, readonly: bool = False) -> None:
        if not batch or len(batch) > MAX_BATCH or not batch.isprintable():
            raise RunRefused(
                f"the batch name {batch[:80]!r} must be 1-{MAX_BATCH} printable characters"
            )
        parsed = _parse(url)
        self.url = redacted_url(parsed)
        self.batch = batch
        self.readonly = readonly
        self.folder = None  # type: ignore[assignment]
        self._lock = threading.RLock()
        self._sql_cache: dict[str, str] = {}
        self._secrets = _secrets(parsed)
        self._columns = set(_ALL_COLUMNS)
        settings = "-c synchronous_commit=on"
        if readonly:
            settings += " -c default_transaction_read_only=on"
        self._engine = sa.create_engine(
            parsed,
            pool_pre_ping=True,
            hide_parameters=True,
            connect_args={"options": settings, "connect_timeout": 30},
        )
        try:
            if readonly:
                self._check_readable()
            else:
                self._create()
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise self._refused(exc) from None
        except BaseException:
            self._engine.dispose()
            raise

    def _refused(self, exc: BaseException) -> RunRefused:
        reason = scrub(str(getattr(exc, "orig", None) or exc).strip(), self._secrets)
        return RunRefused(f"cannot open the ledger at {self.url} (batch {self.batch!r}): {reason}")

    def __repr__(self) -> str:
        return f"PostgresLedger({self.url!r}, batch={self.batch!r}, readonly={self.readonly})"

    def close(self) -> None:
        self._engine.dispose()

    # -- the connection ----------------------------------------------------------------------
    def _read(self, sql: str, params: Mapping[str, Any] = {}) -> list[Mapping[str, Any]]:
        with self._engine.connect() as conn:
            result = conn.execute(sa.text(self._q(sql)), {"batch": self.batch, **params})
            return [dict(r) for r in result.mappings()]

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        with self._engine.begin() as conn:
            yield _QTx(self, conn)

    def _lock_batch(self, tx: Tx) -> None:
        tx.run(f"SELECT batch FROM {PREFIX}batches WHERE batch = :batch FOR UPDATE", {})

    # -- schema ------------------------------------------------------------------------------
    def _schema_version(self, conn: Connection) -> int | None:
        exists = conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": f"{PREFIX}schema"})
        if exists.scalar() is None:
            return None
        return int(conn.execute(sa.text(f"SELECT version FROM {PREFIX}schema")).scalar_one())

    def _create(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            version = self._schema_version(conn)
            if version is None:
                conn.execute(sa.text(f"CREATE TABLE {PREFIX}schema (version INTEGER NOT NULL)"))
                conn.execute(sa.text(f"INSERT INTO {PREFIX}schema VALUES (0)"))
                version = 0
            self._refuse_newer(version)
            for step in range(version, PG_SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    conn.execute(sa.text(statement))
            conn.execute(
                sa.text(f"UPDATE {PREFIX}schema SET version = :v"), {"v": PG_SCHEMA_VERSION}
            )
            conn.execute(
                sa.text(
                    f"INSERT INTO {PREFIX}batches VALUES (:batch, :now) ON CONFLICT DO NOTHING"
                ),
                {"batch": self.batch, "now": time.time()},
            )
            import secrets

            conn.execute(
                sa.text(
                    f"INSERT INTO {PREFIX}meta VALUES (:batch, 'salt', :salt), "
                    "(:batch, 'created', :now) ON CONFLICT DO NOTHING"
                ),
                {"batch": self.batch, "salt": secrets.token_hex(4), "now": str(time.time())},
            )

    def _refuse_newer(self, version: int) -> None:
        if version > PG_SCHEMA_VERSION:
            raise RunRefused(
                f"the ledger at {self.url} has schema {version}, newer than this videobatch "
                f"knows ({PG_SCHEMA_VERSION}): upgrade videobatch to use it"
            )

    def _check_readable(self) -> None:
        with self._engine.connect() as conn:
            version = self._schema_version(conn)
            if version is None:
                raise FileNotFoundError(f"no ledger at {self.url} (nothing was run there)")
            self._refuse_newer(version)
            found = conn.execute(
                sa.text(f"SELECT 1 FROM {PREFIX}batches WHERE batch = :batch"),
                {"batch": self.batch},
            ).first()
        if found is None:
            raise FileNotFoundError(
                f"no batch {self.batch!r} in the ledger at {self.url} (nothing was run there)"
            )


class _QTx:
    """A transaction of a PostgresLedger: statements get the backend's SQL words first."""

    def __init__(self, ledger: PostgresLedger, conn: Connection) -> None:
        self._ledger, self._tx = ledger, _PgTx(conn, ledger.batch)

    def run(self, sql: str, params: Mapping[str, Any]) -> tuple[int, list[Mapping[str, Any]]]:
        return self._tx.run(self._ledger._q(sql), params)


def list_batches(url: str) -> list[str]:
    """Every batch a PostgreSQL ledger holds, by name (empty for a database without one)."""
    parsed = _parse(url)
    engine = sa.create_engine(parsed, connect_args={"connect_timeout": 30})
    try:
        with engine.connect() as conn:
            exists = conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": f"{PREFIX}batches"})
            if exists.scalar() is None:
                return []
            rows = conn.execute(sa.text(f"SELECT batch FROM {PREFIX}batches ORDER BY batch"))
            return [str(r[0]) for r in rows]
    except SQLAlchemyError as exc:
        reason = scrub(str(getattr(exc, "orig", None) or exc), _secrets(parsed))
        raise RunRefused(f"cannot read the ledger at {redacted_url(parsed)}: {reason}") from None
    finally:
        engine.dispose()
