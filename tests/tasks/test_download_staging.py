"""A video becomes visible as `videos/ID.mp4` only after the ledger recorded it verified."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_download_faults import KEY, completed_row, visible_mp4s

from tasks.steps.download import download_row, file_sha256, staging_path
from tasks.store.ledger import State


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMART_API_KEY", KEY)


async def test_a_verified_video_left_under_its_hidden_name_is_renamed_not_fetched_again(
    tmp_path: Path,
) -> None:
    """A run that died between recording a video and renaming it costs the next run no fetch."""
    async with completed_row(tmp_path) as (runtime, sb):
        assert await download_row(runtime, "r0") == State.DOWNLOADED
        videos = runtime.out / "videos"
        final = videos / "r0.mp4"
        digest = file_sha256(final)
        # The moment a kill -9 can leave: recorded as downloaded, still under the hidden name.
        final.replace(staging_path(final))
        assert visible_mp4s(videos) == []
        fetched = sb.state.counters.snapshot()

        assert await download_row(runtime, "r0") == State.DOWNLOADED

        assert visible_mp4s(videos) == ["r0.mp4"]
        assert file_sha256(final) == digest
        assert not staging_path(final).exists()
        assert sb.state.counters.snapshot() == fetched  # no query, no download


async def test_an_unrecorded_staged_video_is_fetched_again_and_never_shown_unverified(
    tmp_path: Path,
) -> None:
    """Bytes staged but never recorded (killed while decoding) are not trusted: fetched anew."""
    async with completed_row(tmp_path) as (runtime, _sb):
        final = runtime.out / "videos" / "r0.mp4"
        final.parent.mkdir(parents=True, exist_ok=True)
        staging_path(final).write_bytes(b"half a video")
        assert await download_row(runtime, "r0") == State.DOWNLOADED
        record = runtime.ledger.get("r0")
        assert record is not None and record.video_sha256 == file_sha256(final)
        assert not staging_path(final).exists()
