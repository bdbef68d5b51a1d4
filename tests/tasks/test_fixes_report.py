"""The report of a run into an object store: the flow against a real Prefect API, the sandbox
over real HTTP and moto's S3 server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import s3 as s3kit
from support.manifests import prompt_rows, write_manifest
from support.runs import fast_options

from apimart.sandbox import SandboxConfig, run_in_thread
from flows.generate import generate_videos
from tasks.present.artifacts import artifact_key
from tasks.run.lifecycle import staging_root
from tasks.store.storage import staging_folder

s3_server, s3_out = s3kit.s3_server, s3kit.s3_out
pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

KEY = "sk-fixes-report-canary-4e0a"


async def test_a_run_into_a_bucket_links_the_buckets_report_and_writes_no_local_one(
    tmp_path: Path,
    s3_out: str,
    s3_server: s3kit.S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For an s3:// out the report-link artifact names the bucket's report.html, and no
    stale report.html is left in the staging folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    manifest = write_manifest(tmp_path / "m.csv", prompt_rows(["a red fox"], resolution="720p"))
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.002)) as sb:
        options = fast_options(manifest, Path("unused"), sb.url).model_copy(
            update={"out": s3_out, "report": True}
        )
        outcome = await generate_videos(options=options)
    assert outcome["statuses"] == {"completed": 1}
    prefix = s3_out.removeprefix(f"s3://{s3_server.bucket}/")
    assert "report.html" in s3_server.objects(prefix)
    assert not (staging_folder(s3_out, staging_root()) / "report.html").exists()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        links = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{artifact_key(s3_out)}-report"])
            )
        )
    assert links, "the run published no report link"
    assert all(f"{s3_out}/report.html" in str(link.data) for link in links)
