"""The durable rename of a verified video runs off the event loop, still after the ledger
recorded the video and before the row ends (real sandbox over HTTP, real SQLite, PyAV)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_download_faults import KEY, completed_row, visible_mp4s

import tasks.steps.download as download
from tasks.steps.download import download_row, file_sha256, staging_path
from tasks.store.atomic import replace_durably
from tasks.store.ledger import Ledger, State


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMART_API_KEY", KEY)


async def test_the_rename_runs_in_a_thread_after_the_ledger_records_the_video(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename and directory fsync run outside the loop's thread, once the ledger (read
    on a connection of its own) says downloaded, and the video is in place when the row ends."""
    loop_thread = threading.get_ident()
    renames: list[tuple[int, str | None, bool]] = []

    def watched_replace(source: Path, target: Path) -> Path:
        with Ledger(target.parent.parent, readonly=True) as ledger:
            record = ledger.get(target.stem)
        renames.append((threading.get_ident(), record.state if record else None, source.is_file()))
        return replace_durably(source, target)

    monkeypatch.setattr(download, "replace_durably", watched_replace)
    async with completed_row(tmp_path) as (runtime, _sb):
        assert await download_row(runtime, "r0") == State.DOWNLOADED
        videos = runtime.out / "videos"
        final = videos / "r0.mp4"
        assert visible_mp4s(videos) == ["r0.mp4"]
        assert not staging_path(final).exists()
        record = runtime.ledger.get("r0")
        assert record is not None and record.video_sha256 == file_sha256(final)
    assert len(renames) == 1, renames
    thread, state_then, staged_then = renames[0]
    assert thread != loop_thread
    assert state_then == State.DOWNLOADED
    assert staged_then
