"""Fetching and verifying one paid video: the step that must never lose what was bought.

A video is done only when it is on disk, its hash recorded, and PyAV decodes it. It is fetched
under a hidden name (`videos/.ID.mp4.verifying`), decoded, recorded in the ledger, and only then
renamed to `videos/ID.mp4`: a `.mp4` in `videos/` is always one the ledger vouches for. A kill
between the ledger write and the rename leaves the verified file under its hidden name, and the
next run finishes the rename instead of fetching it again. A link that
expired or is refused is renewed once by querying the task again; a video we still cannot fetch
is reported loudly as `download_failed` with its task id, so it can be fetched later.

The step is tried again (`tasks.steps.chunk`) only for what a later try can cure: a CDN or API
that kept failing through the client's own retries (`RETRYABLE`). A body that is not the
video, a link to a forbidden host, a file that does not decode or a disk that is full end the
row at once as `download_failed` (the next run tries again), instead of downloading the same
bad bytes four times.

Into an object store (`--out s3://bucket/prefix`): the same steps run in the location's local
staging folder (`runtime.out`, see `tasks.run.lifecycle`), and after the ledger has recorded
the verified video it is uploaded with its hash (`Output.put_file(..., sha256=...)`: the
object appears whole or not at all, and only with the bytes that were verified). An upload
that fails leaves the row `download_failed`, the verified file kept in staging, and the next
run uploads that file without fetching the video again. A video counts as there when the
object's size is the recorded size (the hash was proven as it was sent); a local file is
never the proof for a store location.

The staged copy is deleted once the store holds the video (`_drop_staged_copy`): after an
upload that worked, when the ledger records the row `downloaded` with the hash the upload
proved and the object is in the store at the recorded size; otherwise it is kept (a paid
video is never lost to save disk). So a run of 100,000 videos keeps only the videos in
flight on this machine's disk, not all of them. A kill between the upload and the delete
leaves the copy; the next run that meets the row deletes it once it sees the object intact.
Nothing else needs the staged video: the ledger holds what was measured of it (size, hash,
frame size, length), and the results are built from the ledger. The report's contact sheet,
which takes its thumbnails from the staging folder (it never downloads a video), keeps the
first frame of each deleted copy as a small JPEG (`storage.staged_preview`, ~3 KiB).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from pathlib import Path

from apimart.download import DownloadUnavailable
from apimart.errors import DownloadError, LinkExpiredError
from apimart.models import Video
from tasks.errors import StorageError
from tasks.run.runtime import Runtime, run_logger
from tasks.steps.poll import TRANSIENT
from tasks.store.atomic import replace_durably, write_atomically

# Re-exported: callers have long imported it from here.
from tasks.store.hashing import file_sha256 as file_sha256
from tasks.store.ledger import Ledger, RowRecord
from tasks.store.probe import VideoUnreadable, first_frame_thumbnail, probe_video
from tasks.store.states import DOWNLOADABLE, State
from tasks.store.storage import (
    PREVIEW_WIDTH,
    RemoteOutput,
    is_url,
    open_output,
    staged_preview,
)

VIDEOS_DIR = "videos"


def video_relpath(row_id: str) -> str:
    return f"{VIDEOS_DIR}/{row_id}.mp4"


def staging_path(dest: Path) -> Path:
    """Where a video waits, hidden and not an .mp4, until the ledger has recorded it."""
    return dest.with_name(f".{dest.name}.verifying")


# One store client per run, not per row (building one may ask the bucket for its region).
# Keyed by the run's ledger, which lives exactly as long as the run: the run's credentials
# never outlive it, and a later run in this process builds its own.
_OUTPUTS: weakref.WeakKeyDictionary[Ledger, RemoteOutput | None] = weakref.WeakKeyDictionary()


def remote_output(runtime: Runtime) -> RemoteOutput | None:
    """The object store the run's videos go to, or None for a local folder."""
    if not is_url(runtime.options.out):
        return None
    if runtime.ledger not in _OUTPUTS:
        output = open_output(runtime.options.out)
        _OUTPUTS[runtime.ledger] = output if isinstance(output, RemoteOutput) else None
    return _OUTPUTS[runtime.ledger]


def stored_sizes(output: RemoteOutput) -> dict[str, int]:
    """Every finished video object's key and size, in one listing (not one request per row)."""
    import pyarrow.fs as pafs

    base = f"{output.root}/{VIDEOS_DIR}"
    try:
        infos = output.filesystem.get_file_info(
            pafs.FileSelector(base, recursive=True, allow_not_found=True)
        )
    except OSError as exc:
        raise StorageError(f"listing {output.url(VIDEOS_DIR)}: {exc}") from None
    start = len(output.root) + 1
    return {
        i.path[start:]: int(i.size)
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(".mp4")
    }


def stored_intact(output: RemoteOutput, record: RowRecord) -> bool:
    """The row's object is in the store at the size the ledger recorded for its video."""
    key = record.video_path or video_relpath(record.row_id)
    size = output.size(key)
    return size is not None and (record.video_bytes is None or size == record.video_bytes)


async def _upload(
    runtime: Runtime, output: RemoteOutput, row_id: str, path: Path, sha256: str
) -> str:
    """Put the verified file in the store; the row stays `downloaded` only if that worked."""
    key = video_relpath(row_id)
    try:
        # Off the event loop: a large upload must not hold polling and lease renewals.
        await asyncio.to_thread(output.put_file, path, key, sha256=sha256)
    except (StorageError, OSError) as exc:
        return mark_download_failed(
            runtime,
            row_id,
            f"verified, but the upload to {output.url(key)} failed ({exc}); the video is kept "
            f"in {path.parent} and the next run uploads it",
        )
    await _drop_staged_copy(runtime, output, row_id, path, sha256)
    return State.DOWNLOADED


async def _drop_staged_copy(
    runtime: Runtime, output: RemoteOutput, row_id: str, path: Path, sha256: str
) -> bool:
    """Delete the staged copy `path` of the row's video if, and only if, the ledger records
    the row `downloaded` with that video (hash `sha256`, the size of `path`) and the store
    holds the object at that size; whether it was deleted. Any doubt keeps the file."""
    record = runtime.ledger.get(row_id)
    key = video_relpath(row_id)
    if (
        record is None
        or record.state != State.DOWNLOADED
        or record.video_sha256 != sha256
        or record.video_bytes is None
        or (record.video_path or key) != key
    ):
        return False
    try:
        if path.stat().st_size != record.video_bytes:
            return False
        if not await asyncio.to_thread(stored_intact, output, record):
            return False
        await asyncio.to_thread(_keep_preview, path)
        path.unlink()
    except (StorageError, OSError) as exc:
        run_logger().warning(
            "row %s: the staged copy %s is kept (%s); it may be deleted once %s is there",
            row_id,
            path.name,
            exc,
            output.url(key),
        )
        return False
    return True


async def _staged_upload(runtime: Runtime, output: RemoteOutput, record: RowRecord) -> str | None:
    """A verified video whose upload failed or never happened: upload the kept file, or None
    when no local file with the recorded hash is left (the video is fetched again)."""
    if not record.video_sha256:
        return None
    path = runtime.out / video_relpath(record.row_id)
    for candidate in (path, staging_path(path)):
        if candidate.is_file() and await _sha256(candidate) == record.video_sha256:
            if candidate != path:
                await _replace_durably(candidate, path)
            if record.state != State.DOWNLOADED:
                runtime.ledger.update(
                    record.row_id,
                    "downloaded",
                    state=State.DOWNLOADED,
                    error_code=record.error_code if record.error_code == "video_mismatch" else None,
                    error_message=(
                        record.error_message if record.error_code == "video_mismatch" else None
                    ),
                )
            return await _upload(runtime, output, record.row_id, path, record.video_sha256)
    return None


def _keep_preview(video: Path) -> None:
    """The video's first frame beside it (`staged_preview`), for the report's contact sheet.
    Only a picture: a video that yields none is still deleted (the store holds it)."""
    try:
        preview = first_frame_thumbnail(video, width=PREVIEW_WIDTH)
    except Exception as exc:
        run_logger().info("%s: no preview kept (%s)", video.name, exc)
        return
    write_atomically(staged_preview(video), lambda handle: handle.write(preview.data))


async def _replace_durably(source: Path, target: Path) -> None:
    """`replace_durably` off the event loop (its directory fsync took 4 % of a 100,000-row
    run's loop), awaited: nothing after it (an upload, the row's end) starts before the
    video is durably under its name. A cancelled caller does not undo it: the thread still
    finishes the rename, and a rename that never happened is finished by the next run."""
    await asyncio.to_thread(replace_durably, source, target)


async def _sha256(path: Path) -> str:
    """The file's hash, read off the event loop (a large video takes seconds)."""
    return await asyncio.to_thread(file_sha256, path)


async def already_verified(runtime: Runtime, row_id: str) -> bool:
    """The row's video is on disk with the hash the ledger recorded: nothing to fetch.

    A verified video still under its hidden name (the run died between recording it and the
    rename) is renamed now. For a store location: the object is there at the recorded size.
    """
    record = runtime.ledger.get(row_id)
    if record is None or record.state != State.DOWNLOADED or not record.video_sha256:
        return False
    remote = remote_output(runtime)
    if remote is not None:
        if not await asyncio.to_thread(stored_intact, remote, record):
            return False
        # A copy a run left behind when it was killed right after its upload.
        leftover = runtime.out / video_relpath(row_id)
        if leftover.is_file():
            await _drop_staged_copy(runtime, remote, row_id, leftover, record.video_sha256)
        return True
    path = runtime.out / (record.video_path or video_relpath(row_id))
    if path.is_file():
        return await _sha256(path) == record.video_sha256
    staged = staging_path(path)
    if staged.is_file() and await _sha256(staged) == record.video_sha256:
        await _replace_durably(staged, path)
        return True
    return False


async def _fresh_link(runtime: Runtime, row_id: str, task_id: str) -> Video | None:
    task = await runtime.client.get_task(task_id)
    video = task.videos[0] if task.videos else None
    if video is not None:
        runtime.ledger.update(row_id, url_expires_at=video.expires_at)
    return video


# What the download step is tried again for.
RETRYABLE = (DownloadUnavailable, *TRANSIENT)


async def download_row(runtime: Runtime, row_id: str) -> str:
    """Download the row's video if it is paid for and not yet safely on disk."""
    record = runtime.ledger.get(row_id)
    if record is None or record.task_id is None:
        return record.state if record else State.PENDING
    if record.state == State.DOWNLOADED and await already_verified(runtime, row_id):
        return State.DOWNLOADED
    if record.state not in DOWNLOADABLE:
        return record.state
    remote = remote_output(runtime)
    if remote is not None:
        uploaded = await _staged_upload(runtime, remote, record)
        if uploaded is not None:
            return uploaded
    dest = runtime.out / video_relpath(row_id)
    try:
        return await _fetch_and_verify(runtime, row_id, record.task_id, dest)
    except RETRYABLE:
        raise
    except DownloadError as exc:
        return mark_download_failed(runtime, row_id, str(exc))
    except OSError as exc:
        # A full or read-only disk: the bytes are still at the CDN, the next run fetches them.
        return mark_download_failed(runtime, row_id, f"could not write {dest.name}: {exc}")


async def _fetch_and_verify(runtime: Runtime, row_id: str, task_id: str, dest: Path) -> str:
    log, options = run_logger(), runtime.options
    dest.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    video = runtime.links.pop(row_id, None)
    for renewed in (False, True):
        if video is None or renewed:
            video = await _fresh_link(runtime, row_id, task_id)
            if video is None:
                return mark_download_failed(runtime, row_id, "the completed task lists no video")
        try:
            # A link whose expires_at looks past is still tried: our clock may be the wrong
            # one, and the CDN's refusal (LinkExpiredError) is what renews it.
            result = await runtime.client.download(
                video.url,
                staging_path(dest),
                max_bytes=int(options.max_video_mb * 2**20),
                deadline_s=options.download_timeout,
                expires_at=video.expires_at,
            )
            break
        except LinkExpiredError as exc:
            if renewed:
                return mark_download_failed(runtime, row_id, f"link refused after renewal: {exc}")
            log.info("row %s: link expired or refused, asking the API for a fresh one", row_id)
    else:  # pragma: no cover - the loop always breaks or returns
        raise AssertionError("unreachable")
    seconds = time.monotonic() - started
    return await _verify(runtime, row_id, dest, result.sha256, result.bytes, seconds)


def undecodable_path(dest: Path) -> Path:
    """Where the bytes of a video that does not decode are kept: hidden, and not an .mp4."""
    return dest.with_name(f".{dest.name}.undecodable")


async def _verify(
    runtime: Runtime, row_id: str, dest: Path, sha256: str, size: int, seconds: float
) -> str:
    row = runtime.row(row_id)
    assert row.request is not None
    kept, staged = undecodable_path(dest), staging_path(dest)
    try:
        info = await asyncio.to_thread(probe_video, staged)
    except VideoUnreadable as exc:
        # Keep the bytes we paid for out of sight, so no .mp4 in videos/ is unverified and a
        # person can still look at them.
        staged.replace(kept)
        return mark_download_failed(
            runtime,
            row_id,
            f"the downloaded file does not decode as a video ({exc}); "
            f"its bytes are kept as {VIDEOS_DIR}/{kept.name}",
        )
    kept.unlink(missing_ok=True)
    width, height = row.request.frame_size
    mismatch = info.mismatch(width, height, row.request.duration)
    runtime.ledger.update(
        row_id,
        "downloaded",
        state=State.DOWNLOADED,
        video_path=video_relpath(row_id),
        video_bytes=size,
        video_sha256=sha256,
        video_width=info.width,
        video_height=info.height,
        video_duration_s=info.duration_s,
        download_s=round(seconds, 3),
        error_code="video_mismatch" if mismatch else None,
        error_message=mismatch,
    )
    # Recorded first, renamed second: the visible name only ever holds a recorded video.
    await _replace_durably(staged, dest)
    if mismatch:
        run_logger().warning("row %s: video differs from the request: %s", row_id, mismatch)
    remote = remote_output(runtime)
    if remote is not None:
        return await _upload(runtime, remote, row_id, dest, sha256)
    return State.DOWNLOADED


def mark_download_failed(runtime: Runtime, row_id: str, why: str) -> str:
    """A paid video we could not fetch: say so loudly, with the task id to fetch it by hand."""
    record = runtime.ledger.get(row_id)
    task_id = record.task_id if record else None
    runtime.ledger.update(
        row_id,
        "download-failed",
        state=State.DOWNLOAD_FAILED,
        error_code="download_failed",
        error_message=why,
    )
    run_logger().error(
        "row %s: PAID VIDEO NOT DOWNLOADED (task %s): %s; rerun to try again", row_id, task_id, why
    )
    return State.DOWNLOAD_FAILED
