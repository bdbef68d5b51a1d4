"""Review of a shared batch into an object store (PostgreSQL ledger, `--out s3://`): the holes
found, each as a test that fails until it is fixed.

Real components: the sandbox over real HTTP, a member's `open_run` and steps, the session's
PostgreSQL server, moto's S3 server on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import s3 as s3kit
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.sandbox import SandboxConfig, run_in_thread
from tasks.errors import RunRefused
from tasks.run.lifecycle import batch_results, open_run, rows_left, rows_needing_work
from tasks.run.options import RunOptions
from tasks.steps.chunk import claim_states
from tasks.steps.download import video_relpath
from tasks.steps.poll import poll_row
from tasks.steps.submit import submit_row
from tasks.store.ledger import State
from tasks.store.manifest import read_manifest

s3_server, s3_out = s3kit.s3_server, s3kit.s3_out

KEY = "sk-review2-store-canary-c41b"


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[None]:
    """This test's own home (so its own staging folder), the key, the shared ledger's URL."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    monkeypatch.setenv("VIDEOBATCH_LEDGER_URL", pg_url)
    with retry.no_waits():
        yield


async def test_a_row_recorded_downloaded_but_never_uploaded_is_left_to_do_for_the_parent(
    tmp_path: Path, s3_out: str
) -> None:
    """A member killed after recording a verified video and before uploading it leaves the row
    `downloaded` with no object in the bucket: generate-sharded counts it as left to do (so a
    replacement member uploads or fetches it), not as done."""
    manifest_path = write_manifest(tmp_path / "m.csv", prompt_rows(["a lighthouse at dusk"]))
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
            assert [r.row_id for r in claim.rows] == ["r0"]
            assert await submit_row(member, "r0") == State.SUBMITTED
            assert await poll_row(member, "r0") == State.COMPLETED
            # The download step's first write (tasks.steps.download._verify): the verified
            # video recorded, in this worker's staging folder, before its upload. The worker
            # is killed here; its lease runs out.
            member.ledger.update(
                "r0",
                "downloaded",
                state=State.DOWNLOADED,
                video_path=video_relpath("r0"),
                video_bytes=4096,
                video_sha256="0" * 64,
            )
            member.ledger.release(member.run_id)
            # A member run itself sees that the video is not in the bucket.
            assert rows_needing_work(member) == ["r0"]
    manifest = read_manifest(str(manifest_path))
    assert rows_left(options, manifest, "database") == ["r0"], (
        "the parent counts a paid video that is in no bucket as done, so it starts no "
        "replacement and ends Completed"
    )
    # And the batch's results never call it completed with a link to a missing object.
    table, _ = batch_results(options, manifest, "database")
    row = table.to_pylist()[0]
    assert row["status"] == "download_failed" and not row["video_path"], row


async def test_a_database_run_into_a_folder_whose_sqlite_ledger_holds_paid_rows_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    """A folder whose rows were paid through its own SQLite ledger (a plain run, or the members
    of a shared folder batch) is refused by a run whose environment names a database ledger,
    before anything is sent: two ledgers for one folder would pay for every row twice."""
    prompt = "a paper boat on a pond"
    manifest_path = write_manifest(tmp_path / "m.csv", prompt_rows([prompt]))
    out = tmp_path / "out"
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.004)) as sb:
        options = RunOptions(
            manifest=str(manifest_path),
            out=str(out),
            base_url=sb.url,
            poll_initial_delay=0.02,
            poll_interval=0.02,
            submit_rate=1000,
            report=False,
        )
        monkeypatch.delenv("VIDEOBATCH_LEDGER_URL")
        async with open_run(options) as plain:
            assert await submit_row(plain, "r0") == State.SUBMITTED
        monkeypatch.setenv("VIDEOBATCH_LEDGER_URL", pg_url)
        with pytest.raises(RunRefused):
            async with open_run(options) as other:
                claim = other.ledger.claim(other.run_id, 10, lease_s=600)
                for row in claim.rows:
                    await submit_row(other, row.row_id)
        created = sb.state.stats()["tasks_created_by_prompt"]
    assert created.get(prompt) == 1, f"the row was paid for {created.get(prompt)} times"
