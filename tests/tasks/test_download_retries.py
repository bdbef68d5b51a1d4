"""Through the real flow, Prefect retries a download only for what a retry can cure.

The `generate-videos` flow runs against a real Prefect API and the sandbox. A body that is
not the video cannot get better by fetching it again at once: the CDN sees one download per
row, and the row ends `download_failed` with its task id for the next run.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.sandbox import FaultRule, Faults, SandboxConfig, run_in_thread
from flows.generate import generate_videos
from tasks.run.options import RunOptions

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

KEY = "sk-download-retries-canary-3a8f"


def _manifest(path: Path, rows: int) -> Path:
    return write_manifest(path, prompt_rows([f"download row {i}" for i in range(rows)], prefix="d"))


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("download_garbage", "does not decode"), ("download_html", "is not a video")],
    ids=["undecodable", "integrity"],
)
async def test_a_download_that_no_retry_can_cure_is_fetched_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, reason: str
) -> None:
    """Undecodable bytes or an HTML page are fetched once, then the row is download_failed."""
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    faults = Faults(**{fault: FaultRule(rate=1.0)})
    out = tmp_path / "out"
    with (
        run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002, faults=faults)) as sb,
        retry.no_waits(),
    ):
        options = RunOptions(
            manifest=str(_manifest(tmp_path / "m.csv", 2)),
            out=str(out),
            base_url=sb.url,
            submit_rate=500,
            poll_initial_delay=0.1,
            poll_interval=0.1,
            report=False,
        )
        outcome = await generate_videos(options=options)
        stats = sb.state.stats()

    assert outcome["statuses"] == {"download_failed": 2}
    assert list(stats["downloads_by_task"].values()) == [1, 1]
    assert stats["tasks_created"] == 2
    for row in pq.read_table(out / "results.parquet").to_pylist():
        assert row["task_id"] and row["error_code"] == "download_failed"
        assert reason in row["error_message"]
    assert not [p.name for p in (out / "videos").iterdir() if p.name.endswith(".mp4")]


async def test_a_cdn_that_fails_past_the_clients_retries_is_retried_by_prefect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CDN failing past the client's five tries is retried by Prefect and fetched."""
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    tries = retry.RetryPolicy().attempts
    faults = Faults(download_5xx=FaultRule(rate=1.0, times=tries + 1))
    out = tmp_path / "out"
    with (
        run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002, faults=faults)) as sb,
        retry.no_waits(),
    ):
        options = RunOptions(
            manifest=str(_manifest(tmp_path / "m.csv", 1)),
            out=str(out),
            base_url=sb.url,
            submit_rate=500,
            poll_initial_delay=0.1,
            poll_interval=0.1,
            report=False,
        )
        outcome = await generate_videos(options=options)
        stats = sb.state.stats()

    assert outcome["statuses"] == {"completed": 1}
    assert stats["faults_fired"] == {"download_5xx": tries + 1}
    assert list(stats["downloads_by_task"].values()) == [tries + 2]
    assert (out / "videos" / "d0.mp4").is_file()
