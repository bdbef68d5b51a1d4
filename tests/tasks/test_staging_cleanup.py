"""A run into an object store deletes a video's staged copy once the store holds it and the
ledger records it, and keeps it whenever that is not certain. The download step against the
sandbox over real HTTP and moto's S3 server on loopback."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import s3 as s3kit
from support.manifests import prompt_rows, write_manifest

from apimart.sandbox import RunningSandbox, SandboxConfig, run_in_thread
from tasks.run.lifecycle import finish_run, open_run, staging_root
from tasks.run.options import RunOptions
from tasks.run.runtime import Runtime
from tasks.steps.download import download_row, staging_path, video_relpath
from tasks.steps.poll import poll_row
from tasks.steps.submit import submit_row
from tasks.store.ledger import State
from tasks.store.probe import first_frame_thumbnail
from tasks.store.storage import PREVIEW_WIDTH, staged_preview, staging_folder

s3_server, s3_out = s3kit.s3_server, s3kit.s3_out
pytestmark = pytest.mark.slow  # starts moto_server once per session

KEY = "sk-staging-cleanup-canary-81c3"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A home of this test's own, so its staging folder meets no other test's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("APIMART_API_KEY", KEY)


@asynccontextmanager
async def _run(tmp_path: Path, out: str, sb: RunningSandbox) -> AsyncIterator[Runtime]:
    """One run of a one-row manifest (r0) into `out` (each call is a new run)."""
    manifest = write_manifest(tmp_path / "m.csv", prompt_rows(["a kite over dunes"]))
    options = RunOptions(
        manifest=str(manifest),
        out=out,
        base_url=sb.url,
        poll_initial_delay=0.02,
        poll_interval=0.02,
        submit_rate=1000,
        report=True,
    )
    async with open_run(options) as runtime:
        yield runtime


async def _paid_and_completed(runtime: Runtime) -> None:
    assert await submit_row(runtime, "r0") == State.SUBMITTED
    assert await poll_row(runtime, "r0") == State.COMPLETED


def _staged(out: str) -> list[str]:
    """Every copy of a video in the staging folder's videos/, hidden or not (previews aside)."""
    videos = staging_folder(out, staging_root()) / "videos"
    if not videos.is_dir():
        return []
    return sorted(p.name for p in videos.iterdir() if not p.name.endswith(".preview.jpg"))


def _downloads(sb: RunningSandbox) -> int:
    return sum(sb.state.stats()["downloads_by_task"].values())


def _object(server: s3kit.S3Server, out: str) -> bytes:
    prefix = out.removeprefix(f"s3://{server.bucket}/")
    return server.get(f"{prefix}/{video_relpath('r0')}")


async def test_a_verified_upload_deletes_the_staged_copy_and_the_results_still_describe_it(
    tmp_path: Path, s3_out: str, s3_server: s3kit.S3Server
) -> None:
    """Once the video is recorded and in the bucket at its size, no copy of it is left in the
    staging folder, only a small preview of its first frame; the results (hash, size, frame
    size, length) and the report are still written from the ledger."""
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002)) as sb:
        async with _run(tmp_path, s3_out, sb) as runtime:
            await _paid_and_completed(runtime)
            assert await download_row(runtime, "r0") == State.DOWNLOADED
            record = runtime.ledger.get("r0")
            assert _staged(s3_out) == []
            finish_run(runtime)
    # What the contact sheet needs of the video stays: its first frame, at the report's width.
    video = staging_folder(s3_out, staging_root()) / video_relpath("r0")
    thumbnail = first_frame_thumbnail(staged_preview(video), width=PREVIEW_WIDTH)
    assert (thumbnail.width, thumbnail.height) == (240, 136)
    assert record is not None and record.video_sha256 and record.video_width
    body = _object(s3_server, s3_out)
    assert hashlib.sha256(body).hexdigest() == record.video_sha256
    prefix = s3_out.removeprefix(f"s3://{s3_server.bucket}/")
    table = pq.read_table(io.BytesIO(s3_server.get(f"{prefix}/results.parquet"))).to_pylist()
    assert table[0]["status"] == "completed"
    assert table[0]["video_sha256"] == record.video_sha256
    assert table[0]["video_bytes"] == len(body)
    assert (table[0]["video_width"], table[0]["video_height"]) == (1280, 720)
    assert table[0]["video_duration_s"]
    assert "report.html" in s3_server.objects(prefix)


async def test_a_failed_upload_keeps_the_staged_copy_until_a_later_run_has_uploaded_it(
    tmp_path: Path, s3_out: str, s3_server: s3kit.S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload the store refuses leaves the verified copy on disk (the only copy of a paid
    video here); the next run uploads that copy without fetching the video again, and only
    then deletes it."""
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002)) as sb:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-this-test")
        async with _run(tmp_path, s3_out, sb) as runtime:
            await _paid_and_completed(runtime)
            assert await download_row(runtime, "r0") == State.DOWNLOAD_FAILED
            record = runtime.ledger.get("r0")
        assert record is not None and record.video_sha256
        assert _staged(s3_out) == ["r0.mp4"]
        kept = staging_folder(s3_out, staging_root()) / video_relpath("r0")
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == record.video_sha256

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
        fetched = _downloads(sb)
        async with _run(tmp_path, s3_out, sb) as runtime:
            assert await download_row(runtime, "r0") == State.DOWNLOADED
        assert _downloads(sb) == fetched
    assert _staged(s3_out) == []
    assert hashlib.sha256(_object(s3_server, s3_out)).hexdigest() == record.video_sha256


async def test_a_copy_left_by_a_kill_after_the_upload_goes_once_the_object_is_seen(
    tmp_path: Path, s3_out: str, s3_server: s3kit.S3Server
) -> None:
    """A run killed between its upload and the delete leaves the copy; the next run that
    meets the row finds the object intact, fetches nothing, and deletes the copy."""
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002)) as sb:
        async with _run(tmp_path, s3_out, sb) as runtime:
            await _paid_and_completed(runtime)
            assert await download_row(runtime, "r0") == State.DOWNLOADED
        # What the kill leaves: the recorded, uploaded video still in staging.
        left = staging_folder(s3_out, staging_root()) / video_relpath("r0")
        left.write_bytes(_object(s3_server, s3_out))
        fetched = _downloads(sb)
        async with _run(tmp_path, s3_out, sb) as runtime:
            assert await download_row(runtime, "r0") == State.DOWNLOADED
        assert _downloads(sb) == fetched
    assert _staged(s3_out) == []


async def test_a_copy_is_kept_while_the_store_does_not_hold_the_recorded_video(
    tmp_path: Path, s3_out: str, s3_server: s3kit.S3Server
) -> None:
    """A staged copy whose object is missing is never deleted for being old: the next run
    uploads it (no fetch), and only then is it gone; a copy under its hidden name (a kill
    between recording and renaming) is treated the same."""
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002)) as sb:
        async with _run(tmp_path, s3_out, sb) as runtime:
            await _paid_and_completed(runtime)
            assert await download_row(runtime, "r0") == State.DOWNLOADED
        body = _object(s3_server, s3_out)
        prefix = s3_out.removeprefix(f"s3://{s3_server.bucket}/")
        s3_server.client().delete_object(
            Bucket=s3_server.bucket, Key=f"{prefix}/{video_relpath('r0')}"
        )
        hidden = staging_path(staging_folder(s3_out, staging_root()) / video_relpath("r0"))
        hidden.write_bytes(body)
        fetched = _downloads(sb)
        async with _run(tmp_path, s3_out, sb) as runtime:
            assert await download_row(runtime, "r0") == State.DOWNLOADED
        assert _downloads(sb) == fetched
    assert _object(s3_server, s3_out) == body
    assert _staged(s3_out) == []
