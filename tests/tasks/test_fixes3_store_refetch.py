"""A paid video recorded on one machine but never uploaded is fetched again by a run on
another machine: a status query and a download with a fresh link, never a second POST.

Real components: the sandbox over real HTTP, the session's PostgreSQL server, moto's S3
server on loopback, a real Prefect API for the replacement's run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import s3 as s3kit
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.sandbox import SandboxConfig, run_in_thread
from flows.generate import generate
from tasks.run.lifecycle import batch_results, open_run, rows_left
from tasks.run.options import RunOptions
from tasks.steps.chunk import claim_states
from tasks.steps.download import video_relpath
from tasks.steps.poll import poll_row
from tasks.steps.submit import submit_row
from tasks.store.ledger import State
from tasks.store.manifest import read_manifest

s3_server, s3_out = s3kit.s3_server, s3kit.s3_out

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

KEY = "sk-fixes3-refetch-canary-71c0"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    monkeypatch.setenv("VIDEOBATCH_LEDGER_URL", pg_url)
    with retry.no_waits():
        yield


async def test_a_video_recorded_but_never_uploaded_is_fetched_again_from_another_machine(
    tmp_path: Path, s3_out: str, s3_server: s3kit.S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member killed between recording its verified video and uploading it: a replacement
    on another machine (an empty staging folder) queries the task for a fresh link and
    downloads and uploads the video, sending no POST; the batch's results then show it
    completed, with the object in the bucket."""
    prompt = "a heron on a jetty"
    manifest_path = write_manifest(tmp_path / "m.csv", prompt_rows([prompt]))
    monkeypatch.setenv("HOME", str(tmp_path / "first-machine"))
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.004)) as sb:
        options = RunOptions(
            manifest=str(manifest_path),
            out=s3_out,
            base_url=sb.url,
            poll_initial_delay=0.02,
            poll_interval=0.02,
            submit_rate=1000,
            report=False,
        )
        async with open_run(options, share_batch="database") as member:
            claim = member.ledger.claim(member.run_id, 10, lease_s=600, states=claim_states(member))
            assert await submit_row(member, "r0") == State.SUBMITTED
            assert await poll_row(member, "r0") == State.COMPLETED
            # The download step's first write, then the worker is killed before the upload.
            member.ledger.update(
                "r0",
                "downloaded",
                state=State.DOWNLOADED,
                video_path=video_relpath("r0"),
                video_bytes=4096,
                video_sha256="0" * 64,
            )
            member.ledger.release(member.run_id)
        assert claim.rows
        manifest = read_manifest(str(manifest_path))
        assert rows_left(options, manifest, "database") == ["r0"]
        before = sb.state.stats()
        assert before["submit_requests"] == 1

        monkeypatch.setenv("HOME", str(tmp_path / "second-machine"))
        await generate(options, share_batch="database")
        after = sb.state.stats()
        assert after["submit_requests"] == 1, "the replacement sent the paid row again"
        assert after["tasks_created_by_prompt"] == {prompt: 1}
        (task_id,) = after["downloads_by_task"]
        assert after["downloads_by_task"][task_id] > before["downloads_by_task"].get(task_id, 0)
        assert after["queries_by_task"][task_id] > before["queries_by_task"][task_id]
    assert rows_left(options, manifest, "database") == []
    table, _ = batch_results(options, manifest, "database")
    row = table.to_pylist()[0]
    assert row["status"] == "completed"
    stored = s3_server.objects(s3_out.split("/", 3)[3])
    assert stored.get(video_relpath("r0")) == row["video_bytes"], stored
