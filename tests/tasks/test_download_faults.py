"""The download step against a misbehaving CDN, a full disk and a clock that disagrees.

Called through `.fn()` against the sandbox over real HTTP. Every ending is a ledger state:
the step never crashes the row, and a paid task's id is always kept and logged.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.manifests import prompt_rows, write_manifest

from apimart import AsyncAPIMartClient
from apimart.netguard import is_loopback_host
from apimart.sandbox import FaultRule, Faults, RunningSandbox, SandboxConfig, run_in_thread
from tasks.run.lifecycle import finish_run, open_run
from tasks.run.options import RunOptions
from tasks.run.runtime import Runtime
from tasks.steps.download import download_row
from tasks.steps.poll import poll_row
from tasks.steps.submit import submit_row
from tasks.store.ledger import State

KEY = "sk-download-faults-canary-5d21"
ALWAYS = FaultRule(rate=1.0)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMART_API_KEY", KEY)


@asynccontextmanager
async def run_for(tmp_path: Path, sb: RunningSandbox, **options: Any) -> AsyncIterator[Runtime]:
    opts = RunOptions(
        manifest=str(
            write_manifest(
                tmp_path / "m.csv", prompt_rows(["a lighthouse in fog"], resolution="720p")
            )
        ),
        out=str(tmp_path / "out"),
        base_url=sb.url,
        poll_initial_delay=0.02,
        poll_interval=0.02,
        submit_rate=1000,
        **options,
    )
    async with open_run(opts) as runtime:
        yield runtime


@asynccontextmanager
async def completed_row(
    tmp_path: Path, faults: Faults | None = None, **config: Any
) -> AsyncIterator[tuple[Runtime, RunningSandbox]]:
    """A run whose row r0 is paid for and completed, its fresh link in memory."""
    with run_in_thread(
        SandboxConfig(api_key=KEY, time_scale=0.002, faults=faults or Faults(), **config)
    ) as sb:
        async with run_for(tmp_path, sb) as runtime:
            assert await submit_row(runtime, "r0") == State.SUBMITTED
            assert await poll_row(runtime, "r0") == State.COMPLETED
            yield runtime, sb


def visible_mp4s(videos: Path) -> list[str]:
    return sorted(p.name for p in videos.iterdir() if p.name.endswith(".mp4"))


def downloads(sb: RunningSandbox) -> int:
    return sum(sb.state.stats()["downloads_by_task"].values())


def queries(sb: RunningSandbox) -> int:
    return sum(sb.state.stats()["queries_by_task"].values())


def assert_logged_loudly(caplog: pytest.LogCaptureFixture, task_id: str) -> None:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("PAID VIDEO NOT DOWNLOADED" in m and task_id in m for m in errors), errors


async def test_an_undecodable_download_fails_the_row_and_leaves_no_mp4(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes that are not a video end the row download_failed, fetched once, no .mp4 left."""
    async with completed_row(tmp_path, Faults(download_garbage=ALWAYS)) as (rt, sb):
        with caplog.at_level(logging.INFO):
            assert await download_row(rt, "r0") == State.DOWNLOAD_FAILED
        record = rt.ledger.get("r0")
        assert record is not None and record.task_id
        assert record.error_code == "download_failed"
        assert "does not decode" in (record.error_message or "")
        assert_logged_loudly(caplog, record.task_id)
        videos = rt.out / "videos"
        assert visible_mp4s(videos) == []
        assert sorted(p.name for p in videos.iterdir()) == [".r0.mp4.undecodable"]
        assert downloads(sb) == 1  # not fetched again and again within the step

        sb.config.faults.download_garbage = FaultRule()
        assert await download_row(rt, "r0") == State.DOWNLOADED
        assert sorted(p.name for p in videos.iterdir()) == ["r0.mp4"]


async def test_a_video_unlike_the_request_is_kept_and_flagged_video_mismatch(
    tmp_path: Path,
) -> None:
    """A paid video of another size or length is kept, hashed and flagged video_mismatch."""
    async with completed_row(tmp_path, Faults(video_mismatch=ALWAYS)) as (rt, _sb):
        assert await download_row(rt, "r0") == State.DOWNLOADED
        record = rt.ledger.get("r0")
        table = finish_run(rt).to_pylist()
    assert record is not None and record.error_code == "video_mismatch"
    assert "frame 640x360, asked 1280x720" in (record.error_message or "")
    assert "duration 8.00s, asked 4s" in (record.error_message or "")
    path = rt.out / "videos" / "r0.mp4"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record.video_sha256
    assert (record.video_width, record.video_height) == (640, 360)
    (row,) = table
    assert row["status"] == "completed" and row["error_code"] == "video_mismatch"
    assert row["video_path"] == "videos/r0.mp4"


async def test_a_link_that_only_looks_expired_here_is_downloaded_without_renewal(
    tmp_path: Path,
) -> None:
    """A link expired only by our skewed clock is fetched as it is, not renewed."""
    faults = Faults(cdn_clock_offset_s=-7200)  # the CDN's clock runs two hours behind
    async with completed_row(tmp_path, faults, url_ttl_s=3600) as (rt, sb):
        link = rt.links["r0"]
        assert link.expires_at is not None and link.expires_at < time.time()
        asked = queries(sb)
        assert await download_row(rt, "r0") == State.DOWNLOADED
        assert queries(sb) == asked
        assert downloads(sb) == 1


class OnlyThisMachine(httpx.AsyncBaseTransport):
    """A real transport that records every host it is handed and refuses, without
    connecting, any host off this machine: a broken guard still sends nothing away."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        if not is_loopback_host(request.url.host):
            raise httpx.ConnectError(f"test transport: {request.url.host} is off this machine")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_redirect_to_the_metadata_service_fails_the_row_not_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CDN redirect to the metadata service fails the row, not the run; nothing goes there."""
    async with completed_row(tmp_path) as (rt, sb):
        transport = OnlyThisMachine()
        async with AsyncAPIMartClient(base_url=sb.url, api_key=KEY, transport=transport) as cl:
            rt.client = cl
            sb.config.faults.download_redirect_to = "https://169.254.169.254/latest"
            with caplog.at_level(logging.INFO):
                assert await download_row(rt, "r0") == State.DOWNLOAD_FAILED
        record = rt.ledger.get("r0")
        assert record is not None and record.task_id
        message = record.error_message or ""
        assert "refusing" in message and "link-local" in message
        assert "sig=" not in message and "expires=" not in message
        assert_logged_loudly(caplog, record.task_id)
        assert "169.254.169.254" not in transport.hosts
        assert downloads(sb) == 1
        assert visible_mp4s(rt.out / "videos") == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 128 KiB tmpfs mounted where the run keeps its videos (needs root, as on every
    machine of this project)."""
    videos = tmp_path / "out" / "videos"
    videos.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k,mode=0755", "tmpfs", str(videos)],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, f"cannot mount a tmpfs (root needed): {mounted.stderr}"
    try:
        yield videos
    finally:
        subprocess.run(["umount", "-l", str(videos)], check=False)


def fill_leaving(folder: Path, free: int) -> Path:
    """Fill the file system of `folder` with one file, then give `free` bytes back."""
    filler = folder / "filler.bin"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        handle.truncate(max(0, handle.tell() - free))
    stats = os.statvfs(folder)
    assert stats.f_bavail * stats.f_frsize <= free + 4096
    return filler


async def test_a_disk_that_fills_mid_download_fails_the_row_and_a_rerun_recovers(
    tmp_path: Path, tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk that fills mid-download fails the row, leaves no partial file; a rerun recovers."""
    filler = fill_leaving(tiny_disk, free=16 * 1024)  # the 720p clip is about 25 KiB
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002)) as sb:
        async with run_for(tmp_path, sb) as rt:
            assert await submit_row(rt, "r0") == State.SUBMITTED
            assert await poll_row(rt, "r0") == State.COMPLETED
            with caplog.at_level(logging.INFO):
                assert await download_row(rt, "r0") == State.DOWNLOAD_FAILED
            record = rt.ledger.get("r0")
            assert record is not None and record.task_id
            assert "No space left on device" in (record.error_message or "")
            assert_logged_loudly(caplog, record.task_id)
            assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler.bin"]
            assert sb.state.stats()["bytes_served"] > 16 * 1024  # it failed mid-way

        filler.unlink()  # space is back
        async with run_for(tmp_path, sb) as rt:
            assert await download_row(rt, "r0") == State.DOWNLOADED
            again = rt.ledger.get("r0")
        assert again is not None and again.task_id == record.task_id
        data = (tiny_disk / "r0.mp4").read_bytes()
        assert hashlib.sha256(data).hexdigest() == again.video_sha256
        assert sorted(p.name for p in tiny_disk.iterdir()) == ["r0.mp4"]
        assert sb.state.stats()["tasks_created"] == 1
