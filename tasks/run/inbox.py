"""The inbox: manifests dropped into a folder are run, then filed by how they ended.

    inbox/               waiting, or partly finished (the next tick resumes it)
    inbox/done/          every row reached a final state
    inbox/rejected/      could not be read; `<name>.error.txt` beside it says why

Each manifest runs into `OUT_ROOT/<file stem>/`, so dropping the same name again resumes the
same ledger instead of paying again. A manifest stays in the inbox while some row can still
move (submitted, timed out, not yet sent, download failed); rows `unknown` keep it there too
until a person decides (see `videobatch run --resubmit-unknown`).

A manifest is filed only if it is still the file that was run (same SHA-256 as before the run):
rows appended while it ran have not run yet, so a changed file stays for the next tick.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow as pa

from tasks.errors import InboxRefused
from tasks.run.options import RunOptions
from tasks.store.hashing import file_sha256
from tasks.store.ledger import LEDGER_FILE, Ledger
from tasks.store.manifest import SUFFIXES
from tasks.store.states import FINAL_STATUSES

DONE_DIR, REJECTED_DIR = "done", "rejected"
# The global concurrency limit (limit 1) that keeps two inbox runs apart; `videobatch deploy`
# creates it.
INBOX_LIMIT = "videobatch-inbox"
# A file still being written (copied in over a network) should not be read half-way.
SETTLE_SECONDS = 2.0


def check_defaults(defaults: RunOptions | None) -> None:
    """Refuse defaults that would resend on every tick: a resend is a person's decision."""
    if defaults is None:
        return
    asked = [name for name in ("resubmit_unknown", "retry_failed") if getattr(defaults, name)]
    if asked:
        raise InboxRefused(
            f"the inbox's defaults set {' and '.join(asked)}: a scheduled run would repeat it "
            "on every tick. Resends are a person's decision: run videobatch run MANIFEST --out "
            "OUT --resubmit-unknown (or --retry-failed) for the one manifest that needs it. "
            "Nothing was run."
        )


def manifest_digest(manifest: Path) -> str:
    """The file's SHA-256, taken before its run and compared before it is filed."""
    return file_sha256(manifest)


def unchanged(manifest: Path, digest: str) -> bool:
    """Whether `manifest` is still the file whose digest was taken (and still there)."""
    try:
        return file_sha256(manifest) == digest
    except FileNotFoundError:
        return False


def waiting_manifests(inbox: Path, *, now: float | None = None) -> list[Path]:
    """Manifests at the top of the inbox, oldest first, skipping files still being written."""
    inbox.mkdir(parents=True, exist_ok=True)
    current = time.time() if now is None else now
    found = [
        p
        for p in inbox.iterdir()
        if p.is_file()
        and p.suffix.lower() in SUFFIXES
        and not p.name.startswith(".")
        and current - p.stat().st_mtime >= SETTLE_SECONDS
    ]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def output_folder(out_root: Path, manifest: Path) -> Path:
    """`OUT_ROOT/<stem>`, unless that folder already belongs to another manifest of that stem.

    `a.csv` and `a.parquet` must never share a ledger (rows are remembered by id), so the second
    one gets `OUT_ROOT/a-parquet`. A folder belongs to the manifest *name* its ledger last ran,
    so the same name dropped again resumes its own folder.
    """
    stem, kind = manifest.stem, manifest.suffix.lower().lstrip(".")
    candidates = [stem, f"{stem}-{kind}", *(f"{stem}-{kind}-{n}" for n in range(2, 100))]
    for name in candidates:
        folder = out_root / name
        owner = _folder_owner(folder)
        if owner is None or owner == manifest.name:
            return folder
    raise RuntimeError(f"no free output folder for {manifest.name} under {out_root}")


def _folder_owner(folder: Path) -> str | None:
    """The file name of the manifest last run into `folder`, or None for an unused folder."""
    if not (folder / LEDGER_FILE).exists():
        return None
    with Ledger(folder, readonly=True) as ledger:
        source = ledger.meta("manifest")
    return Path(source).name if source else None


def is_finished(table: pa.Table) -> bool:
    return all(s in FINAL_STATUSES for s in table.column("status").to_pylist())


def unsettled(table: pa.Table) -> dict[str, int]:
    """Counts of the statuses that keep a manifest in the inbox (`unknown` needs a person)."""
    statuses = [s for s in table.column("status").to_pylist() if s not in FINAL_STATUSES]
    return {s: statuses.count(s) for s in sorted(set(statuses))}


def _move(manifest: Path, folder: Path) -> Path:
    """Move into `folder`, never overwriting an earlier manifest of the same name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / manifest.name
    if target.exists():
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = folder / f"{manifest.stem}-{stamp}{manifest.suffix}"
        n = 1
        while target.exists():
            n += 1
            target = folder / f"{manifest.stem}-{stamp}-{n}{manifest.suffix}"
    return Path(shutil.move(str(manifest), target))


def file_done(manifest: Path) -> Path:
    return _move(manifest, manifest.parent / DONE_DIR)


def file_rejected(manifest: Path, why: str) -> Path:
    moved = _move(manifest, manifest.parent / REJECTED_DIR)
    moved.with_name(moved.name + ".error.txt").write_text(why + "\n", encoding="utf-8")
    return moved
