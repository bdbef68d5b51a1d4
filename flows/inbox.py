"""`inbox`: on a schedule, run every manifest dropped into a folder; file each by its outcome.

Wiring only. Two inbox runs never overlap: the flow holds the `videobatch-inbox` global
concurrency limit (limit 1, created by `videobatch deploy`), and a run that cannot get it within
a few seconds leaves the folder to the run that has it. (The deployment's own concurrency limit
also cancels a scheduled tick while the previous one is still working.)

A tick repeats itself every quarter hour, so its `defaults` may not ask for resends
(`resubmit_unknown`, `retry_failed`): those are refused, and stay a person's decision for one
`videobatch run`. With `defaults.dry_run` a tick runs nothing and files nothing: it validates
and estimates each waiting manifest. Each manifest runs only into a plain output folder; one
that holds a sharded run is an error, left in the inbox. A manifest is filed only if its bytes
are still the ones that were run (SHA-256), else it stays for the next tick.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.concurrency.asyncio import concurrency

from flows.generate import generate_videos
from tasks.errors import InboxErrors
from tasks.run.inbox import (
    INBOX_LIMIT,
    check_defaults,
    file_done,
    file_rejected,
    is_finished,
    manifest_digest,
    output_folder,
    unchanged,
    unsettled,
    waiting_manifests,
)
from tasks.run.lifecycle import ManifestConflict, estimate_run
from tasks.run.options import RunOptions
from tasks.run.runtime import run_logger
from tasks.store.layout import require_layout
from tasks.store.ledger import LedgerLocked
from tasks.store.manifest import ManifestError, read_manifest
from tasks.store.results import read_results


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
    check_defaults(defaults)
    outcome: dict[str, str] = {}
    if defaults is not None and defaults.dry_run:
        for manifest in waiting_manifests(Path(inbox_dir)):
            outcome[manifest.name] = _estimate_only(manifest, defaults)
        log.info("inbox dry run, nothing run or filed: %s", outcome or "nothing waiting")
        return {"skipped": False, "dry_run": True, "manifests": outcome}
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


def _estimate_only(manifest: Path, defaults: RunOptions) -> str:
    log = run_logger()
    try:
        read = read_manifest(manifest)
    except ManifestError as exc:
        log.warning("dry run: %s cannot be read (%s); left where it is", manifest.name, exc)
        return "unreadable"
    estimate = estimate_run(read, defaults)
    log.info(
        "dry run: %s has %d valid rows (%d invalid), estimated $%.2f; not run, not filed",
        manifest.name,
        estimate.valid,
        estimate.invalid,
        estimate.cost,
    )
    return "dry_run"


async def _one(manifest: Path, out_root: Path, defaults: RunOptions | None) -> str:
    log = run_logger()
    digest = manifest_digest(manifest)
    try:
        read_manifest(manifest)
    except ManifestError as exc:
        moved = file_rejected(manifest, str(exc))
        log.error("rejected %s (moved to %s): %s", manifest.name, moved.parent, exc)
        return "rejected"
    folder = output_folder(out_root, manifest)
    # A plain run into a sharded folder would pay again for every row its shards paid for.
    require_layout(folder, "plain")
    base = defaults or RunOptions(manifest=str(manifest))
    options = base.model_copy(update={"manifest": str(manifest), "out": str(folder)})
    log.info("running %s into %s", manifest.name, options.out)
    try:
        await generate_videos(options=options)
    except LedgerLocked:
        log.warning("%s is being run elsewhere; next tick", manifest.name)
        return "busy"
    except ManifestConflict as exc:
        if not unchanged(manifest, digest):
            log.warning("%s changed while it was checked; next tick", manifest.name)
            return "changed"
        moved = file_rejected(manifest, str(exc))
        log.error("rejected %s (moved to %s): %s", manifest.name, moved.parent, exc)
        return "rejected"
    table = read_results(Path(options.out))
    if not unchanged(manifest, digest):
        # Rows added while it ran have not run: the next tick runs them, then files it.
        log.warning("%s changed while it ran: it stays for the next tick", manifest.name)
        return "changed"
    if is_finished(table):
        moved = file_done(manifest)
        log.info("%s finished: moved to %s", manifest.name, moved.parent)
        return "done"
    log.info("%s not finished (%s): stays for the next tick", manifest.name, unsettled(table))
    return "in_progress"
