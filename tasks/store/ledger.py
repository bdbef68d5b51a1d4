"""The ledger: a durable record of every row's journey, so nothing is paid for twice or lost.

One SQLite file per output folder (`OUT/ledger.sqlite`, WAL mode, `synchronous=FULL`), written
by one process at a time (see `FolderLock`). The order of writes is the guarantee:

1. `record_intent` commits the idempotency key *before* the POST leaves.
2. `record_submitted` commits the task id the moment the answer arrives.
3. Everything after (polls, terminal state, cost, download, hash) is bookkeeping on a known task.

A crash between 1 and 2 leaves a row in state `intent`; the next run reports it as `unknown` and
never resends it unless asked (`--resubmit-unknown`, same key). Signed download URLs are
credentials and are never stored: a resumed run asks the API for a fresh link.

Money at risk (`committed_cost`, which seeds every run's budget and `videobatch status`) is,
per row, its real cost where known, else its estimate while it has (or may have) a task, plus
`earlier_posts_cost`: the estimates of this row's earlier POSTs whose outcome was never
settled. A doubtful row that is resent moves its estimate there in the same write as the new
intent, so both POSTs count until the doubt is settled:

* a plain 400 to the very same body proves no earlier POST created anything either: cleared;
* a resend that certainly never got through (429, 402, connect, 401, 404) says nothing of the
  first POST: the row goes back to `unknown` with the first estimate as its own again;
* a resend that gets a task id does NOT settle it. A vendor that honours the idempotency key
  answers with the first POST's task, one that does not has made a second one, and the
  answers look the same. So the first estimate stays counted for good, even after the resent
  task reports its real cost: the folder's committed cost may overstate what was charged (by
  at most those estimates, which the vendor's bill can settle) but never understates it.

Backends. `Ledger` holds every rule, as SQL written once, and opens the embedded default: one
SQLite file per output folder, which is that folder's one batch. `PostgresLedger`
(`tasks.store.ledger_postgres`) runs the same statements on PostgreSQL, where one database
holds many batches (a batch: one manifest into one output location), every row keyed by
`(batch, row_id)`. How to open one:

* `open_ledger(out)`: a run on a folder, as always (folder lock, then `OUT/ledger.sqlite`).
* `open_ledger("postgresql://user@host:5432/db", batch="s3://bucket/prefix")`: a run on one
  batch of a shared ledger; no folder lock, the rows are shared by claiming.
* `connect_ledger(target, batch=..., readonly=...)`: the same ledgers unlocked (what
  `Ledger(out, readonly=True)` is for a folder), e.g. for `videobatch status`.
Two connections were measured for SQLite before choosing: SQLAlchemy Core over the same file
was 10-20x slower per write and added ~0.7 s of import to every `videobatch status`, so SQLite
keeps the stdlib driver and only PostgreSQL loads SQLAlchemy (and psycopg 3).

Many runs on one batch (the primitives; the flows decide when to call them):
* `claim(owner, n, lease_s=...)` leases up to n rows needing work; `renew_lease` keeps them,
  and says which rows were lost; `release` gives them back. An expired lease frees its rows
  for another run; a row caught in `intent` when its lease ran out becomes `unknown` (never
  handed out). `record_intent(..., owner=...)` is refused (`LeaseLost`) once the lease is
  gone, so two runs can never both send one row.
* `reserve_budget(row, estimate, cap=..., hold_s=...)`: one transaction under the batch's lock
  checks committed cost plus every live reservation against the cap, so K runs together
  never pass it; `record_intent` turns the reservation into the row's own estimate.
* `stop_batch(kind, reason)` / `stopped()` / `clear_stop()`: the batch-wide stop of a 401
  ("auth") or 402 ("payment") that every run of the batch reads.

Schema and its upgrade path (SQLite; `meta.schema` is the version):
* 1: the first ledgers. 2: `rows.earlier_posts_cost`. 3: `rows.lease_owner`, `lease_until`,
  `reserved_cost`, `reserved_until` (claims and budget reservations).
* Opening a file for writing adds every missing column (`ALTER TABLE ... ADD COLUMN`, instant,
  no rows rewritten) and raises `meta.schema`; read-only opens read any version as it is (the
  missing columns read as empty). A newer videobatch only ever adds columns, so an older one
  can still read the file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from tasks.errors import LeaseLost as LeaseLost
from tasks.errors import LedgerLocked, RunRefused

# The states and their groupings live in tasks.store.states; they are re-exported here so code that
# has always imported them from the ledger keeps working.
from tasks.store.hashing import request_hash as request_hash
from tasks.store.states import AT_RISK
from tasks.store.states import DOUBTFUL as DOUBTFUL
from tasks.store.states import NEVER_SENT as NEVER_SENT
from tasks.store.states import TO_POLL as TO_POLL
from tasks.store.states import WITH_TASK as WITH_TASK
from tasks.store.states import State as State

LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = ".videobatch.lock"
# Meta keys of the heartbeats of a shared batch's runs: `member:<flow run id>`.
MEMBER_PREFIX = "member:"
SCHEMA_VERSION = 3


@dataclass(slots=True)
class RowRecord:
    """One row of the ledger, as stored."""

    row_id: str
    idx: int
    state: str = State.PENDING
    attempt: int = 0
    request_hash: str | None = None
    idempotency_key: str | None = None
    task_id: str | None = None
    api_status: str | None = None
    estimated_cost: float | None = None
    cost: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    intent_at: float | None = None
    submitted_at: float | None = None
    terminal_at: float | None = None
    api_created: float | None = None
    api_completed: float | None = None
    generation_s: float | None = None
    polls: int = 0
    url_expires_at: float | None = None
    video_path: str | None = None
    video_bytes: int | None = None
    video_sha256: str | None = None
    video_width: int | None = None
    video_height: int | None = None
    video_duration_s: float | None = None
    download_s: float | None = None
    run_id: str | None = None
    updated_at: float | None = None
    # Estimates of earlier POSTs of this row whose outcome is still unsettled (see the module).
    earlier_posts_cost: float | None = None


_COLUMNS = [f.name for f in fields(RowRecord)]
_TYPES = {
    "idx": "INTEGER",
    "attempt": "INTEGER",
    "polls": "INTEGER",
    "earlier_posts_cost": "REAL",
    "lease_until": "REAL",
    "reserved_until": "REAL",
}


def _column_sql(name: str) -> str:
    if name == "row_id":
        return "row_id TEXT PRIMARY KEY"
    kind = _TYPES.get(name) or (
        "REAL"
        if name.endswith(("_at", "_s", "cost", "created", "completed"))
        else "INTEGER"
        if name in {"video_bytes", "video_width", "video_height"}
        else "TEXT"
    )
    return f"{name} {kind}"


# Columns of the rows table that are not part of RowRecord (claims and reservations; schema 3).
_LEASE_COLUMNS = ["lease_owner", "lease_until", "reserved_cost", "reserved_until"]
_ALL_COLUMNS = _COLUMNS + _LEASE_COLUMNS
_AT_RISK_PARAMS = {f"risk{i}": str(s) for i, s in enumerate(sorted(AT_RISK))}
_AT_RISK_MARKS = ", ".join(f":{name}" for name in _AT_RISK_PARAMS)


# Rows a claim hands out unless told otherwise: what a plain run works on (send, poll,
# download). Doubtful, failed and rejected rows are resent only when a person asks.
CLAIMABLE: frozenset[str] = frozenset(
    {
        State.PENDING,
        State.SKIPPED_BUDGET,
        State.SKIPPED_PAYMENT,
        State.SUBMITTED,
        State.TIMEOUT,
        State.COMPLETED,
        State.DOWNLOAD_FAILED,
    }
)
STOP_KINDS = frozenset({"auth", "payment"})


@dataclass(frozen=True)
class Lease:
    owner: str
    until: float


@dataclass(frozen=True)
class Claim:
    """What `Ledger.claim` handed out: `rows` leased to `owner` until at least `until`, and
    `unknown`, rows a dead run left mid-POST that the claim turned `unknown` (not handed out)."""

    owner: str
    until: float
    rows: list[RowRecord]
    unknown: list[str]


@dataclass(frozen=True)
class BatchStop:
    kind: str
    reason: str
    at: float


def _plain(value: Any) -> Any:
    """A State (a str enum) stored as its plain text, whatever the driver makes of enums."""
    return str(value) if isinstance(value, State) else value


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection, ledger: Ledger) -> None:
        self._db, self._ledger = db, ledger

    def run(self, sql: str, params: Mapping[str, Any]) -> tuple[int, list[Mapping[str, Any]]]:
        cursor = self._db.execute(self._ledger._q(sql), {"batch": self._ledger.batch, **params})
        rows = cursor.fetchall()
        return cursor.rowcount, rows


class FolderLock:
    """An advisory lock on the output folder: exclusive for a plain run, shared for the
    members of a shared batch (runs started together by `generate-sharded`).

    `flock` dies with its process, so a crashed run's lock is taken over without any stale-lock
    guessing. A plain run takes it exclusive (`LOCK_EX`), so it is the folder's one writer;
    members take it shared (`LOCK_SH`), so any number of them work together while neither a
    plain run can join them nor they a plain run. (It does not hold across machines on NFS:
    give each machine its own folder.)
    """

    def __init__(self, folder: Path, *, shared: bool = False) -> None:
        self.path = folder / LOCK_FILE
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if self.shared:
                why = "a plain run, which must be the folder's only writer"
            else:
                why = (
                    "a shared batch's member runs (generate-sharded), which a plain run cannot join"
                )
            raise LedgerLocked(
                f"{self.path.parent} is in use by {holder} ({why}); wait for it to finish or "
                "stop it. Nothing was sent."
            ) from None
        who = "member of a shared batch: " if self.shared else ""
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{who}pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class EventRow(Protocol):
    """One stored event: `event["kind"]`, `event["row_id"]`, `event["at"]`, `event["detail"]`."""

    def __getitem__(self, key: str) -> Any: ...

    def keys(self) -> Any: ...


class Tx(Protocol):
    """One open write transaction of a backend: statements run in it commit together."""

    def run(self, sql: str, params: Mapping[str, Any]) -> tuple[int, list[Mapping[str, Any]]]:
        """Run one statement; its rowcount and the rows it returned (RETURNING, SELECT)."""
        ...


class Ledger:
    """Durable per-row state. Thread-safe; every write is its own committed transaction.

    This class holds every rule (the SQL of each read and write, written once) and opens the
    SQLite backend; `tasks.store.ledger_postgres.PostgresLedger` subclasses it and swaps only
    the connection (`_read`, `_write`), the schema and the few SQL words that differ
    (`_SQL_WORDS`). So both backends run the very same statements in the same order.
    """

    # Pieces of SQL that differ between backends, substituted into every statement.
    # `scope`: the WHERE term that confines a statement to this ledger's batch (a SQLite file
    # is one batch, so nothing); `bcol`/`bval`: the batch column of an INSERT.
    _SQL_WORDS: Mapping[str, str] = {
        "rows": "rows",
        "meta": "meta",
        "events": "events",
        "scope": "",
        "bcol": "",
        "bval": "",
        "lock": "",
        "now": ":now",
    }
    batch: str = ""
    # Whether a live lease protects a row in `intent` from being taken for a dead run's.
    _live_leases_guard_intent = False
    # A folder's SQLite ledger opened by a member of a shared batch (see `FolderLock`).
    _member = False

    def __init__(self, folder: str | Path, *, readonly: bool = False, shared: bool = False) -> None:
        """`shared`: this run is one member of a batch several runs share on this folder
        (they hold the folder lock shared): rows are claimed with leases, and a row in
        `intent` under a live lease is another member's POST under way, never taken over."""
        if shared:
            self._member = True
            self._live_leases_guard_intent = True
        self.folder = Path(folder)
        self.path = self.folder / LEDGER_FILE
        self._lock = threading.RLock()
        self.readonly = readonly
        self._sql_cache: dict[str, str] = {}
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no ledger in {self.folder} (nothing was run there)")
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(
                uri, uri=True, check_same_thread=False, timeout=30, isolation_level=None
            )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE, see
            # `_write`), so a write never starts as a reader and fails to upgrade.
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, timeout=30, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._create()
        self._db.row_factory = sqlite3.Row
        self._columns = {r[1] for r in self._db.execute("PRAGMA table_info(rows)").fetchall()}

    @property
    def shared(self) -> bool:
        """Whether several runs may work on this ledger at once, each claiming its rows with
        leases (a batch of a shared database, or a folder's ledger opened by the members of a
        shared batch), rather than one run under the folder's exclusive lock."""
        return bool(self.batch) or self._member

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r}, readonly={self.readonly})"

    # -- the connection: all a backend has to provide ---------------------------------------
    def _read(self, sql: str, params: Mapping[str, Any] = {}) -> list[Mapping[str, Any]]:
        with self._lock:
            return self._db.execute(self._q(sql), {"batch": self.batch, **params}).fetchall()

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        """One write transaction. BEGIN IMMEDIATE takes SQLite's one writer lock up front,
        so a read-then-write (a claim, a budget reservation) is atomic across processes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self._db, self)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _q(self, sql: str) -> str:
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = self._sql_cache[sql] = sql.format_map(self._SQL_WORDS)
        return cached

    def _lock_batch(self, tx: Tx) -> None:
        """Serialise read-then-write transactions of this batch (SQLite: BEGIN IMMEDIATE
        already has)."""

    def _create(self) -> None:
        with self._write() as tx:
            tx.run("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)", {})
            cols = ", ".join(_column_sql(c) for c in _ALL_COLUMNS)
            tx.run(f"CREATE TABLE IF NOT EXISTS rows ({cols})", {})
            have = {r[1] for r in self._db.execute("PRAGMA table_info(rows)").fetchall()}
            for column in _ALL_COLUMNS:
                if column not in have:  # a ledger from an older schema
                    tx.run(f"ALTER TABLE rows ADD COLUMN {_column_sql(column)}", {})
            tx.run(
                "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "at REAL, row_id TEXT, kind TEXT, detail TEXT)",
                {},
            )
            tx.run(
                "INSERT OR IGNORE INTO meta VALUES ('schema', :schema), ('salt', :salt), "
                "('created', :created)",
                {
                    "schema": str(SCHEMA_VERSION),
                    "salt": secrets.token_hex(4),
                    "created": str(time.time()),
                },
            )
            tx.run(
                "UPDATE meta SET value = :v WHERE key = 'schema' AND CAST(value AS INTEGER) < :n",
                {"v": str(SCHEMA_VERSION), "n": SCHEMA_VERSION},
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta -------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM {meta} WHERE {scope} key = :key", {"key": key})
        return None if not rows else str(rows[0]["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as tx:
            tx.run(
                "INSERT INTO {meta} ({bcol} key, value) VALUES ({bval} :key, :value) "
                "ON CONFLICT ({bcol} key) DO UPDATE SET value = excluded.value",
                {"key": key, "value": value},
            )

    # -- rows -------------------------------------------------------------------------------
    def _record_sql(self) -> str:
        # Only RowRecord's columns, and only those the file has (an old read-only file lacks
        # the newer ones; RowRecord's defaults stand in for them).
        return ", ".join(c for c in _COLUMNS if c in self._columns)

    def get(self, row_id: str) -> RowRecord | None:
        rows = self._read(
            f"SELECT {self._record_sql()} FROM {{rows}} WHERE {{scope}} row_id = :row_id",
            {"row_id": row_id},
        )
        return None if not rows else RowRecord(**dict(rows[0]))

    def all(self) -> dict[str, RowRecord]:
        rows = self._read(
            f"SELECT {self._record_sql()} FROM {{rows}} WHERE {{scope}} 1 = 1 ORDER BY idx"
        )
        return {r["row_id"]: RowRecord(**dict(r)) for r in rows}

    def ensure(self, row_id: str, idx: int) -> RowRecord:
        """The row's record, created as pending the first time the row is seen."""
        with self._write() as tx:
            tx.run(
                "INSERT INTO {rows} ({bcol} row_id, idx, state, attempt, polls, updated_at) "
                "VALUES ({bval} :row_id, :idx, :state, 0, 0, :now) "
                "ON CONFLICT ({bcol} row_id) DO UPDATE SET idx = excluded.idx",
                {"row_id": row_id, "idx": idx, "state": str(State.PENDING), "now": time.time()},
            )
        record = self.get(row_id)
        assert record is not None
        return record

    def ensure_many(self, rows: Iterable[tuple[str, int]], *, per_statement: int = 500) -> int:
        """`ensure` for many rows (row id, manifest index) in one transaction: what a run's
        open does for every row of its manifest. One commit instead of one per row (100,000
        rows took ~500 s of commits before the first request), multi-row statements, and an
        existing row is written only if its index moved. The number of rows written."""
        items = list(rows)
        written = 0
        now = time.time()
        with self._write() as tx:
            for start in range(0, len(items), per_statement):
                part = items[start : start + per_statement]
                params: dict[str, Any] = {"state": str(State.PENDING), "now": now}
                values = []
                for i, (row_id, idx) in enumerate(part):
                    params[f"r{i}"], params[f"i{i}"] = row_id, idx
                    values.append(f"({{bval}} :r{i}, :i{i}, :state, 0, 0, :now)")
                count, _ = tx.run(
                    "INSERT INTO {rows} ({bcol} row_id, idx, state, attempt, polls, updated_at) "
                    f"VALUES {', '.join(values)} "
                    "ON CONFLICT ({bcol} row_id) DO UPDATE SET idx = excluded.idx "
                    "WHERE {rows}.idx <> excluded.idx",
                    params,
                )
                written += max(count, 0)
        return written

    def update(self, row_id: str, event: str | None = None, **values: Any) -> None:
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"not ledger columns: {sorted(unknown)}")
        values["updated_at"] = time.time()
        with self._write() as tx:
            self._update_in(tx, row_id, event, values)

    def update_held(self, row_id: str, owner: str, event: str | None = None, **values: Any) -> bool:
        """`update`, applied only while `owner` still holds the row's lease; False, changing
        nothing, once another run took it over. A run whose lease lapsed (a stalled process)
        must not turn the row another run has since sent back into a sendable state."""
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"not ledger columns: {sorted(unknown)}")
        values["updated_at"] = time.time()
        assignments = ", ".join(f"{k} = :v_{k}" for k in values)
        params = {f"v_{k}": _plain(v) for k, v in values.items()}
        with self._write() as tx:
            count, _ = tx.run(
                f"UPDATE {{rows}} SET {assignments} WHERE {{scope}} row_id = :row_id "
                "AND lease_owner = :owner",
                {**params, "row_id": row_id, "owner": owner},
            )
            if count != 1:
                return False
            if event:
                detail = {k: v for k, v in values.items() if k != "updated_at"}
                self._event_in(tx, row_id, event, detail, values["updated_at"])
        return True

    def renew_request(
        self,
        row_id: str,
        expected: RowRecord,
        values: Mapping[str, Any],
        *,
        owner: str | None = None,
        event: str = "request-changed",
    ) -> bool:
        """Write `values` (a changed unpaid row made a new request) only if the row is still
        what the caller judged (`expected`'s state, attempt, request hash and task id) and, on
        a shared ledger, no live lease of a run other than `owner` holds it; the event is
        written only then. False, changing nothing, otherwise: another run renewed, sent or
        is sending the row meanwhile, and a renewal from the older reading would wipe its
        (paid) task and send the row again."""
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"not ledger columns: {sorted(unknown)}")
        now = time.time()
        fields_ = {**values, "updated_at": now}
        assignments = ", ".join(f"{k} = :v_{k}" for k in fields_)
        params: dict[str, Any] = {f"v_{k}": _plain(v) for k, v in fields_.items()}
        params.update(row_id=row_id, e_state=str(expected.state), e_attempt=expected.attempt)
        # NULL-safe by construction (no typed NULL parameter, which PostgreSQL cannot infer).
        guards = ["state = :e_state", "attempt = :e_attempt"]
        for column in ("request_hash", "task_id"):
            seen = getattr(expected, column)
            if seen is None:
                guards.append(f"{column} IS NULL")
            else:
                guards.append(f"{column} = :e_{column}")
                params[f"e_{column}"] = seen
        if self.shared:
            guards.append("(lease_until IS NULL OR lease_until <= {now} OR lease_owner = :owner)")
            params.update(owner=owner or "", now=now)
        with self._write() as tx:
            count, _ = tx.run(
                f"UPDATE {{rows}} SET {assignments} WHERE {{scope}} row_id = :row_id AND "
                + " AND ".join(guards),
                params,
            )
            if count != 1:
                return False
            detail = {k: v for k, v in values.items()}
            self._event_in(tx, row_id, event, detail, now)
        return True

    def _update_in(self, tx: Tx, row_id: str, event: str | None, values: dict[str, Any]) -> None:
        """`update` inside an open transaction (column names checked by the caller)."""
        assignments = ", ".join(f"{k} = :v_{k}" for k in values)
        params = {f"v_{k}": _plain(v) for k, v in values.items()}
        count, _ = tx.run(
            f"UPDATE {{rows}} SET {assignments} WHERE {{scope}} row_id = :row_id",
            {**params, "row_id": row_id},
        )
        if count != 1:
            raise KeyError(f"row {row_id!r} is not in the ledger")
        if event:
            detail = {k: v for k, v in values.items() if k != "updated_at"}
            self._event_in(tx, row_id, event, detail, values["updated_at"])

    def _event_in(
        self, tx: Tx, row_id: str, kind: str, detail: Mapping[str, Any], at: float
    ) -> None:
        tx.run(
            "INSERT INTO {events} ({bcol} at, row_id, kind, detail) "
            "VALUES ({bval} :at, :row_id, :kind, :detail)",
            {"at": at, "row_id": row_id, "kind": kind, "detail": json.dumps(detail, default=str)},
        )

    def idempotency_key(self, row_id: str, req_hash: str, attempt: int) -> str:
        """Stable per (batch, row, request, attempt): a resend of the same attempt reuses it.
        (A folder's SQLite ledger is one batch, so: stable per folder.)"""
        salt = self.meta("salt") or ""
        digest = hashlib.sha256(f"{salt}:{row_id}:{req_hash}:{attempt}".encode()).hexdigest()
        return f"vb-{row_id[:100]}-a{attempt}-{digest[:24]}"

    # -- the two writes that guard money -----------------------------------------------------
    def record_intent(
        self,
        row_id: str,
        *,
        attempt: int,
        req_hash: str,
        key: str,
        estimated_cost: float,
        run_id: str | None,
        earlier_posts_cost: float | None = None,
        owner: str | None = None,
    ) -> None:
        """The POST is about to leave. A resend of a doubtful row passes `earlier_posts_cost`
        (what was there plus the first POST's estimate), written in the same transaction, so
        no moment exists in which the first POST's money is uncounted.

        A run that claims rows passes `owner`: the intent is then written only while that
        owner's lease on the row is live, else `LeaseLost` is raised and nothing may be sent
        (another run may own the row now). The row's budget reservation, if any, ends here:
        from now on its estimate counts as the row's own money."""
        extra = {} if earlier_posts_cost is None else {"earlier_posts_cost": earlier_posts_cost}
        values = dict(
            **extra,
            state=State.INTENT,
            attempt=attempt,
            request_hash=req_hash,
            idempotency_key=key,
            estimated_cost=estimated_cost,
            intent_at=time.time(),
            task_id=None,
            api_status=None,
            cost=None,
            error_code=None,
            error_message=None,
            submitted_at=None,
            terminal_at=None,
            generation_s=None,
            polls=0,
            url_expires_at=None,
            run_id=run_id,
            reserved_cost=None,
            reserved_until=None,
            updated_at=time.time(),
        )
        with self._write() as tx:
            if owner is not None:
                count, _ = tx.run(
                    "UPDATE {rows} SET lease_until = lease_until WHERE {scope} row_id = :row_id "
                    "AND lease_owner = :owner AND lease_until > {now}",
                    {"row_id": row_id, "owner": owner, "now": time.time()},
                )
                if count != 1:
                    raise LeaseLost(
                        f"row {row_id!r} is no longer leased to {owner}: not sent (another run "
                        "may own it now)"
                    )
            self._update_in(tx, row_id, "intent", values)

    def record_submitted(self, row_id: str, *, task_id: str, status: str) -> bool:
        """The POST's answer: the row now has task `task_id`. False, overwriting nothing, when
        the row already holds another task: a second POST of one row made a second task (a
        run whose lease ran out mid-POST answered late, after another run resent the row, to
        a vendor that ignores the idempotency key). The first task stays the row's, so its
        video is fetched; the second is kept in a `second-task` event, never forgotten."""
        now = time.time()
        values = {
            "state": str(State.SUBMITTED),
            "task_id": task_id,
            "api_status": status,
            "submitted_at": now,
            "updated_at": now,
        }
        with self._write() as tx:
            count, _ = tx.run(
                "UPDATE {rows} SET state = :v_state, task_id = :v_task_id, "
                "api_status = :v_api_status, submitted_at = :v_submitted_at, "
                "updated_at = :v_updated_at WHERE {scope} row_id = :row_id "
                "AND (task_id IS NULL OR task_id = :v_task_id)",
                {**{f"v_{k}": v for k, v in values.items()}, "row_id": row_id},
            )
            if count == 1:
                detail = {k: v for k, v in values.items() if k != "updated_at"}
                self._event_in(tx, row_id, "submitted", detail, now)
                return True
            _, found = tx.run(
                "SELECT row_id FROM {rows} WHERE {scope} row_id = :row_id", {"row_id": row_id}
            )
            if not found:
                raise KeyError(f"row {row_id!r} is not in the ledger")
            self._event_in(tx, row_id, "second-task", {"task_id": task_id, "status": status}, now)
            return False

    def mark_doubtful_as_unknown(self) -> list[str]:
        """Rows left in `intent` by a dead process: their POST outcome is unknown.

        In a folder's SQLite ledger the folder lock proves every earlier writer dead, so every
        `intent` row is doubtful. In a shared batch a row in `intent` under a live lease is
        another run's POST under way, so only rows whose lease ran out (or never had one)
        are taken. Each row changes only if it is still in `intent` at that moment, so a task
        id its run records meanwhile is never overwritten."""
        with self._write() as tx:
            return self._doubtful_to_unknown_in(
                tx,
                "the run stopped while this row's POST was under way",
                "crash-recovered",
                guard=self._live_leases_guard_intent,
            )

    def _doubtful_to_unknown_in(
        self, tx: Tx, message: str, event: str, *, guard: bool
    ) -> list[str]:
        now = time.time()
        live = " AND (lease_until IS NULL OR lease_until <= {now})" if guard else ""
        values = {
            "state": str(State.UNKNOWN),
            "error_code": "submit_outcome_unknown",
            "error_message": message,
            "updated_at": now,
        }
        _, rows = tx.run(
            "UPDATE {rows} SET state = :v_state, error_code = :v_error_code, "
            "error_message = :v_error_message, updated_at = :v_updated_at "
            f"WHERE {{scope}} state = :intent{live} RETURNING row_id, idx",
            {**{f"v_{k}": v for k, v in values.items()}, "intent": str(State.INTENT), "now": now},
        )
        ids = [str(r["row_id"]) for r in sorted(rows, key=lambda r: r["idx"])]
        detail = {k: v for k, v in values.items() if k != "updated_at"}
        for row_id in ids:
            self._event_in(tx, row_id, event, detail, now)
        return ids

    # -- claims: many runs on one batch ----------------------------------------------------
    def claim(
        self,
        owner: str,
        limit: int,
        *,
        lease_s: float,
        states: Iterable[str] = CLAIMABLE,
        unknown_before: float | None = None,
    ) -> Claim:
        """Lease up to `limit` rows that need work (`states`, in manifest order) to `owner`.

        A row is handed out when nobody holds it: it has no lease, or its lease ran out (its
        run died or stopped renewing). On PostgreSQL the rows are picked with `FOR UPDATE
        SKIP LOCKED`, so runs claiming at the same moment take different rows and never wait
        for each other; on SQLite the write lock (BEGIN IMMEDIATE) makes claims one at a
        time. Rows caught in `intent` (a POST under way) whose lease ran out become `unknown`
        in the same transaction and are listed in `Claim.unknown`: never handed out by this
        claim, even one whose `states` include `unknown` (a person's resend decision is about
        the rows they saw), since their POST may have made a paid task; with `unknown_before`
        (the run's start, when it resends unknown rows) no later claim of that run hands them
        out either: only rows already `unknown` by then are the person's decision. Rows in `intent`
        under a live lease are left alone. The lease clock is the database's on PostgreSQL
        (one clock for every worker), this machine's on SQLite."""
        if limit < 0 or not lease_s >= 0:
            raise ValueError(f"claim needs limit >= 0 and lease_s >= 0, not {limit}, {lease_s}")
        wanted = sorted({str(s) for s in states} - {State.INTENT})
        marks = ", ".join(f":st{i}" for i in range(len(wanted))) or "NULL"
        params: dict[str, Any] = {f"st{i}": s for i, s in enumerate(wanted)}
        now = time.time()
        with self._write() as tx:
            unknown = self._doubtful_to_unknown_in(
                tx,
                "the run holding this row stopped renewing its lease while its POST was under way",
                "lease-expired",
                guard=True,
            )
            # Rows that became unknown just now are not handed out even to a run that asks
            # for unknown rows: the person who asked did not know of them.
            not_these, fresh_params = self._only(unknown)
            fresh = (
                not_these.replace(" AND row_id IN", " AND row_id NOT IN") + " " if unknown else ""
            )
            params.update(fresh_params)
            if unknown_before is not None:
                fresh += "AND (state <> :unknown OR updated_at <= :unknown_before) "
                params.update(unknown=str(State.UNKNOWN), unknown_before=unknown_before)
            _, rows = tx.run(
                # Picked once, in a materialised CTE: as an IN (subquery) PostgreSQL may run
                # the pick again per row and lease more than `limit`.
                "WITH picked AS MATERIALIZED (SELECT row_id FROM {rows} WHERE {scope} "
                f"state IN ({marks}) AND (lease_until IS NULL OR lease_until <= {{now}}) "
                f"{fresh}ORDER BY idx LIMIT :limit {{lock}}) "
                "UPDATE {rows} SET lease_owner = :owner, lease_until = {now} + :lease_s "
                "WHERE {scope} row_id IN (SELECT row_id FROM picked) "
                f"RETURNING lease_until, {self._record_sql()}",
                {**params, "owner": owner, "lease_s": lease_s, "limit": limit, "now": now},
            )
        until = min((float(r["lease_until"]) for r in rows), default=now + lease_s)
        records = sorted(
            (RowRecord(**{k: r[k] for k in r.keys() if k != "lease_until"}) for r in rows),  # noqa: SIM118 (a sqlite3.Row iterates values)
            key=lambda r: r.idx,
        )
        return Claim(owner=owner, until=until, rows=records, unknown=unknown)

    def renew_lease(
        self, owner: str, *, lease_s: float, row_ids: Iterable[str] | None = None
    ) -> list[str]:
        """Extend `owner`'s leases (all of them, or `row_ids`) and its budget reservations to
        `lease_s` from now; the rows it still holds. A row missing from the answer was taken
        over by another run after its lease ran out: stop working on it."""
        only, params = self._only(row_ids)
        with self._write() as tx:
            _, rows = tx.run(
                "UPDATE {rows} SET lease_until = {now} + :lease_s, reserved_until = CASE WHEN "
                "reserved_cost IS NULL THEN reserved_until ELSE {now} + :lease_s END "
                f"WHERE {{scope}} lease_owner = :owner{only} RETURNING row_id",
                {**params, "owner": owner, "lease_s": lease_s, "now": time.time()},
            )
        return sorted(str(r["row_id"]) for r in rows)

    def release(self, owner: str, row_ids: Iterable[str] | None = None) -> list[str]:
        """Give back `owner`'s leases (all, or `row_ids`) and the budget reservations on them
        that never became an intent; the rows released."""
        only, params = self._only(row_ids)
        with self._write() as tx:
            _, rows = tx.run(
                "UPDATE {rows} SET lease_owner = NULL, lease_until = NULL, reserved_cost = NULL, "
                f"reserved_until = NULL WHERE {{scope}} lease_owner = :owner{only} "
                "RETURNING row_id",
                {**params, "owner": owner},
            )
        return sorted(str(r["row_id"]) for r in rows)

    def lease(self, row_id: str) -> Lease | None:
        """Who holds the row and until when (seconds since the epoch), or None."""
        if "lease_owner" not in self._columns:
            return None
        rows = self._read(
            "SELECT lease_owner, lease_until FROM {rows} WHERE {scope} row_id = :row_id",
            {"row_id": row_id},
        )
        if not rows or rows[0]["lease_owner"] is None:
            return None
        return Lease(str(rows[0]["lease_owner"]), float(rows[0]["lease_until"]))

    @staticmethod
    def _only(row_ids: Iterable[str] | None) -> tuple[str, dict[str, Any]]:
        if row_ids is None:
            return "", {}
        ids = list(row_ids)
        params = {f"id{i}": r for i, r in enumerate(ids)}
        return f" AND row_id IN ({', '.join(':' + k for k in params) or 'NULL'})", params

    # -- the budget as one reservation in the ledger ------------------------------------------
    def reserve_budget(
        self, row_id: str, estimate: float, *, cap: float | None, hold_s: float
    ) -> bool:
        """Reserve `estimate` for sending `row_id`, if committed cost plus every live
        reservation of the batch plus it stays within `cap`; else change nothing and return
        False. One transaction that holds the batch's lock (PostgreSQL: the batch row `FOR
        UPDATE`; SQLite: the write lock), so K runs reserving at once can never pass `cap`.
        The reservation lives `hold_s` seconds (renewed with the row's lease), ends at the
        row's `record_intent` (its estimate then counts as the row's own) or at `release`.
        A NaN anywhere refuses rather than admits."""
        now = time.time()
        with self._write() as tx:
            self._lock_batch(tx)
            _, rows = tx.run(
                f"SELECT {self._committed_sql()} + COALESCE(SUM(CASE WHEN reserved_cost IS NOT "
                "NULL AND reserved_until > {now} AND row_id <> :row_id THEN reserved_cost "
                "ELSE 0 END), 0) AS total FROM {rows} WHERE {scope} 1 = 1",
                {**_AT_RISK_PARAMS, "row_id": row_id, "now": now},
            )
            total = float(rows[0]["total"])
            over = cap is not None and not total + estimate <= cap + 1e-9
            if math.isnan(estimate) or over:
                return False
            count, _ = tx.run(
                "UPDATE {rows} SET reserved_cost = :estimate, reserved_until = {now} + :hold_s "
                "WHERE {scope} row_id = :row_id",
                {"estimate": estimate, "hold_s": hold_s, "row_id": row_id, "now": now},
            )
            if count != 1:
                raise KeyError(f"row {row_id!r} is not in the ledger")
        return True

    def release_budget(self, row_id: str, *, owner: str | None = None) -> None:
        """Drop the row's reservation (it will not be sent after all). A run that claims rows
        passes `owner`: the reservation is dropped only while the row is still leased to it,
        so a run that lost the row never wipes the reservation of the run that took it over."""
        fence = "" if owner is None else " AND lease_owner = :owner"
        with self._write() as tx:
            tx.run(
                "UPDATE {rows} SET reserved_cost = NULL, reserved_until = NULL "
                f"WHERE {{scope}} row_id = :row_id{fence}",
                {"row_id": row_id, "owner": owner},
            )

    def reserved_cost(self) -> float:
        """The batch's live budget reservations (not yet counted in `committed_cost`)."""
        if "reserved_cost" not in self._columns:
            return 0.0
        rows = self._read(
            "SELECT COALESCE(SUM(reserved_cost), 0) AS total FROM {rows} WHERE {scope} "
            "reserved_cost IS NOT NULL AND reserved_until > {now}",
            {"now": time.time()},
        )
        return float(rows[0]["total"])

    # -- the batch's stop flag -------------------------------------------------------------
    def stop_batch(self, kind: str, reason: str) -> BatchStop:
        """Stop every run of the batch: `kind` "auth" (a 401: nothing more is sent at all) or
        "payment" (a 402: no new submissions, in-flight tasks carry on). The first stop
        stands until `clear_stop`; the stop in force is returned."""
        if kind not in STOP_KINDS:
            raise ValueError(f"stop kind must be one of {sorted(STOP_KINDS)}, not {kind!r}")
        flag = json.dumps({"kind": kind, "reason": reason, "at": time.time()})
        with self._write() as tx:
            tx.run(
                "INSERT INTO {meta} ({bcol} key, value) VALUES ({bval} 'stop', :flag) "
                "ON CONFLICT ({bcol} key) DO NOTHING",
                {"flag": flag},
            )
        stop = self.stopped()
        assert stop is not None
        return stop

    def stopped(self) -> BatchStop | None:
        """The batch's stop flag, which every run of the batch reads before sending."""
        value = self.meta("stop")
        if value is None:
            return None
        data = json.loads(value)
        return BatchStop(str(data["kind"]), str(data["reason"]), float(data["at"]))

    def clear_stop(self) -> None:
        """Lift the stop (a person fixed the key or topped up the balance)."""
        with self._write() as tx:
            tx.run("DELETE FROM {meta} WHERE {scope} key = 'stop'", {})

    # -- members' heartbeats -------------------------------------------------------------
    def beat(self, member: str) -> None:
        """Say that run `member` is alive now (the ledger's clock: the database's on
        PostgreSQL). A run on a shared batch beats every few seconds from a thread of its
        own, so the run that started it can tell a live member from one whose process died
        while the server still shows it Running."""
        with self._write() as tx:
            tx.run(
                "INSERT INTO {meta} ({bcol} key, value) VALUES ({bval} :key, CAST({now} AS TEXT)) "
                "ON CONFLICT ({bcol} key) DO UPDATE SET value = excluded.value",
                {"key": MEMBER_PREFIX + member, "now": time.time()},
            )

    def leave(self, member: str) -> None:
        """Run `member` ended: its heartbeat goes."""
        with self._write() as tx:
            tx.run("DELETE FROM {meta} WHERE {scope} key = :key", {"key": MEMBER_PREFIX + member})

    def members(self) -> dict[str, float]:
        """Each run with a heartbeat in the batch, and seconds since its last beat (by the
        ledger's clock, so machines' clocks never matter on PostgreSQL)."""
        rows = self._read(
            "SELECT key, value, {now} AS now FROM {meta} WHERE {scope} key LIKE :prefix",
            {"prefix": MEMBER_PREFIX + "%", "now": time.time()},
        )
        return {
            str(r["key"])[len(MEMBER_PREFIX) :]: max(0.0, float(r["now"]) - float(r["value"]))
            for r in rows
        }

    # -- money ------------------------------------------------------------------------------
    def committed_cost(self) -> float:
        """Money spent or at risk: the real cost where known, the estimate where not (yet),
        plus the estimates of earlier POSTs whose outcome is unsettled (see the module)."""
        rows = self._read(
            f"SELECT {self._committed_sql()} AS total FROM {{rows}} WHERE {{scope}} 1 = 1",
            _AT_RISK_PARAMS,
        )
        return float(rows[0]["total"])

    def _committed_sql(self) -> str:
        # A ledger of schema 1 opened read-only has no such column, and nothing in it.
        earlier = (
            " + COALESCE(earlier_posts_cost, 0)" if "earlier_posts_cost" in self._columns else ""
        )
        return (
            "COALESCE(SUM(CASE WHEN cost IS NOT NULL THEN cost "
            f"WHEN state IN ({_AT_RISK_MARKS}) THEN COALESCE(estimated_cost, 0) "
            f"ELSE 0 END{earlier}), 0)"
        )

    def counts(self) -> dict[str, int]:
        rows = self._read(
            "SELECT state, COUNT(*) AS n FROM {rows} WHERE {scope} 1 = 1 GROUP BY state"
        )
        return {str(r["state"]): int(r["n"]) for r in rows}

    def spent(self) -> float:
        rows = self._read("SELECT COALESCE(SUM(cost), 0) AS total FROM {rows} WHERE {scope} 1 = 1")
        return float(rows[0]["total"])

    def events(self, row_id: str | None = None) -> Iterator[EventRow]:
        """The row's (or every row's) events, oldest first (`seq`, `at`, `row_id`, `kind`,
        `detail`), each readable as `event["kind"]`."""
        cols = "seq, at, row_id, kind, detail"
        if row_id is None:
            rows = self._read(f"SELECT {cols} FROM {{events}} WHERE {{scope}} 1 = 1 ORDER BY seq")
        else:
            rows = self._read(
                f"SELECT {cols} FROM {{events}} WHERE {{scope}} row_id = :row_id ORDER BY seq",
                {"row_id": row_id},
            )
        yield from rows


def is_ledger_url(target: object) -> bool:
    """Whether `target` names a database ledger (a URL) rather than an output folder."""
    return isinstance(target, str) and target.split("://", 1)[0].lower().split("+")[0] in {
        "postgresql",
        "postgres",
    }


def _refuse_batch_of_a_folder(target: str | Path, batch: str | None) -> None:
    if batch is None:
        return
    if "://" in str(target):
        # Never quoted: a mistyped scheme may sit in front of a password.
        raise RunRefused(
            "the ledger URL is not one videobatch knows: use postgresql://user@host:5432/db "
            "(or postgresql+psycopg://...)"
        )
    raise RunRefused(f"{target} is a folder, whose SQLite ledger is one batch: pass no batch")


def connect_ledger(
    target: str | Path, *, batch: str | None = None, readonly: bool = False
) -> Ledger:
    """The ledger `target` names, opened but not locked: a folder's SQLite file, or the batch
    `batch` of the PostgreSQL ledger at a `postgresql://` URL (see `open_ledger`)."""
    if is_ledger_url(target):
        if not batch:
            raise RunRefused(
                "a PostgreSQL ledger holds many batches: say which one (batch=..., the output "
                "location the manifest runs into)"
            )
        from tasks.store.ledger_postgres import PostgresLedger

        return PostgresLedger(str(target), batch=batch, readonly=readonly)
    _refuse_batch_of_a_folder(target, batch)
    return Ledger(target, readonly=readonly)


@contextmanager
def open_ledger(
    target: str | Path, batch: str | None = None, *, shared: bool = False
) -> Iterator[Ledger]:
    """Open a ledger for a run, and recover rows a dead run left mid-POST.

    * A folder (`open_ledger(out)`, as always): lock it (`FolderLock`; a second run on it is
      refused with `LedgerLocked`), open `out/ledger.sqlite`; every row left in `intent` is
      now `unknown`, since the exclusive lock proves every earlier writer dead.
    * A folder as a member of a shared batch (`open_ledger(out, shared=True)`): the lock is
      taken shared (other members may hold it too, a plain run may not), the ledger is
      `shared`; rows in `intent` are left to the claims (`Ledger.claim`), which turn those
      whose lease ran out `unknown`: a row under a live lease is another member's POST.
    * A PostgreSQL URL and a batch (`open_ledger("postgresql://u@db:5432/vb", batch="s3://b/x")`):
      no folder lock, since many runs share a batch by claiming rows (`Ledger.claim`); the
      schema is created or migrated, the batch registered; rows in `intent` whose lease ran
      out are now `unknown`, rows under another run's live lease are left to it.
    """
    if is_ledger_url(target):
        ledger = connect_ledger(target, batch=batch)
        try:
            ledger.mark_doubtful_as_unknown()
            yield ledger
        finally:
            ledger.close()
        return
    _refuse_batch_of_a_folder(target, batch)
    folder = Path(target)
    with FolderLock(folder, shared=shared):
        ledger = Ledger(folder, shared=shared)
        try:
            if not shared:
                # A member leaves a dead member's mid-POST rows to its claims, which turn
                # them `unknown` after its start: a resending member (--resubmit-unknown is
                # about rows unknown when the person asked) then never resends them.
                ledger.mark_doubtful_as_unknown()
            yield ledger
        finally:
            ledger.close()
