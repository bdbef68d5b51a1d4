"""The inbox: manifests dropped into a folder are run, then filed by how they ended.

    inbox/               waiting, or partly finished (the next tick resumes it)
    inbox/done/          every row reached a final state
    inbox/rejected/      could not be read; `<name>.error.txt` beside it says why

Each manifest runs into `OUT_ROOT/<file stem>/`, so dropping the same name again resumes the
same ledger instead of paying again.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow as pa

from tasks.manifest import SUFFIXES

DONE_DIR, REJECTED_DIR = "done", "rejected"
# A row in one of these will not change by running again without new flags.
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "invalid", "rejected"})
# A file still being written (copied in over a network) should not be read half-way.
SETTLE_SECONDS = 2.0


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
    return out_root / manifest.stem


def is_finished(table: pa.Table) -> bool:
    return all(s in FINAL_STATUSES for s in table.column("status").to_pylist())


def _move(manifest: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / manifest.name
    if target.exists():  # never overwrite an earlier manifest of the same name
        target = folder / f"{manifest.stem}-{time.strftime('%Y%m%dT%H%M%S')}{manifest.suffix}"
    return Path(shutil.move(str(manifest), target))


def file_done(manifest: Path) -> Path:
    return _move(manifest, manifest.parent / DONE_DIR)


def file_rejected(manifest: Path, why: str) -> Path:
    moved = _move(manifest, manifest.parent / REJECTED_DIR)
    moved.with_name(moved.name + ".error.txt").write_text(why + "\n", encoding="utf-8")
    return moved
