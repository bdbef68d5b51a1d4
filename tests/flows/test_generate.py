"""The `generate-videos` flow end to end: real Prefect API, sandbox over real HTTP, real MP4s."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import av
import pyarrow.parquet as pq
import pytest
from flowkit import (
    assert_no_canary,
    assert_no_canary_in_files,
    debug_logs_to_prefect,
    fast_options,
    write_manifest,
)

from apimart.sandbox import FaultRule, Faults
from flows.generate import generate_videos
from tasks.run.gate import RunStopped
from tasks.store.ledger import Ledger

MakeSandbox = Any

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

DEMO = Path(__file__).resolve().parents[2] / "data" / "manifests" / "demo.csv"


def rows(n: int, prefix: str = "clip", **extra: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i}", "prompt": f"{prefix} prompt number {i}", "duration": 4, **extra}
        for i in range(n)
    ]


def results(out: Path) -> dict[str, dict[str, Any]]:
    table = pq.read_table(out / "results.parquet").to_pylist()
    return {r["id"]: r for r in table}


async def test_demo_manifest_happy_path(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sb = make_sandbox()
    out = tmp_path / "out"
    outcome = await generate_videos(options=fast_options(DEMO, out, sb.url, concurrency=4))

    table = pq.read_table(out / "results.parquet")
    got = table.to_pylist()
    assert [r["status"] for r in got] == ["completed"] * len(got) == ["completed"] * 8
    assert outcome["completed"] == 8
    counters = sb.state.counters.snapshot()
    assert counters["tasks_created"] == 8
    assert set(counters["tasks_created_by_key"].values()) == {1}
    for row in got:
        assert row["task_id"] and row["attempt"] == 1 and row["polls"] >= 1
        assert row["cost"] > 0 and row["estimated_cost"] > 0
        assert row["submitted_at"] is not None and row["completed_at"] is not None
        assert row["wait_s"] >= 0 and row["total_s"] >= row["wait_s"]
        assert row["generation_s"] > 0
        assert row["video_path"] == f"videos/{row['id']}.mp4"
        path = out / row["video_path"]
        assert path.stat().st_size == row["video_bytes"]
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (
                row["video_width"],
                row["video_height"],
            )
            assert sum(1 for _ in container.decode(stream)) > 0
        expected = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}[
            row["resolution"]
        ]
        if row["aspect_ratio"] == "9:16":
            expected = expected[::-1]
        assert (row["video_width"], row["video_height"]) == expected
        assert abs(row["video_duration_s"] - row["duration"]) < 0.7
        assert row["error_code"] is None
    assert "campaign" in table.column_names
    assert (out / "results.csv").read_text(encoding="utf-8").count("\n") == 9
    assert sum(r["cost"] for r in got) == pytest.approx(counters["cost_billed"])


async def test_rerun_of_finished_folder_makes_no_api_call(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    sb = make_sandbox()
    manifest = write_manifest(tmp_path / "m.csv", rows(3))
    out = tmp_path / "out"
    await generate_videos(options=fast_options(manifest, out, sb.url))
    before = sb.state.counters.snapshot()
    first = (out / "results.parquet").read_bytes()
    first_rows = results(out)

    await generate_videos(options=fast_options(manifest, out, sb.url))
    after = sb.state.counters.snapshot()
    assert after == before  # not one submit, query or download
    again = results(out)
    for row_id, row in first_rows.items():
        assert {k: v for k, v in again[row_id].items() if k != "run_id"} == {
            k: v for k, v in row.items() if k != "run_id"
        }
    assert first  # the parquet existed before the rerun


async def test_invalid_rows_are_never_sent(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sb = make_sandbox()
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"id": "good", "prompt": "a good row", "duration": 4},
            {"id": "five", "prompt": "bad duration row", "duration": 5},
            {"id": "eightk", "prompt": "bad resolution row", "resolution": "8k"},
            {"id": "empty", "prompt": ""},
        ],
    )
    out = tmp_path / "out"
    await generate_videos(options=fast_options(manifest, out, sb.url))
    got = results(out)
    assert got["good"]["status"] == "completed"
    for bad, column in (("five", "duration"), ("eightk", "resolution"), ("empty", "prompt")):
        assert got[bad]["status"] == "invalid"
        assert column in got[bad]["error_message"]
        assert got[bad]["task_id"] is None
    prompts = sb.state.counters.snapshot()["tasks_created_by_prompt"]
    assert list(prompts) == ["a good row"]
    assert sb.state.counters.snapshot()["submit_requests"] == 1


async def test_authentication_failure_stops_everything(
    make_sandbox: MakeSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = make_sandbox()
    monkeypatch.setenv("APIMART_API_KEY", "sk-wrong-key")
    manifest = write_manifest(tmp_path / "m.csv", rows(5))
    out = tmp_path / "out"
    with pytest.raises(RunStopped, match="401"):
        await generate_videos(options=fast_options(manifest, out, sb.url, concurrency=5))
    assert sb.state.counters.snapshot()["tasks_created"] == 0
    # The first 401 stops the others before they send: at most the in-flight ones were tried.
    assert sb.state.counters.snapshot()["submit_requests"] <= 5
    assert {r["status"] for r in results(out).values()} == {"not_submitted"}


async def test_payment_required_mid_run(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sb = make_sandbox(Faults(payment_after=2))
    manifest = write_manifest(tmp_path / "m.csv", rows(5))
    out = tmp_path / "out"
    await generate_videos(options=fast_options(manifest, out, sb.url, concurrency=1))
    statuses = [r["status"] for r in results(out).values()]
    assert statuses.count("completed") == 2
    assert statuses.count("skipped_payment") == 3
    assert sb.state.counters.snapshot()["tasks_created"] == 2


async def test_budget_cap_is_never_passed(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sb = make_sandbox()
    # 4 s 720p clips are estimated at 0.10 each: a cap of 0.25 admits two.
    manifest = write_manifest(tmp_path / "m.csv", rows(5))
    out = tmp_path / "out"
    await generate_videos(options=fast_options(manifest, out, sb.url, max_cost=0.25))
    got = list(results(out).values())
    assert [r["status"] for r in got].count("completed") == 2
    assert [r["status"] for r in got].count("skipped_budget") == 3
    assert sum(r["estimated_cost"] for r in got if r["task_id"]) <= 0.25
    assert sb.state.counters.snapshot()["tasks_created"] == 2


async def test_doubtful_submit_is_held_then_resubmitted_on_request(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    sb = make_sandbox(Faults(submit_drop_after_create=FaultRule(rate=1.0, prompt_contains="DROP")))
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"id": "fine", "prompt": "a fine row", "duration": 4},
            {"id": "doubt", "prompt": "DROP this answer", "duration": 4},
        ],
    )
    out = tmp_path / "out"
    await generate_videos(options=fast_options(manifest, out, sb.url))
    got = results(out)
    assert got["fine"]["status"] == "completed"
    assert got["doubt"]["status"] == "unknown"
    assert got["doubt"]["estimated_cost"] > 0
    assert sb.state.counters.snapshot()["tasks_created_by_prompt"]["DROP this answer"] == 1

    # A plain rerun holds the doubtful row: no second task.
    await generate_videos(options=fast_options(manifest, out, sb.url))
    assert results(out)["doubt"]["status"] == "unknown"
    assert sb.state.counters.snapshot()["tasks_created_by_prompt"]["DROP this answer"] == 1

    # Asked explicitly, it is resent with the same idempotency key.
    sb.config.faults.submit_drop_after_create = FaultRule()
    await generate_videos(options=fast_options(manifest, out, sb.url, resubmit_unknown=True))
    assert results(out)["doubt"]["status"] == "completed"
    by_key = sb.state.counters.snapshot()["tasks_created_by_key"]
    with Ledger(out, readonly=True) as ledger:
        record = ledger.get("doubt")
    assert record is not None and record.idempotency_key is not None
    assert by_key[record.idempotency_key] == 2


async def test_expired_link_is_refreshed_and_truncated_download_resumed(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    sb = make_sandbox(
        Faults(
            expired_urls=FaultRule(rate=1.0, prompt_contains="EXPIRED", times=1),
            download_truncate=FaultRule(rate=1.0, prompt_contains="TRUNC", times=1),
        )
    )
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"id": "exp", "prompt": "EXPIRED link row", "duration": 4},
            {"id": "trunc", "prompt": "TRUNC download row", "duration": 4},
        ],
    )
    out = tmp_path / "out"
    await generate_videos(options=fast_options(manifest, out, sb.url))
    got = results(out)
    assert got["exp"]["status"] == got["trunc"]["status"] == "completed"
    fired = sb.state.counters.snapshot()["faults_fired"]
    assert fired.get("expired_urls", 0) >= 1 and fired.get("download_truncate", 0) >= 1
    assert sb.state.counters.snapshot()["tasks_created"] == 2


async def test_failed_task_and_retry_failed(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sb = make_sandbox(Faults(task_fail=FaultRule(rate=1.0, prompt_contains="FAIL", times=1)))
    manifest = write_manifest(
        tmp_path / "m.csv", [{"id": "f", "prompt": "FAIL once please", "duration": 4}]
    )
    out = tmp_path / "out"
    await generate_videos(options=fast_options(manifest, out, sb.url))
    row = results(out)["f"]
    assert row["status"] == "failed" and row["cost"] == 0 and row["error_code"]

    await generate_videos(options=fast_options(manifest, out, sb.url))
    assert sb.state.counters.snapshot()["tasks_created"] == 1  # failed rows wait for the flag

    await generate_videos(options=fast_options(manifest, out, sb.url, retry_failed=True))
    row = results(out)["f"]
    assert row["status"] == "completed" and row["attempt"] == 2
    assert sb.state.counters.snapshot()["tasks_created"] == 2


async def test_poll_timeout_keeps_the_task_and_resumes(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    sb = make_sandbox(time_scale=0.02)  # 3-5 s per task
    manifest = write_manifest(tmp_path / "m.csv", rows(2))
    out = tmp_path / "out"
    await generate_videos(options=fast_options(manifest, out, sb.url, poll_timeout=0.5))
    got = results(out)
    assert {r["status"] for r in got.values()} == {"timeout"}
    assert all(r["task_id"] for r in got.values())

    await generate_videos(options=fast_options(manifest, out, sb.url, poll_timeout=60))
    assert {r["status"] for r in results(out).values()} == {"completed"}
    assert sb.state.counters.snapshot()["tasks_created"] == 2


async def test_canary_key_reaches_no_file_log_or_artifact(
    make_sandbox: MakeSandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With DEBUG logging, no form of the key nor a URL signature reaches a file under OUT, a
    log record, a Prefect log line or an artifact, across renewals and failures."""
    sb = make_sandbox(
        Faults(
            expired_urls=FaultRule(rate=1.0, times=1),
            task_fail=FaultRule(rate=1.0, prompt_contains="FAIL"),
        )
    )
    manifest = write_manifest(
        tmp_path / "m.csv", [*rows(2), {"id": "bad", "prompt": "FAIL row", "duration": 4}]
    )
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    with debug_logs_to_prefect():
        state = await generate_videos(
            options=fast_options(manifest, out, sb.url, report=True), return_state=True
        )
    run_id = state.state_details.flow_run_id

    assert_no_canary_in_files(out)
    for path in out.rglob("*"):
        if path.is_file():
            assert b"sig=" not in path.read_bytes(), path
    texts = [record.getMessage() for record in caplog.records]
    assert_no_canary(texts, "a log record")
    assert not [text for text in texts if "sig=" in text]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="videobatch-"))
        )
        # This run's lines only: the session's server holds every earlier test's logs too.
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
        )
    assert artifacts, "the run published no artifacts"
    kinds = {a.type for a in artifacts}
    assert {"progress", "table", "markdown"} <= kinds
    blobs = [f"{artifact.data} {artifact.description}" for artifact in artifacts]
    assert_no_canary(blobs, "an artifact")
    assert not [blob for blob in blobs if "sig=" in blob]
    assert_no_canary([log.message for log in logs], "a Prefect log line")
    assert not [log.message for log in logs if "sig=" in log.message]


async def test_a_changed_manifest_is_refused_before_anything_is_sent(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """Rows renamed by an insertion are refused whole (they would pay twice); a downloaded row
    dropped from the manifest is no conflict, and the rest resumes sending nothing."""
    from tasks.run.lifecycle import ManifestConflict

    sb = make_sandbox()
    # No id column: rows are named by position, so inserting a row shifts every name.
    first = [{"prompt": "alpha lake", "duration": 4}, {"prompt": "beta forest", "duration": 4}]
    manifest = write_manifest(tmp_path / "m.csv", first)
    out = tmp_path / "out"
    await generate_videos(options=fast_options(manifest, out, sb.url))
    before = sb.state.counters.snapshot()

    write_manifest(tmp_path / "m.csv", [{"prompt": "gamma desert", "duration": 4}, *first])
    with pytest.raises(ManifestConflict, match="row-00001: the row changed") as refused:
        await generate_videos(options=fast_options(manifest, out, sb.url))
    assert "row-00003: asks for exactly what row-00002 was sent as" in str(refused.value)
    assert sb.state.counters.snapshot() == before  # nothing sent, nothing paid twice

    # A row whose video is on disk may leave the manifest: nothing of it is left to fetch.
    write_manifest(tmp_path / "m.csv", first[:1])
    outcome = await generate_videos(options=fast_options(manifest, out, sb.url))
    assert outcome["held"] == [] and outcome["completed"] == 1
    assert sb.state.counters.snapshot() == before
