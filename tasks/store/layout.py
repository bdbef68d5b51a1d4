"""Which kind of run an output folder holds: one folder, one layout.

A run keeps its ledger at `OUT/ledger.sqlite`: a plain run, and since the shared-batch
`generate-sharded` (K runs sharing that one ledger) also a sharded one; that layout is "plain".
An earlier videobatch's sharded run kept a plan at `OUT/shards.json` and one folder per shard,
each with its own ledger, under `OUT/shards/` ("sharded"). The two must never meet in one
folder: a run into an old sharded folder opens an empty ledger and pays again for every row the
shards already paid for, and the read-only commands would then show only half of the spend. So
every entry point asks `require_layout` before it sends (or reads) anything; only the read-only
commands still read the old layout.

A folder's ledger is one of two, never both: its own `OUT/ledger.sqlite` (plain runs and
the members of a shared folder batch), or a batch of the database named by
VIDEOBATCH_LEDGER_URL. Each knows nothing of the other's rows, so a run on the other one would
pay again for every row paid there. The first database run into a folder leaves a mark
(`OUT/.videobatch-ledger`: the backend and the batch, never the URL, which may hold a
password); `require_layout(..., ledger="sqlite")` refuses a marked folder, and a database run
refuses a folder holding `ledger.sqlite` (`tasks.run.lifecycle`).

Kept free of Prefect, pandas and pyarrow: the CLI's read-only commands import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from tasks.errors import LayoutMismatch
from tasks.store.atomic import write_text_atomically

Layout = Literal["empty", "plain", "sharded"]

# The names are restated here (not imported from tasks.store.ledger / tasks.run.shards) so that this
# module stays importable without pyarrow or sqlite setup; tests pin them to the originals.
LEDGER_FILE = "ledger.sqlite"
PLAN_FILE = "shards.json"
SHARDS_DIR = "shards"
# The mark a database run leaves in a local output folder (see the module).
LEDGER_MARK = ".videobatch-ledger"

LedgerKind = Literal["sqlite", "database"]


def ledger_mark(out: Path) -> dict[str, str] | None:
    """What the mark of a database ledger in `out` says ({"ledger", "batch"}), or None."""
    path = Path(out) / LEDGER_MARK
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    # An unreadable mark still marks the folder: only its details are lost.
    if not isinstance(found, dict):
        return {"ledger": "database", "batch": "?"}
    return {str(k): str(v) for k, v in found.items()}


def mark_database_ledger(out: Path, backend: str, batch: str) -> None:
    """Leave the mark of a database ledger in `out` (once; the first database run does)."""
    path = Path(out) / LEDGER_MARK
    if path.exists():
        return
    write_text_atomically(path, json.dumps({"ledger": backend, "batch": batch}) + "\n")


def _refuse_marked(out: Path) -> None:
    mark = ledger_mark(out)
    if mark is None:
        return
    raise LayoutMismatch(
        out,
        "database",
        "sqlite",
        f"{out}'s ledger is batch {mark.get('batch')!r} of a {mark.get('ledger')} ledger "
        f"(see {LEDGER_MARK}), not a {LEDGER_FILE} of its own: a run on this folder's own "
        "ledger would pay again for every row paid there. Nothing was sent. Run it with "
        "VIDEOBATCH_LEDGER_URL set to that database, or use a new output folder.",
    )


def _sharded_marks(out: Path) -> list[str]:
    return [name for name in (PLAN_FILE, SHARDS_DIR) if (out / name).exists()]


def folder_layout(out: Path) -> Layout:
    """What `out` holds: "empty" (nothing of ours, or no folder), "plain" or "sharded".

    Raises LayoutMismatch when it holds both a plain ledger and a shard plan: which of the two
    carries the money cannot be guessed, so a person must look.
    """
    out = Path(out)
    plain = (out / LEDGER_FILE).exists()
    sharded = _sharded_marks(out)
    if plain and sharded:
        marks = " and ".join(f"{m}{'/' if m == SHARDS_DIR else ''}" for m in sharded)
        raise LayoutMismatch(
            out,
            "both",
            "either",
            f"{out} holds both a plain run ({LEDGER_FILE}) and a sharded run ({marks}): "
            "both may carry paid rows, so no run or report is made from it; move one of them "
            "to its own folder. Nothing was sent.",
        )
    if plain:
        return "plain"
    if sharded:
        return "sharded"
    return "empty"


def require_layout(
    out: Path, want: Literal["plain", "sharded"], *, ledger: LedgerKind | None = None
) -> Layout:
    """Return the layout of `out`, or raise LayoutMismatch when it holds the other one.

    An empty folder fits both. A folder holding both layouts is always refused. With
    `ledger="sqlite"` (a run on the folder's own ledger) a folder marked as a database
    batch's is refused too (see the module).
    """
    out = Path(out)
    if ledger == "sqlite":
        _refuse_marked(out)
    holds = folder_layout(out)
    if holds == "empty" or holds == want:
        return holds
    if holds == "sharded":
        marks = ", ".join(f"{m}{'/' if m == SHARDS_DIR else ''}" for m in _sharded_marks(out))
        message = (
            f"{out} holds a sharded run made by an earlier videobatch, with a ledger per shard "
            f"({marks}): neither videobatch run nor today's generate-sharded (whose runs share "
            "one ledger) can resume it, since either would pay again for every row its shards "
            "paid for. Nothing was sent. Read it with videobatch status/results/report OUT; "
            "finish it with the videobatch version that made it, or run the manifest into a "
            "new output folder (which sends every row again)."
        )
    else:
        message = (
            f"{out} holds a plain run ({LEDGER_FILE}): resume it with videobatch run MANIFEST "
            "--out OUT, or give the sharded run a new output folder; shards here would pay "
            "again for every row the plain run already paid for. Nothing was sent."
        )
    raise LayoutMismatch(out, holds, want, message)
