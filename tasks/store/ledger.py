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

Ledgers written before this column existed (schema 1) gain it, empty, when opened for writing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from apimart.models import VideoRequest
from tasks.errors import LedgerLocked

# The states and their groupings live in tasks.store.states; they are re-exported here so code that
# has always imported them from the ledger keeps working.
from tasks.store.states import AT_RISK
from tasks.store.states import DOUBTFUL as DOUBTFUL
from tasks.store.states import NEVER_SENT as NEVER_SENT
from tasks.store.states import TO_POLL as TO_POLL
from tasks.store.states import WITH_TASK as WITH_TASK
from tasks.store.states import State as State

LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = ".videobatch.lock"
SCHEMA_VERSION = 2


@dataclass
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
_TYPES = {"idx": "INTEGER", "attempt": "INTEGER", "polls": "INTEGER", "earlier_posts_cost": "REAL"}


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


def request_hash(request: VideoRequest) -> str:
    """A stable fingerprint of what a row asks for (images by content, not by bytes stored)."""
    payload = request.to_payload()
    payload["image_urls"] = [hashlib.sha256(u.encode()).hexdigest() for u in request.image_urls]
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


class FolderLock:
    """An exclusive advisory lock on the output folder.

    `flock` dies with its process, so a crashed run's lock is taken over without any stale-lock
    guessing. (It does not hold across machines on NFS: give each machine its own folder.)
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LedgerLocked(
                f"{self.path.parent} is in use by {holder}; wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
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


class Ledger:
    """Durable per-row state. Thread-safe; every write is its own committed transaction."""

    def __init__(self, folder: str | Path, *, readonly: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LEDGER_FILE
        self._lock = threading.RLock()
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no ledger in {self.folder} (nothing was run there)")
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._create()
        self._db.row_factory = sqlite3.Row
        self._columns = {r[1] for r in self._db.execute("PRAGMA table_info(rows)").fetchall()}

    def _create(self) -> None:
        with self._lock, self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            cols = ", ".join(_column_sql(c) for c in _COLUMNS)
            self._db.execute(f"CREATE TABLE IF NOT EXISTS rows ({cols})")
            have = {r[1] for r in self._db.execute("PRAGMA table_info(rows)").fetchall()}
            for column in _COLUMNS:
                if column not in have:  # a ledger from an older schema
                    self._db.execute(f"ALTER TABLE rows ADD COLUMN {_column_sql(column)}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "at REAL, row_id TEXT, kind TEXT, detail TEXT)"
            )
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('salt', ?), ('created', ?)",
                (str(SCHEMA_VERSION), secrets.token_hex(4), str(time.time())),
            )
            self._db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema' AND CAST(value AS INTEGER) < ?",
                (str(SCHEMA_VERSION), SCHEMA_VERSION),
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
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- rows -------------------------------------------------------------------------------
    def get(self, row_id: str) -> RowRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM rows WHERE row_id = ?", (row_id,)).fetchone()
        return None if row is None else RowRecord(**dict(row))

    def all(self) -> dict[str, RowRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM rows ORDER BY idx").fetchall()
        return {r["row_id"]: RowRecord(**dict(r)) for r in rows}

    def ensure(self, row_id: str, idx: int) -> RowRecord:
        """The row's record, created as pending the first time the row is seen."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO rows (row_id, idx, state, attempt, polls, updated_at) "
                "VALUES (?, ?, ?, 0, 0, ?)",
                (row_id, idx, State.PENDING, time.time()),
            )
            self._db.execute("UPDATE rows SET idx = ? WHERE row_id = ?", (idx, row_id))
        record = self.get(row_id)
        assert record is not None
        return record

    def update(self, row_id: str, event: str | None = None, **values: Any) -> None:
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"not ledger columns: {sorted(unknown)}")
        values["updated_at"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._lock, self._db:
            cursor = self._db.execute(
                f"UPDATE rows SET {assignments} WHERE row_id = ?", (*values.values(), row_id)
            )
            if cursor.rowcount != 1:
                raise KeyError(f"row {row_id!r} is not in the ledger")
            if event:
                detail = {k: v for k, v in values.items() if k != "updated_at"}
                self._db.execute(
                    "INSERT INTO events (at, row_id, kind, detail) VALUES (?, ?, ?, ?)",
                    (values["updated_at"], row_id, event, json.dumps(detail, default=str)),
                )

    def idempotency_key(self, row_id: str, req_hash: str, attempt: int) -> str:
        """Stable per (folder, row, request, attempt): a resend of the same attempt reuses it."""
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
    ) -> None:
        """The POST is about to leave. A resend of a doubtful row passes `earlier_posts_cost`
        (what was there plus the first POST's estimate), written in the same transaction, so
        no moment exists in which the first POST's money is uncounted."""
        extra = {} if earlier_posts_cost is None else {"earlier_posts_cost": earlier_posts_cost}
        self.update(
            row_id,
            "intent",
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
        )

    def record_submitted(self, row_id: str, *, task_id: str, status: str) -> None:
        self.update(
            row_id,
            "submitted",
            state=State.SUBMITTED,
            task_id=task_id,
            api_status=status,
            submitted_at=time.time(),
        )

    def mark_doubtful_as_unknown(self) -> list[str]:
        """Rows left in `intent` by a dead process: their POST outcome is unknown."""
        with self._lock:
            rows = self._db.execute(
                "SELECT row_id FROM rows WHERE state = ?", (State.INTENT,)
            ).fetchall()
        ids = [r[0] for r in rows]
        for row_id in ids:
            self.update(
                row_id,
                "crash-recovered",
                state=State.UNKNOWN,
                error_code="submit_outcome_unknown",
                error_message="the run stopped while this row's POST was under way",
            )
        return ids

    # -- money ------------------------------------------------------------------------------
    def committed_cost(self) -> float:
        """Money spent or at risk: the real cost where known, the estimate where not (yet),
        plus the estimates of earlier POSTs whose outcome is unsettled (see the module)."""
        at_risk = sorted(AT_RISK)
        marks = ", ".join("?" for _ in at_risk)
        # A ledger of schema 1 opened read-only has no such column, and nothing in it.
        earlier = (
            " + COALESCE(earlier_posts_cost, 0)" if "earlier_posts_cost" in self._columns else ""
        )
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(CASE WHEN cost IS NOT NULL THEN cost "
                f"WHEN state IN ({marks}) THEN COALESCE(estimated_cost, 0) "
                f"ELSE 0 END{earlier}), 0) FROM rows",
                at_risk,
            ).fetchone()
        return float(row[0])

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM rows GROUP BY state").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def spent(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(cost), 0) FROM rows").fetchone()
        return float(row[0])

    def events(self, row_id: str | None = None) -> Iterator[sqlite3.Row]:
        with self._lock:
            if row_id is None:
                rows = self._db.execute("SELECT * FROM events ORDER BY seq").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM events WHERE row_id = ? ORDER BY seq", (row_id,)
                ).fetchall()
        yield from rows


@contextmanager
def open_ledger(folder: str | Path) -> Iterator[Ledger]:
    """Lock the folder, open its ledger, and recover rows a dead run left mid-POST."""
    folder = Path(folder)
    with FolderLock(folder):
        ledger = Ledger(folder)
        try:
            ledger.mark_doubtful_as_unknown()
            yield ledger
        finally:
            ledger.close()
