"""Every error videobatch itself raises, in one tree, with what the person running it should do.

    VideobatchError                 root: the command line turns every one into one line
    │                               (`videobatch.console.failure`), never a traceback
    ├── RunRefused                  the run cannot start; NOTHING WAS SENT (exit 2). Do what
    │   │                           the message says (set a key, fix the key, pick another
    │   │                           --out) and run the same command again
    │   └── ManifestConflict        OUT was run with another version of this manifest (rows
    │                               moved, or none of its paid rows is asked for unchanged):
    │                               restore the manifest or its row ids, or use a new --out
    ├── ManifestError               the manifest cannot be read at all (no such file, no
    │                               `prompt` column, not UTF-8, two columns of one name); the
    │                               message names the file and line: fix it, run again (exit 2)
    ├── LayoutMismatch              OUT holds the other kind of run (plain vs sharded) or both:
    │                               nothing was sent or read; use another --out, or the
    │                               command of the kind OUT holds (exit 2)
    ├── LedgerLocked                another live run holds OUT (also a RuntimeError): wait for
    │                               it, or stop it; the lock dies with its process (exit 2)
    │   └── LeaseLost               (a shared ledger) this run's lease on a row ran out and
    │                               another run may hold it now: nothing was sent for it; the
    │                               run that holds the lease finishes the row
    ├── RunStopped                  the run stopped part-way (401, 403, no such route): nothing
    │                               else was sent, results so far are written; fix the key or
    │                               APIMART_BASE_URL and run again to resume (exit 2)
    ├── TaskNotRecorded             a PAID task was created but the ledger would not store its
    │                               id (disk full, read-only folder): the run stops; the id is
    │                               in the message; free the disk and run again, the row is
    │                               held as `unknown` and never resent unasked
    ├── VideoUnreadable             a downloaded file is not a decodable video: the row ends
    │                               `download_failed` and the next run fetches it again
    ├── InboxRefused                the inbox's defaults ask for a resend on every tick (also a
    │                               ValueError): resends are a person's decision; run the one
    │                               manifest by hand with --resubmit-unknown / --retry-failed
    ├── InboxErrors                 some inbox manifests could not run this tick: they stay in
    │                               the inbox and are tried on the next tick; see the flow log
    ├── StorageError                the object store (s3://, gs://, az://) refused or failed a
    │                               read or write (also an OSError); the message names the
    │                               object and the reason, never a credential: fix the
    │                               credentials, bucket or network and run again to resume
    ├── ShardPlanError              OUT holds shards (shards.json) made from another manifest
    │                               (also a ValueError): restore that manifest, or use a new OUT
    └── ShardsIncomplete            some shard did not complete: the merged results say which
                                    rows; run the sharded flow again to resume them

Exit codes at the command line (README): 0 every row completed; 1 the run finished but some
rows did not; 2 the run could not start or was stopped (everything above); 130 Ctrl-C.

Errors of the API client itself (401, 429, a lost POST) are `apimart.errors.APIMartError`; the
run turns the ones that stop it into `RunStopped` or `RunRefused`.

Kept free of everything but the standard library: every module may import it, the command line
before anything heavy.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "InboxErrors",
    "InboxRefused",
    "LayoutMismatch",
    "LedgerLocked",
    "ManifestConflict",
    "ManifestError",
    "RunRefused",
    "RunStopped",
    "ShardPlanError",
    "ShardsIncomplete",
    "TaskNotRecorded",
    "VideoUnreadable",
    "VideobatchError",
]


class VideobatchError(Exception):
    """Root of every error videobatch raises (the API client's have their own tree)."""


class RunRefused(VideobatchError):
    """The run cannot start (no key, unreadable manifest): nothing was sent."""


class ManifestConflict(RunRefused):
    """The output folder belongs to another version of this manifest: nothing was sent."""


class ManifestError(VideobatchError):
    """The manifest cannot be read at all. The message names the file (and line when known)."""


class LayoutMismatch(VideobatchError):
    """The output folder holds another kind of run than the one asked for; nothing was sent."""

    def __init__(self, out: Path, holds: str, want: str, message: str) -> None:
        super().__init__(message)
        self.out = out
        self.holds = holds
        self.want = want


class LedgerLocked(VideobatchError, RuntimeError):
    """Another live process holds the output folder."""


class LeaseLost(LedgerLocked):
    """The row's lease ran out and may belong to another run now: nothing was sent for it."""


class RunStopped(VideobatchError):
    """The whole run must stop now (authentication failed, no such route): nothing else is sent."""


class TaskNotRecorded(VideobatchError):
    """A POST created a task, which is paid for, but the ledger would not store its id.

    Never to be read as "not sent": the row stays `intent` in the ledger (the next run holds
    it as `unknown`), and the task id is in this message and in the log.
    """

    def __init__(self, row_id: str, task_id: str, cause: BaseException) -> None:
        self.row_id, self.task_id = row_id, task_id
        super().__init__(
            f"row {row_id}: PAID task {task_id} was created but the ledger refused to record "
            f"it ({type(cause).__name__}: {cause}); the run stops before anything else is paid"
        )


class VideoUnreadable(VideobatchError):
    """The file is not a decodable video."""


class InboxRefused(VideobatchError, ValueError):
    """The inbox's run options ask for something a scheduled run must never do."""


class InboxErrors(VideobatchError):
    """Some manifests could not be run this tick; they stay in the inbox for the next one."""


class ShardPlanError(VideobatchError, ValueError):
    """The output folder holds shards that do not belong to this manifest."""


class StorageError(VideobatchError, OSError):
    """The object store refused or failed an operation; the message names the object and the
    store's reason, with every credential scrubbed. An OSError too, so code that treats a full
    disk as a failed write treats a failed upload the same way."""


class ShardsIncomplete(VideobatchError):
    """Some shard did not complete; the merged results say which rows are missing."""
