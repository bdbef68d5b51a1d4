"""A run whose outputs go to object storage (moto's S3 server on loopback), in process."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from flowkit import (
    API_KEY,
    assert_no_canary,
    fast_options,
    in_process_flow,
    in_process_sandbox,
    write_manifest,
)
from support import s3 as s3kit

from tasks.errors import StorageError
from tasks.run.lifecycle import staging_root
from tasks.store.storage import staging_folder

s3_server, s3_out = s3kit.s3_server, s3kit.s3_out
pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

ROWS = [{"id": f"v{i}", "prompt": f"bucket clip {i}", "duration": 4} for i in range(3)]


def _prefix(out: str, server: s3kit.S3Server) -> str:
    return out.removeprefix(f"s3://{server.bucket}/")


def _counts(sandbox: Any) -> tuple[int, int, int]:
    snap = sandbox.state.counters.snapshot()
    return (
        snap["submit_requests"],
        sum(snap["queries_by_task"].values()),
        sum(snap["downloads_by_task"].values()),
    )


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of this test's own, so staging folders never meet another test's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("APIMART_API_KEY", API_KEY)
    return tmp_path / "home"


async def test_a_run_to_s3_puts_verified_videos_and_results_in_the_bucket(
    tmp_path: Path,
    home: Path,
    s3_out: str,
    s3_server: s3kit.S3Server,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the manifest read from the bucket too: videos (with the hash the results
    record) and results land in the bucket, the video column holds URLs, the ledger stays in
    the staging folder, no secret is written anywhere, and a rerun calls nothing."""
    local = write_manifest(tmp_path / "m.csv", ROWS)
    prefix = _prefix(s3_out, s3_server)
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key=f"{prefix}-in/m.csv", Body=local.read_bytes()
    )
    sandbox = in_process_sandbox()
    options = fast_options(local, Path("unused"), sandbox.url).model_copy(
        update={"manifest": f"{s3_out}-in/m.csv", "out": s3_out, "report": True}
    )
    caplog.set_level(logging.INFO)
    outcome = await in_process_flow(sandbox)(options=options)
    assert outcome["statuses"] == {"completed": 3}

    objects = s3_server.objects(prefix)
    assert {"results.parquet", "results.csv", "report.html"} <= set(objects)
    assert "ledger.sqlite" not in objects
    table = pq.read_table(io.BytesIO(s3_server.get(f"{prefix}/results.parquet"))).to_pylist()
    for row in table:
        key = f"videos/{row['id']}.mp4"
        assert row["video_path"] == f"{s3_out}/{key}"
        body = s3_server.get(f"{prefix}/{key}")
        assert hashlib.sha256(body).hexdigest() == row["video_sha256"]
        assert len(body) == row["video_bytes"] == objects[key]
    staging = staging_folder(s3_out, staging_root())
    assert (staging / "ledger.sqlite").is_file()
    assert any("holds no ledger" in r.getMessage() for r in caplog.records)
    stored = [s3_server.get(f"{prefix}/{k}") for k in objects]
    staged = [p.read_bytes() for p in staging.rglob("*") if p.is_file()]
    messages = [r.getMessage() for r in caplog.records]
    assert_no_canary([*stored, *staged], "the bucket or the staging folder")
    assert_no_canary(messages, "the logs")
    secret = s3_server.secret_key
    assert not [m for m in messages if secret in m]
    assert not [b for b in [*stored, *staged] if secret.encode() in b]

    before = _counts(sandbox)
    again = await in_process_flow(sandbox)(options=options)
    assert again["statuses"] == {"completed": 3}
    assert _counts(sandbox) == before

    # The object, not the staged file, is what counts: a lost object is fetched again. Its
    # staged copy was deleted once the upload was verified, so that is one query for a fresh
    # link and one download from the CDN: no POST, nothing paid.
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"{prefix}/videos/v1.mp4")
    healed = await in_process_flow(sandbox)(options=options)
    assert healed["statuses"] == {"completed": 3}
    assert _counts(sandbox) == (before[0], before[1] + 1, before[2] + 1)
    body = s3_server.get(f"{prefix}/videos/v1.mp4")
    assert hashlib.sha256(body).hexdigest() == table[1]["video_sha256"]


async def test_a_failed_upload_leaves_the_row_download_failed_and_the_next_run_uploads_it(
    tmp_path: Path,
    home: Path,
    s3_out: str,
    s3_server: s3kit.S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upload refused by the store (a wrong secret) leaves download_failed and no object;
    the next run uploads the kept, verified file without fetching the video again."""
    manifest = write_manifest(tmp_path / "m.csv", ROWS[:1])
    sandbox = in_process_sandbox()
    options = fast_options(manifest, Path("unused"), sandbox.url).model_copy(update={"out": s3_out})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-this-test")
    # The results cannot be written to a store that refuses us either: the run fails loudly.
    with pytest.raises(StorageError) as refused:
        await in_process_flow(sandbox)(options=options)
    assert "wrong-secret-for-this-test" not in str(refused.value)
    staging = staging_folder(s3_out, staging_root())
    from tasks.store.ledger import Ledger

    with Ledger(staging, readonly=True) as ledger:
        record = ledger.get("v0")
    assert record is not None and record.state == "download_failed"
    assert "upload" in (record.error_message or "")
    assert "wrong-secret-for-this-test" not in (record.error_message or "")
    assert s3_server.objects(_prefix(s3_out, s3_server)) == {}

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    downloads = _counts(sandbox)[2]
    outcome = await in_process_flow(sandbox)(options=options)
    assert outcome["statuses"] == {"completed": 1}
    assert _counts(sandbox)[2] == downloads
    body = s3_server.get(f"{_prefix(s3_out, s3_server)}/videos/v0.mp4")
    assert hashlib.sha256(body).hexdigest() == record.video_sha256
