"""`inbox`: on a schedule, run every manifest dropped into a folder; file each by its outcome.

Wiring only. Two inbox runs never overlap: the flow holds the `videobatch-inbox` global
concurrency limit (limit 1, created by `videobatch deploy`) and a second run that cannot get it
within a few seconds leaves the folder alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.concurrency.asyncio import concurrency

from flows.generate import generate_videos
from tasks.inbox import file_done, file_rejected, is_finished, output_folder, waiting_manifests
from tasks.ledger import LedgerLocked
from tasks.manifest import ManifestError, read_manifest
from tasks.options import RunOptions
from tasks.results import read_results
from tasks.runtime import run_logger

INBOX_LIMIT = "videobatch-inbox"


@flow(name="inbox", log_prints=False)
async def inbox(
    inbox_dir: str = "data/inbox",
    out_root: str = "data/out",
    defaults: RunOptions | None = None,
) -> dict[str, Any]:
    """Run each waiting manifest into OUT_ROOT/<name>; move it to done/ or rejected/."""
    log = run_logger()
    outcome: dict[str, str] = {}
    try:
        async with concurrency(INBOX_LIMIT, occupy=1, timeout_seconds=5, strict=True):
            for manifest in waiting_manifests(Path(inbox_dir)):
                outcome[manifest.name] = await _one(manifest, Path(out_root), defaults)
    except TimeoutError:
        log.warning("another inbox run holds %s: leaving the inbox to it", INBOX_LIMIT)
        return {"skipped": True, "manifests": outcome}
    return {"skipped": False, "manifests": outcome}


async def _one(manifest: Path, out_root: Path, defaults: RunOptions | None) -> str:
    log = run_logger()
    try:
        read_manifest(manifest)
    except ManifestError as exc:
        file_rejected(manifest, str(exc))
        log.error("rejected %s: %s", manifest.name, exc)
        return "rejected"
    base = defaults or RunOptions(manifest=str(manifest))
    options = base.model_copy(
        update={"manifest": str(manifest), "out": str(output_folder(out_root, manifest))}
    )
    try:
        await generate_videos(options=options)
    except LedgerLocked:
        log.warning("%s is being run elsewhere; next tick", manifest.name)
        return "busy"
    if is_finished(read_results(Path(options.out))):
        file_done(manifest)
        return "done"
    return "in_progress"
