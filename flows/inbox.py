"""`inbox`: on a schedule, run every manifest dropped into a folder; file each by its outcome.

Wiring only. Two inbox runs never overlap: the flow holds the `videobatch-inbox` global
concurrency limit (limit 1, created by `videobatch deploy`), and a run that cannot get it within
a few seconds leaves the folder to the run that has it. (The deployment's own concurrency limit
also cancels a scheduled tick while the previous one is still working.)
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.concurrency.asyncio import concurrency

from flows.generate import generate_videos
from tasks.inbox import (
    INBOX_LIMIT,
    file_done,
    file_rejected,
    is_finished,
    output_folder,
    unsettled,
    waiting_manifests,
)
from tasks.ledger import LedgerLocked
from tasks.manifest import ManifestError, read_manifest
from tasks.options import RunOptions
from tasks.results import read_results
from tasks.run import ManifestConflict
from tasks.runtime import run_logger


class InboxErrors(Exception):
    """Some manifests could not be run this tick; they stay in the inbox for the next one."""


@flow(name="inbox", log_prints=False, validate_parameters=True)
async def inbox(
    inbox_dir: str = "data/inbox",
    out_root: str = "data/out",
    defaults: RunOptions | None = None,
) -> dict[str, Any]:
    """Run each waiting manifest into OUT_ROOT/<name>; move it to done/ or rejected/.

    Args:
        inbox_dir: Folder watched for manifests (.csv, .parquet, .jsonl); relative paths are
            taken from the project folder.
        out_root: Each manifest runs into OUT_ROOT/<file name without suffix>.
        defaults: Run options for every manifest (its `manifest` and `out` are replaced).
    """
    from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError

    log = run_logger()
    outcome: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(
                concurrency(INBOX_LIMIT, occupy=1, timeout_seconds=5, strict=True)
            )
        except AcquireConcurrencySlotTimeoutError:
            log.warning("another inbox run holds %s: leaving the inbox to it", INBOX_LIMIT)
            return {"skipped": True, "manifests": outcome}
        for manifest in waiting_manifests(Path(inbox_dir)):
            try:
                outcome[manifest.name] = await _one(manifest, Path(out_root), defaults)
            except Exception as exc:
                log.error("%s failed (%r); it stays in the inbox", manifest.name, exc)
                outcome[manifest.name] = "error"
    log.info("inbox: %s", outcome or "nothing waiting")
    errors = sorted(name for name, what in outcome.items() if what == "error")
    if errors:
        raise InboxErrors(f"could not run {errors}; they stay in {inbox_dir} for the next tick")
    return {"skipped": False, "manifests": outcome}


async def _one(manifest: Path, out_root: Path, defaults: RunOptions | None) -> str:
    log = run_logger()
    try:
        read_manifest(manifest)
    except ManifestError as exc:
        moved = file_rejected(manifest, str(exc))
        log.error("rejected %s (moved to %s): %s", manifest.name, moved.parent, exc)
        return "rejected"
    base = defaults or RunOptions(manifest=str(manifest))
    options = base.model_copy(
        update={"manifest": str(manifest), "out": str(output_folder(out_root, manifest))}
    )
    log.info("running %s into %s", manifest.name, options.out)
    try:
        await generate_videos(options=options)
    except LedgerLocked:
        log.warning("%s is being run elsewhere; next tick", manifest.name)
        return "busy"
    except ManifestConflict as exc:
        moved = file_rejected(manifest, str(exc))
        log.error("rejected %s (moved to %s): %s", manifest.name, moved.parent, exc)
        return "rejected"
    table = read_results(Path(options.out))
    if is_finished(table):
        moved = file_done(manifest)
        log.info("%s finished: moved to %s", manifest.name, moved.parent)
        return "done"
    log.info("%s not finished (%s): stays for the next tick", manifest.name, unsettled(table))
    return "in_progress"
