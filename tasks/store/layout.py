"""Which kind of run an output folder holds: one folder, one layout.

A run keeps its ledger at `OUT/ledger.sqlite`: a plain run, and since the shared-batch
`generate-sharded` (K runs sharing that one ledger) also a sharded one; that layout is "plain".
An earlier videobatch's sharded run kept a plan at `OUT/shards.json` and one folder per shard,
each with its own ledger, under `OUT/shards/` ("sharded"). The two must never meet in one
folder: a run into an old sharded folder opens an empty ledger and pays again for every row the
shards already paid for, and the read-only commands would then show only half of the spend. So
every entry point asks `require_layout` before it sends (or reads) anything; only the read-only
commands still read the old layout.

Kept free of Prefect, pandas and pyarrow: the CLI's read-only commands import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tasks.errors import LayoutMismatch

Layout = Literal["empty", "plain", "sharded"]

# The names are restated here (not imported from tasks.store.ledger / tasks.run.shards) so that this
# module stays importable without pyarrow or sqlite setup; tests pin them to the originals.
LEDGER_FILE = "ledger.sqlite"
PLAN_FILE = "shards.json"
SHARDS_DIR = "shards"


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


def require_layout(out: Path, want: Literal["plain", "sharded"]) -> Layout:
    """Return the layout of `out`, or raise LayoutMismatch when it holds the other one.

    An empty folder fits both. A folder holding both layouts is always refused.
    """
    out = Path(out)
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
